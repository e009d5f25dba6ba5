"""CPU speed and agreement of the INT8 and FP16 ONNX files against fp32, in onnxruntime, one run.

Exports the model to fp32 ONNX, quantises it to INT8 (static QDQ, calibrated on `--calib`), converts it to FP16 and
builds the fast path's graph (the lean rewrite with INT8 weights and dynamically quantised activations, what
`Segmenter` runs on a CPU), then times the four files on real images in interleaved rounds, after a warm-up, so
that all see the same machine state. The table gives median and p90 latency of the model alone (preprocessing
excluded), images/s, the speed-up over fp32, the file size, and the argmax agreement and largest output difference
with fp32 on the same images.

    python benchmarks/int8_speed.py [--model segformer_b0] [--calib tests/data] [--threads 2] [--rounds 10]

`--calib` defaults to the photos in tests/data; calibration then uses all of them (3), fewer than the 64 a real
export should use. With random weights (the registry name) the agreement figures only show that the pipeline holds
together; pass a weights path for meaningful ones.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="segformer_b0", help="registry name or weights path")
    parser.add_argument("--calib", default=str(DATA), help="folder of calibration images")
    parser.add_argument("--calib-count", type=int, default=64)
    parser.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"))
    parser.add_argument("--images", default=str(DATA), help="folder of images to time and compare on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-fp16", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from peopleseg import load_model
    from peopleseg.data.image_io import read_image
    from peopleseg.export.fp16 import convert_fp16
    from peopleseg.export.onnx_export import export_onnx
    from peopleseg.export.quantize import QuantizeConfig, agreement, find_images, prepare_input, quantize_int8
    from peopleseg.infer.fast_path import build_fast_onnx
    from peopleseg.models.weights import save_model

    work = Path(tempfile.mkdtemp(prefix="peopleseg_int8_bench_"))
    torch.manual_seed(0)  # a registry name builds random weights: the same ones on every run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights notice
        model = load_model(args.model)
    info = model.info
    files = {"fp32": work / "model.onnx"}
    start = time.perf_counter()
    export_onnx(model, files["fp32"], check=False)
    export_s = time.perf_counter() - start

    calibration = find_images(args.calib)
    count = min(args.calib_count, len(calibration))  # the photos in tests/data are only 3
    config = QuantizeConfig(method=args.method, calibration_count=count)
    start = time.perf_counter()
    files["int8"] = quantize_int8(files["fp32"], work / "model.int8.onnx", args.calib, info, config, progress=False)
    quantize_s = time.perf_counter() - start
    fp16_s = float("nan")
    if not args.no_fp16:
        start = time.perf_counter()
        files["fp16"] = convert_fp16(files["fp32"], work / "model.fp16.onnx")
        fp16_s = time.perf_counter() - start

    start = time.perf_counter()
    weights = save_model(model, work / "model.safetensors")
    files["int8-fast"] = build_fast_onnx(weights, work / "model.fast-int8.onnx")
    fast_s = time.perf_counter() - start

    images = find_images(args.images)
    batches = [prepare_input(read_image(path), info) for path in images]
    sessions = {}
    for name, path in files.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for session in sessions.values():  # warm-up: first runs allocate and pick kernels
        for batch in batches[:2]:
            session.run(None, {"input": batch})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            for batch in batches:
                start = time.perf_counter()
                session.run(None, {"input": batch})
                times[name].append(time.perf_counter() - start)
    agree = {name: agreement(files["fp32"], path, images, info, threads=args.threads) for name, path in files.items()}

    baseline = statistics.median(times["fp32"])
    height, width = info.input_size
    print(
        f"{args.model} at {width}x{height}, onnxruntime {ort.__version__} CPU, {args.threads} threads; "
        f"{len(images)} images x {args.rounds} rounds per variant; INT8: {config.method}, {count} calibration images, "
        f"QDQ {config.activation_type}/{config.weight_type}{' per-channel' if config.per_channel else ''}"
    )
    print(f"export {export_s:.1f} s, quantise {quantize_s:.1f} s, fp16 {fp16_s:.1f} s, fast graph {fast_s:.1f} s")
    print("| variant | MB | median ms | p90 ms | images/s | speed-up vs fp32 | argmax agreement | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, samples in times.items():
        median, p90 = statistics.median(samples), float(np.percentile(samples, 90))
        found = agree[name]
        print(
            f"| {name} | {files[name].stat().st_size / 1e6:.1f} | {median * 1000:.0f} | {p90 * 1000:.0f} "
            f"| {1 / median:.2f} | {baseline / median:.2f}x | {100 * found['agreement']:.2f}% "
            f"| {found['max_abs_diff']:.2e} |"
        )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
