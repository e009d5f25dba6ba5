"""Flicker with and without temporal smoothing, on a still-camera clip.

Flicker is `peopleseg.infer.smoothing.flicker`: the mean, over consecutive frames, of 1 - IoU of the person masks
(0 is perfectly steady). Both runs use the same model and frames.

    python benchmarks/flicker.py --video PATH [--model default] [--frames 60] [--alpha 0.5]
        [--truth DIR --truth-start N]

Three runs: no smoothing, the plain average (`TemporalSmoother.update` without the frames), and what `peopleseg
infer` and `Segmenter.stream` do (the average only where the picture stands still). With `--truth DIR`, masks named
by frame number (`DIR/000702.png` for frame 702 of the source when `--truth-start 700` says the clip begins there;
0 background, 1 person, 255 ignored) score each run's person IoU, so what the smoothing costs on moving people
shows beside what it saves.
"""

from __future__ import annotations

import argparse
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", required=True, help="a still-camera video")
    parser.add_argument("--model", default="default")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--truth", help="folder of reference masks named by frame number (000702.png)")
    parser.add_argument("--truth-start", type=int, default=0, help="source frame number of the clip's first frame")
    args = parser.parse_args()

    from peopleseg import Segmenter
    from peopleseg.infer.smoothing import flicker
    from peopleseg.infer.sources import open_source

    torch.set_num_threads(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter(args.model)
    with open_source(args.video, max_frames=args.frames) as source:
        frames = [frame.image for frame in source]
    runs = {
        "off": dict(smoothing=False),
        f"plain average, alpha {args.alpha}": dict(smoothing=True, use_frames=False),
        f"average where still, alpha {args.alpha} (the default)": dict(smoothing=True, use_frames=True),
    }
    rows = []
    for name, options in runs.items():
        masks = _masks(segmenter, frames, args.alpha, **options)
        rows.append((name, flicker(masks), _person_iou(masks, args.truth, args.truth_start)))
    note = " (random weights: no trained model is bundled yet)" if segmenter.is_random_init else ""
    print(f"{args.model}{note}, {len(frames)} frames of {args.video}")
    print("| temporal smoothing | flicker (mean 1 - IoU between frames) | person IoU against --truth |")
    print("|---|---:|---:|")
    for name, value, iou in rows:
        print(f"| {name} | {value:.4f} | {'n/a' if iou is None else f'{iou:.3f}'} |")


def _masks(segmenter, frames, alpha: float, smoothing: bool, use_frames: bool = True) -> list:
    from peopleseg.infer.smoothing import TemporalSmoother

    if not smoothing or use_frames:
        return [r.person_mask for r in segmenter.stream(frames, smoothing=smoothing, alpha=alpha)]
    smoother = TemporalSmoother(alpha=alpha)
    return [segmenter.follow(segmenter.segment(f, people=False), smoother, people=False).person_mask for f in frames]


def _person_iou(masks: list, truth: str | None, start: int) -> float | None:
    if truth is None:
        return None
    from pathlib import Path

    from peopleseg.data.masks import read_mask

    inter = union = 0
    for index, mask in enumerate(masks):
        path = Path(truth) / f"{start + index:06d}.png"
        if not path.is_file():
            continue
        label = read_mask(path)
        valid = label != 255
        predicted, person = mask[valid], label[valid] == 1
        inter += int((predicted & person).sum())
        union += int((predicted | person).sum())
    return inter / union if union else None


if __name__ == "__main__":
    main()
