"""GPU throughput of SegFormer-B0 and FAN-Base-Hybrid (NVIDIA's PeopleSemSegFormer) at 512x512, in one run.

Variants, each timed on the same inputs in interleaved rounds (every variant runs its calls once per round, in
turn), each compared with fp32 eager on the same batch:
- `fp32 eager`: the baseline and the reference for agreement (TF32 off, so it is real fp32);
- `bf16 eager`: bf16 weights and activations, channels_last;
- `bf16 compiled`: the same through torch.compile (mode max-autotune by default, which includes CUDA graphs);
- `fp8 compiled`: as `bf16 compiled`, with every nn.Linear (attention and MLP projections) run through
  `torch._scaled_mm` in float8 e4m3 (per-tensor scales: the weight's fixed, the activation's found per call).
  Needs a GPU with FP8 (compute capability 8.9 or newer: L4, H100, H200); elsewhere it is skipped with the reason.
What is timed: the model's forward pass only, on a normalised batch already on the GPU (real photos from tests/data
when present, repeated to fill the batch), with a synchronise after each call; the decoder is folded as in
`peopleseg infer`. Agreement: equal argmax pixels of the logits against fp32 eager. A registry name builds random
weights (seeded), so agreement then only shows how close the arithmetic is, not accuracy on people.

    python benchmarks/gpu_speed.py                               # H100/H200: about 5-8 minutes, compile included
    python benchmarks/gpu_speed.py --json gpu.json --markdown gpu.md
    python benchmarks/gpu_speed.py --smoke                       # any CPU, a minute: checks that the script works

`--budget-s` bounds the whole run: groups run in priority order (largest batch first, alternating models), and once
`--compile-share` of the budget is spent no new compilation starts, so the remaining groups give eager figures only
and the table says what was left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "data"
E4M3_MAX = 448.0  # the largest float8 e4m3fn value
# NVIDIA's model card figure for PeopleSemSegFormer (FAN-Base-Hybrid) at 512x512: TensorRT INT8, batch 32, H100.
NVIDIA_H100_TRT_INT8_FPS = 454
VARIANTS = ("fp32 eager", "bf16 eager", "bf16 compiled", "fp8 compiled")


@dataclass
class Row:
    model: str
    batch: int
    variant: str
    median_ms: float | None = None
    p90_ms: float | None = None
    images_per_s: float | None = None
    speedup: float | None = None  # fp32 eager median / this median
    agreement: float | None = None  # equal argmax pixels against fp32 eager
    first_call_s: float | None = None  # compilation happens in the first call
    cuda_max_mb: float | None = None
    note: str = ""
    samples_ms: list[float] = field(default_factory=list)


class Fp8Linear(nn.Module):
    """`nn.Linear` through `torch._scaled_mm` in float8 e4m3, with bf16 output and the bias added in bf16."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax().clamp(min=1e-12) / E4M3_MAX
        # [out, in] row-major: its transpose is the column-major right operand that _scaled_mm wants.
        self.register_buffer("weight_fp8", (weight / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.to(torch.float32))
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax().float().clamp(min=1e-12) / E4M3_MAX
        quantised = (rows.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(
            quantised, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=torch.bfloat16
        )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def to_fp8_linears(module: nn.Module) -> int:
    """Replace every nn.Linear whose sizes FP8 GEMMs take (multiples of 16) with an Fp8Linear; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            setattr(module, name, Fp8Linear(child))
            count += 1
        else:
            count += to_fp8_linears(child)
    return count


def fp8_unavailable(device: torch.device) -> str | None:
    """Why FP8 GEMMs cannot run here, or None; tries one tiny _scaled_mm so a missing kernel shows up now."""
    if not (hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm")):
        return f"torch {torch.__version__} has no float8 / _scaled_mm"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        return f"{torch.cuda.get_device_name(device)} has no FP8 tensor cores (compute capability 8.9+ needed)"
    try:
        probe = Fp8Linear(nn.Linear(32, 32).to(device))
        probe(torch.randn(16, 32, device=device, dtype=torch.bfloat16))
    except Exception as exc:  # a kernel missing on this device or build
        return f"torch._scaled_mm failed here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return None


def load_network(spec: str, size: int, seed: int) -> nn.Module:
    """The model as `peopleseg infer` runs it (decoder folded), in fp32 eval mode on the CPU."""
    from peopleseg.bench.config import BenchmarkConfig
    from peopleseg.bench.measure import load_benchmark_model
    from peopleseg.models.fold import fold_decoder

    model, _ = load_benchmark_model(spec, BenchmarkConfig(models=(spec,), input_size=size, seed=seed))
    return fold_decoder(model)


def make_inputs(network: nn.Module, batch: int, device: torch.device) -> tuple[torch.Tensor, str]:
    """A normalised fp32 batch at the network's input size: photos from tests/data, else seeded noise."""
    from peopleseg.export.quantize import find_images, prepare_input

    info = network.info
    photos = find_images(PHOTOS) if PHOTOS.is_dir() else []
    if photos:
        arrays = [prepare_input(path, info) for path in photos]
        pixels = torch.from_numpy(np.concatenate([arrays[i % len(arrays)] for i in range(batch)]))
        source = f"{len(photos)} photos from tests/data"
    else:
        height, width = info.input_size
        pixels = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
        source = "seeded noise (no tests/data here)"
    return pixels.to(device), source


class Runner:
    """One variant of one model: a callable on its own copy of the input (dtype and memory layout)."""

    def __init__(self, name: str, network: nn.Module, device: torch.device, compile_mode: str) -> None:
        import copy

        self.name = name
        self.dtype = torch.float32 if name.startswith("fp32") else torch.bfloat16
        self.channels_last = not name.startswith("fp32")
        module = copy.deepcopy(network).to(device)
        if self.dtype != torch.float32:
            module = module.to(self.dtype)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if name.startswith("fp8"):
            self.fp8_layers = to_fp8_linears(module)
        self.cudagraphs = False
        if name.endswith("compiled"):
            self.cudagraphs = device.type == "cuda" and compile_mode in ("max-autotune", "reduce-overhead")
            if compile_mode == "dynamo-eager":  # graph capture only, no code generation: a quick check of tracing
                module = torch.compile(module, backend="eager", dynamic=False)
            else:
                module = torch.compile(module, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
        self.module = module

    def prepare(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.dtype)
        return pixels.contiguous(memory_format=torch.channels_last) if self.channels_last else pixels.contiguous()

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: earlier outputs may be reused
        return self.module(pixels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(runner: Runner, pixels: torch.Tensor, device: torch.device) -> tuple[float, torch.Tensor]:
    _sync(device)
    start = time.perf_counter()
    logits = runner(pixels)
    _sync(device)
    return time.perf_counter() - start, logits


def measure_group(
    model: str,
    batch: int,
    runners: dict[str, Runner],
    pixels: torch.Tensor,
    device: torch.device,
    args: argparse.Namespace,
    may_compile: bool,
) -> list[Row]:
    """Warm up (compile) each variant, check its agreement, then time all of them in interleaved rounds."""
    rows = {name: Row(model, batch, name) for name in runners}
    inputs = {name: runner.prepare(pixels) for name, runner in runners.items()}
    reference = None
    ready: list[str] = []
    for name, runner in runners.items():
        if name.endswith("compiled") and not may_compile:
            rows[name].note = "not run: the compile share of --budget-s was spent"
            continue
        try:
            first, logits = _timed_call(runner, inputs[name], device)
            for _ in range(max(0, args.warmup - 1)):
                _, logits = _timed_call(runner, inputs[name], device)
            labels = logits.float().argmax(1)
        except Exception as exc:  # a compile or kernel failure of one variant must not stop the others
            rows[name].note = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
            continue
        if name == "fp32 eager":
            reference = labels
        if reference is not None:
            rows[name].agreement = float((labels == reference).float().mean())
        rows[name].first_call_s = first
        ready.append(name)
    samples: dict[str, list[float]] = {name: [] for name in ready}
    peaks: dict[str, float] = {}
    for round_index in range(args.rounds):
        shift = round_index % max(1, len(ready))
        for name in ready[shift:] + ready[:shift]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.calls):
                seconds, _ = _timed_call(runners[name], inputs[name], device)
                samples[name].append(seconds)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
    baseline = statistics.median(samples["fp32 eager"]) if samples.get("fp32 eager") else None
    for name in ready:
        row, seconds = rows[name], samples[name]
        row.median_ms = statistics.median(seconds) * 1000
        row.p90_ms = float(np.percentile(seconds, 90)) * 1000
        row.images_per_s = batch / statistics.median(seconds)
        row.speedup = baseline / statistics.median(seconds) if baseline else None
        row.cuda_max_mb = peaks.get(name)
        row.samples_ms = [round(s * 1000, 3) for s in seconds]
        if name == "fp8 compiled":
            row.note = f"{runners[name].fp8_layers} linear layers in FP8"
    return list(rows.values())


def markdown(rows: list[Row], header: dict[str, Any]) -> str:
    lines = [
        f"## GPU speed: {header['device_name']}",
        "",
        f"- command: `{header['command']}`",
        f"- torch {header['torch']}, CUDA {header['cuda']}; input {header['size']}x{header['size']}, "
        f"{header['rounds']} interleaved rounds x {header['calls']} calls after {header['warmup']} warm-up call(s); "
        f"compile mode {header['compile_mode']}; inputs: {header['inputs']}",
        "- timed: the model's forward pass on a batch already on the device (decoder folded), synchronised per call",
        "- agreement: equal argmax pixels of the logits against fp32 eager on the same batch",
        "",
        "| model | batch | variant | median ms | p90 ms | images/s | x fp32 eager | agreement | first call s | "
        "CUDA max MB | note |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    order = {name: index for index, name in enumerate(VARIANTS)}
    for row in sorted(rows, key=lambda r: (r.model, r.batch, order[r.variant])):
        lines.append(
            f"| {row.model} | {row.batch} | {row.variant} | {_num(row.median_ms, 2)} | {_num(row.p90_ms, 2)} "
            f"| {_num(row.images_per_s, 1)} | {_num(row.speedup, 2, 'x')} "
            f"| {_num(None if row.agreement is None else 100 * row.agreement, 2, '%')} "
            f"| {_num(row.first_call_s, 1)} | {_num(row.cuda_max_mb, 0)} | {row.note} |"
        )
    fan = [r for r in rows if "fan_base" in r.model and r.batch == 32 and r.images_per_s]
    if fan:
        best = max(fan, key=lambda r: r.images_per_s or 0.0)
        lines += [
            "",
            f"FAN-Base-Hybrid at batch 32: best {best.images_per_s:.0f} images/s ({best.variant}); NVIDIA's model card "
            f"gives {NVIDIA_H100_TRT_INT8_FPS} images/s on an H100 with TensorRT INT8 "
            f"({best.images_per_s / NVIDIA_H100_TRT_INT8_FPS:.2f}x that; the goal is 1,000 images/s).",
        ]
    if header.get("skipped"):
        lines += ["", "Not run: " + "; ".join(header["skipped"])]
    lines += ["", f"Total wall time {header['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def _num(value: float | None, digits: int, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="segformer_b0,segformer_fan_base_hybrid", help="names or weights paths")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per variant per round")
    parser.add_argument("--warmup", type=int, default=3, help="calls before timing; CUDA graphs record on the 2nd")
    parser.add_argument(
        "--compile-mode",
        default="max-autotune",
        help="max-autotune (with CUDA graphs), reduce-overhead, default, or dynamo-eager (tracing only; --smoke's)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a comma-separated subset of the variants")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--budget-s", type=float, default=450.0, help="the whole run, model builds included")
    parser.add_argument("--compile-share", type=float, default=0.7, help="after this share of the budget, no compiles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--markdown", dest="markdown_path")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick, on any CPU: 64x64, 1 round, 1 thread")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    given = argv if argv is not None else sys.argv[1:]
    if "--smoke" in given:
        # Smoke defaults (flags given still win). Inductor on a 2-core CPU takes a minute per model and shape, so
        # compiling is tracing only (dynamo-eager) unless asked: `--smoke --compile-mode default` compiles for real.
        # One thread: on a shared CPU, a thread pool waiting at every op's barrier makes tiny runs crawl.
        parser.set_defaults(size=64, batches="1,2", rounds=1, calls=1, warmup=1, compile_mode="dynamo-eager", threads=1)
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or "fp32 eager" not in args.variants:
        parser.error(f"--variants: a subset of {', '.join(VARIANTS)} that includes 'fp32 eager', got {unknown or ''}")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    started = time.perf_counter()
    args = parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # a checkout where peopleseg is not installed (the GPU machine) runs it too
    from peopleseg.atomic import atomic_open

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    # The reference must be real fp32: TF32 would make the baseline a reduced-precision variant too.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    batches = sorted({int(b) for b in args.batches.split(",")}, reverse=True)
    fp8_reason = fp8_unavailable(device) if "fp8 compiled" in args.variants else None
    skipped = [f"fp8 compiled: {fp8_reason}"] if fp8_reason else []
    names = [v for v in VARIANTS if v in args.variants and not (v == "fp8 compiled" and fp8_reason)]
    networks, runners = {}, {}
    rows: list[Row] = []
    inputs_source = ""
    # Priority order: the largest batch first (the throughput headline), alternating models.
    for batch in batches:
        for spec in models:
            elapsed = time.perf_counter() - started
            if elapsed > args.budget_s:
                skipped.append(f"{spec} at batch {batch}: the {args.budget_s:.0f} s budget was spent")
                continue
            if spec not in networks:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    networks[spec] = load_network(spec, args.size, args.seed)
                runners[spec] = {name: Runner(name, networks[spec], device, args.compile_mode) for name in names}
            pixels, inputs_source = make_inputs(networks[spec], batch, device)
            may_compile = elapsed < args.compile_share * args.budget_s
            group = measure_group(spec, batch, runners[spec], pixels, device, args, may_compile)
            rows += group
            done = ", ".join(f"{r.variant} {r.images_per_s:.1f}/s" for r in group if r.images_per_s)
            print(f"[{time.perf_counter() - started:5.0f} s] {spec} batch {batch}: {done}", file=sys.stderr)
    header = {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({device})",
        "command": "python benchmarks/gpu_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "size": args.size,
        "rounds": args.rounds,
        "calls": args.calls,
        "warmup": args.warmup,
        "compile_mode": args.compile_mode,
        "inputs": inputs_source,
        "skipped": skipped,
        "wall_s": time.perf_counter() - started,
    }
    text = markdown(rows, header)
    print(text)
    if args.markdown_path:
        with atomic_open(args.markdown_path) as stream:
            stream.write(text)
    if args.json_path:
        with atomic_open(args.json_path) as stream:
            json.dump({"header": header, "rows": [asdict(r) for r in rows]}, stream, indent=2)
            stream.write("\n")
    return rows


if __name__ == "__main__":
    main()
