"""Video end-to-end FPS against inference-only FPS, same model, backend and batch size, measured in one run.

End to end = decode → preprocess → model → postprocess, smoothing, people → render (blur) → H.264 encode, through
`peopleseg.infer.run.segment_video`. Inference only is timed two ways: the model's forward pass on already-normalised
batches, and `Segmenter.segment_batch` on the decoded frames (the model with its resize, normalisation and
upsampling, as the Python API runs it).
Rounds alternate between the two so both see the same machine state; the table gives medians and their ratio.

    python benchmarks/video_throughput.py [--video PATH] [--model segformer_b0] [--backend torch] [--batch 4]

Without --video it makes a 768x576, 10 fps clip of moving shapes in a temp folder (no data needed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from peopleseg.infer.run import VIDEO_SIDE_NICENESS


def make_clip(path: Path, frames: int = 48, size: tuple[int, int] = (768, 576)) -> Path:
    from peopleseg.infer.video_writer import VideoWriter

    width, height = size
    with VideoWriter(path, 10, width, height) as writer:
        for i in range(frames):
            image = np.full((height, width, 3), 90, np.uint8)
            image[100:400, 50 + 8 * i : 150 + 8 * i] = (200, 150, 120)
            writer.write(image)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="a video file (default: a generated 768x576 clip)")
    parser.add_argument("--model", default="segformer_b0", help="model name, weights path or .onnx")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=48, help="frames per end-to-end round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default="blur", help="what the end-to-end run writes (default blur)")
    parser.add_argument(
        "--baseline-niceness",
        type=int,
        help="also run end to end with the decode and render/encode threads at this many nice levels below the model "
        f"(the default is {VIDEO_SIDE_NICENESS}; 0 runs them level with it), and give the ratio",
    )
    args = parser.parse_args()

    from peopleseg import Segmenter
    from peopleseg.infer.run import segment_video
    from peopleseg.infer.sources import open_source

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="peopleseg_bench_"))
    video = args.video or str(make_clip(work / "clip.mp4", frames=args.frames))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenter = Segmenter(args.model, backend=args.backend, threads=args.threads, batch_size=args.batch)
    with open_source(video, max_frames=args.frames) as source:
        frames = [frame.image for frame in source]
    height, width = segmenter.info.input_size
    batch = torch.randn(args.batch, 3, height, width)
    segmenter.backend(batch)  # warm-up

    # onnxruntime busy-waits between operators for stills and not in video pipelines (infer/backends.py): inference
    # only is timed both ways, and the end-to-end ratio is given against each.
    modes = (True, False) if hasattr(segmenter.backend, "busy_wait") else (None,)
    inference_fps: dict[bool | None, list[float]] = {mode: [] for mode in modes}
    api_fps = []  # the Segmenter on the decoded frames: the model plus its pre- and post-processing
    e2e_fps = []
    baseline_fps = []  # end to end with --baseline-niceness
    for _ in range(args.rounds):
        if modes[0] is not None:
            segmenter.backend.busy_wait = False
        start = time.perf_counter()
        for index in range(0, len(frames), args.batch):
            segmenter.segment_batch(frames[index : index + args.batch], people=False)
        api_fps.append(len(frames) / (time.perf_counter() - start))
        for mode in modes:
            if mode is not None:
                segmenter.backend.busy_wait = mode
                segmenter.backend(batch)  # its session's warm-up
            start = time.perf_counter()
            for _ in range(0, len(frames), args.batch):
                segmenter.backend(batch)
            calls = len(range(0, len(frames), args.batch))
            inference_fps[mode].append(calls * args.batch / (time.perf_counter() - start))
        if modes[0] is not None:
            segmenter.backend.busy_wait = True  # what a user's Segmenter has; segment_video turns it off itself
        runs = [(VIDEO_SIDE_NICENESS, e2e_fps)]
        if args.baseline_niceness is not None:
            runs.append((args.baseline_niceness, baseline_fps))
        for niceness, fps in runs:
            stats = segment_video(
                segmenter,
                video,
                work / "out",
                [args.output],
                batch_size=args.batch,
                max_frames=args.frames,
                progress=False,
                side_niceness=niceness,
            )
            fps.append(stats.fps)

    print(
        f"model {args.model}, backend {segmenter.backend.name}, batch {args.batch}, threads {args.threads}, "
        f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} at network input {width}x{height}, "
        f"output {args.output}, {args.rounds} rounds"
    )
    # Each round's ratio pairs measures taken seconds apart, so the slow drifts of a shared machine cancel out;
    # the table gives the median of those ratios and their range.
    print("| measure | FPS (median of rounds) | end to end / this, median of rounds | range |")
    print("|---|---:|---:|---|")
    names = {
        None: "inference only (model forward)",
        True: "inference only, busy-wait on (stills)",
        False: "inference only, busy-wait off (as in video)",
    }
    rows = [(names[mode], inference_fps[mode]) for mode in modes]
    rows.append(("Segmenter.segment_batch on the decoded frames (model + pre/post)", api_fps))
    if baseline_fps:
        rows.append((f"video end to end, decode and render/encode at nice +{args.baseline_niceness}", baseline_fps))
    for name, fps in rows:
        ratios = [e2e / other for e2e, other in zip(e2e_fps, fps, strict=True)]
        print(
            f"| {name} | {statistics.median(fps):.2f} | {statistics.median(ratios):.2f} | "
            f"{min(ratios):.2f}–{max(ratios):.2f} |"
        )
    print(
        f"| video end to end (decode … {args.output} … encode), side threads at nice +{VIDEO_SIDE_NICENESS} | "
        f"{statistics.median(e2e_fps):.2f} | 1.00 | |"
    )


if __name__ == "__main__":
    main()
