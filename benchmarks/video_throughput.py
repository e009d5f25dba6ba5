"""Video end-to-end FPS against inference-only FPS, same model, backend and batch size, measured in one run.

End to end = decode → preprocess → model → postprocess, smoothing, people → render (blur) → H.264 encode, through
`peopleseg.infer.run.segment_video`. Inference only = the model's forward pass on already-normalised batches.
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="blur", help="what the end-to-end run writes (default blur)")
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

    inference_fps, e2e_fps = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(0, len(frames), args.batch):
            segmenter.backend(batch)
        inference_fps.append(len(range(0, len(frames), args.batch)) * args.batch / (time.perf_counter() - start))
        stats = segment_video(
            segmenter, video, work / "out", [args.output], batch_size=args.batch, max_frames=args.frames, progress=False
        )
        e2e_fps.append(stats.fps)

    infer_median, e2e_median = statistics.median(inference_fps), statistics.median(e2e_fps)
    print(
        f"model {args.model}, backend {segmenter.backend.name}, batch {args.batch}, threads {args.threads}, "
        f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} at network input {width}x{height}"
    )
    print("| measure | FPS (median of rounds) | ratio |")
    print("|---|---|---|")
    print(f"| inference only (model forward) | {infer_median:.2f} | 1.00 |")
    print(f"| video end to end (decode … blur … encode) | {e2e_median:.2f} | {e2e_median / infer_median:.2f} |")


if __name__ == "__main__":
    main()
