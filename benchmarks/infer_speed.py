"""Single-image CPU speed of the Segmenter: torch eager against onnxruntime, interleaved rounds, one run.

Each round times `Segmenter.predict` on a real photo (preprocess, model, postprocess) for every backend in turn,
so all backends see the same machine state. The table gives median and p90 latency, images/s and the ratio to torch.

    python benchmarks/infer_speed.py [--model segformer_b0] [--threads 2] [--rounds 5] [--per-round 5]
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

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "astronaut.jpg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="segformer_b0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--image", default=str(PHOTO))
    args = parser.parse_args()

    from peopleseg import Segmenter, load_model
    from peopleseg.data.image_io import read_image
    from peopleseg.export.onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    onnx_path = Path(tempfile.mkdtemp(prefix="peopleseg_bench_")) / "model.onnx"
    export_onnx(model, onnx_path, check=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = {
            "torch eager fp32": Segmenter(model, threads=args.threads),
            "onnxruntime fp32": Segmenter(onnx_path, threads=args.threads),
        }
    image = read_image(args.image)
    for segmenter in variants.values():
        segmenter.predict(image)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, segmenter in variants.items():
            for _ in range(args.per_round):
                start = time.perf_counter()
                segmenter.predict(image)
                times[name].append(time.perf_counter() - start)
    baseline = statistics.median(times["torch eager fp32"])
    size = model.info.input_size
    print(f"{args.model} at {size[1]}x{size[0]}, {args.threads} threads, photo {image.shape[1]}x{image.shape[0]}")
    print("| variant | median ms | p90 ms | images/s | speed-up vs torch |")
    print("|---|---|---|---|---|")
    for name, samples in times.items():
        median = statistics.median(samples)
        p90 = float(np.percentile(samples, 90))
        print(f"| {name} | {median * 1000:.0f} | {p90 * 1000:.0f} | {1 / median:.2f} | {baseline / median:.2f}x |")


if __name__ == "__main__":
    main()
