"""Flicker with and without temporal smoothing, on a still-camera clip.

Flicker is `peopleseg.infer.smoothing.flicker`: the mean, over consecutive frames, of 1 - IoU of the person masks
(0 is perfectly steady). Both runs use the same model and frames.

    python benchmarks/flicker.py --video PATH [--model segformer_b0] [--frames 60] [--alpha 0.5]
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
    rows = []
    for smoothing in (False, True):
        masks = [r.person_mask for r in segmenter.stream(frames, smoothing=smoothing, alpha=args.alpha)]
        rows.append((smoothing, flicker(masks)))
    note = " (random weights: no trained model is bundled yet)" if segmenter.is_random_init else ""
    print(f"{args.model}{note}, {len(frames)} frames of {args.video}")
    print("| temporal smoothing | flicker (mean 1 - IoU between frames) |")
    print("|---|---|")
    for smoothing, value in rows:
        print(f"| {'on, alpha ' + str(args.alpha) if smoothing else 'off'} | {value:.4f} |")
    print(f"flicker falls by {100 * (1 - rows[1][1] / rows[0][1]):.0f}%" if rows[0][1] else "no flicker to reduce")


if __name__ == "__main__":
    main()
