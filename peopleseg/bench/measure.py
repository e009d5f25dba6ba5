"""`run_benchmark(config)`: build the variants, check their masks against ours, then time them in interleaved rounds.

For each model:
1. every variant is built (exported, quantised, compiled lazily); one that cannot run here is skipped with a reason;
2. agreement: each variant segments every benchmark photo, and its masks are compared pixel by pixel with those of
   a separately built torch fp32 Segmenter (our reference);
3. for each batch size: `warmup` untimed calls per variant, then `rounds` rounds in which every variant runs
   `calls_per_round` timed calls in turn. The order rotates by one each round, so that no variant always follows
   the same neighbour; all of them see the same machine state (load, temperature, caches) over the run.
A variant that raises while running is reported as failed; the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peopleseg.bench.config import VARIANTS, BenchmarkConfig
from peopleseg.bench.machine import describe_machine, load_average
from peopleseg.bench.memory import MemoryPeak, PeakMeter
from peopleseg.bench.report import BenchmarkReport, ModelRun, VariantStats
from peopleseg.bench.variants import TORCH_ALLOCATED, Skipped, Variant, VariantBuilder
from peopleseg.data.image_io import read_image
from peopleseg.errors import ConfigError, PeoplesegError
from peopleseg.infer.segmenter import Segmenter
from peopleseg.models.segformer import SegFormer

_EXPORTED_SUFFIXES = (".onnx", ".engine", ".plan")

# Seconds between one variant's calls and the next variant's, untimed.
SETTLE_S = 0.05


def run_benchmark(config: BenchmarkConfig) -> BenchmarkReport:
    """Measure every model and variant of `config` on its photos; see the module docstring for the protocol."""
    config.validate()
    device = _check_device(config.device)
    paths = config.image_paths()
    images = [read_image(path) for path in paths]
    if config.threads:
        torch.set_num_threads(config.threads)
    meter = PeakMeter(device)
    report = BenchmarkReport(
        config=config,
        machine=describe_machine(config.device),
        images=[str(p) for p in paths],
        memory_method=meter.method,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    load, usable = report.machine.get("load_average"), report.machine.get("cpu_usable") or 1
    if load and load[0] > usable:
        report.notes.append(
            f"the machine was busy (load average {load[0]:.1f} on {usable} usable cores): absolute figures are "
            "depressed, and runtimes suffer unequally (a thread pool that waits at every op's barrier suffers "
            "most), so ratios vary more between runs than on a quiet machine"
        )
    if not meter.resets:
        report.notes.append("peak RSS is the process's peak so far (getrusage): it cannot be reset per variant here")
    start = time.perf_counter()
    with _progress(config.progress) as progress, tempfile.TemporaryDirectory(prefix="peopleseg_bench_") as work:
        for index, spec in enumerate(config.models):
            folder = Path(work) / f"model{index}"
            folder.mkdir()
            _benchmark_model(spec, folder, paths, images, config, meter, report, progress)
    report.elapsed_s = time.perf_counter() - start
    report.machine["load_average_end"] = load_average()
    return report


def load_benchmark_model(spec: str, config: BenchmarkConfig) -> tuple[SegFormer, bool]:
    """The PyTorch model that every variant is built from, and whether its weights are random.

    It is loaded the way users get it, through `Segmenter(spec)`: "default" is the bundled model (or the seeded
    random fallback while none is bundled), a registry name builds random weights (seeded by `config.seed`).
    """
    if spec.lower().endswith(_EXPORTED_SUFFIXES):
        raise ConfigError(
            f"models: '{spec}' is an exported file; the benchmark builds every variant from a PyTorch model, so "
            "give 'default', a model name or a weights file"
        )
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights: said once, in the report's notes
        probe = Segmenter(spec, backend="torch")
    model = probe.model
    if not isinstance(model, SegFormer):
        raise ConfigError(f"models: '{spec}' did not give a PyTorch SegFormer")
    if config.input_size is not None:
        model.info = dataclasses.replace(model.info, input_size=tuple(config.input_size))
    return model.eval(), probe.is_random_init


def _benchmark_model(
    spec: str,
    work_dir: Path,
    paths: list[Path],
    images: list[np.ndarray],
    config: BenchmarkConfig,
    meter: PeakMeter,
    report: BenchmarkReport,
    progress: Any,
) -> None:
    task = progress.add_task(f"{spec}: loading", total=None)
    model, random_weights = load_benchmark_model(spec, config)
    builder = VariantBuilder(model, config, work_dir, paths)
    baseline = config.baseline
    if baseline == "auto":
        baseline = "hf" if builder.unavailable("hf") is None else "torch"
    wanted = [v for v in VARIANTS if v in config.variants or v == baseline]
    variants: dict[str, Variant] = {}
    for name in wanted:
        reason = builder.unavailable(name)
        if reason is None:
            progress.update(task, description=f"{spec}: building {name}")
            try:
                variants[name] = builder.build(name)
            except (PeoplesegError, ImportError) as exc:
                reason = _first_line(exc)
        if reason is not None:
            report.skipped.append(Skipped(spec, name, reason))
    if baseline not in variants:
        report.notes.append(f"{spec}: the baseline {baseline} could not run here, so ratios are against torch")
        baseline = "torch"
        if "torch" not in variants:
            variants["torch"] = builder.build("torch")
            variants = {name: variants[name] for name in VARIANTS if name in variants}  # the usual run order
    run = ModelRun(spec, model.info.arch, tuple(model.info.input_size), random_weights, baseline)  # type: ignore[arg-type]
    report.models.append(run)
    if random_weights:
        report.notes.append(
            f"{spec}: random weights ({model.info.arch}), so the masks mean nothing; agreement still shows whether "
            "the variants compute the same function"
        )
    for name, variant in variants.items():
        report.notes += [f"{spec}, {name}: {note}" for note in variant.notes]

    first_calls: dict[str, float] = {}
    progress.update(task, description=f"{spec}: agreement on {len(images)} photo(s)")
    agreements = _agreements(variants, images, config, model, first_calls, spec, report)
    per_batch = len(variants) * (config.warmup + config.rounds * config.calls_per_round)
    progress.update(task, total=per_batch * len(config.batch_sizes), completed=0)
    for batch in config.batch_sizes:
        progress.update(task, description=f"{spec}: batch {batch}")
        timings = _time_interleaved(variants, images, batch, config, meter, first_calls, spec, report, progress, task)
        stats = [
            _stats(spec, name, batch, timings[name], variants[name], agreements.get(name), first_calls.get(name, 0.0))
            for name in variants
            if name in timings
        ]
        _add_ratios(stats, baseline)
        report.results += stats
    progress.update(task, description=f"{spec}: done")
    variants.clear()
    del builder, model
    gc.collect()  # the next model's memory figures should not carry this one's
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _agreements(
    variants: dict[str, Variant],
    images: list[np.ndarray],
    config: BenchmarkConfig,
    model: SegFormer,
    first_calls: dict[str, float],
    spec: str,
    report: BenchmarkReport,
) -> dict[str, float | None]:
    """Equal mask pixels of each variant against a fresh torch fp32 Segmenter, over all photos (pixel-weighted)."""
    batch = config.batch_sizes[0]
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reference = Segmenter(model, backend="torch", device=config.device, resize=config.resize, batch_size=batch)
    expected = [mask for chunk in chunks for mask in reference.predict_batch(chunk)]
    del reference
    found: dict[str, float | None] = {}
    for name in list(variants):
        variant = variants[name]
        variant.segmenter.batch_size = batch
        try:
            masks = []
            for index, chunk in enumerate(chunks):
                start = time.perf_counter()
                masks += variant.segmenter.predict_batch(chunk)
                if index == 0:
                    first_calls[name] = time.perf_counter() - start
        except Exception as exc:  # any runtime error of one variant must not stop the others
            _fail(variants, name, exc, spec, report)
            continue
        equal = sum(int(np.count_nonzero(a == b)) for a, b in zip(masks, expected, strict=True))
        total = sum(mask.size for mask in expected)
        found[name] = equal / total if variant.exact_weights else None
    return found


def _time_interleaved(
    variants: dict[str, Variant],
    images: list[np.ndarray],
    batch: int,
    config: BenchmarkConfig,
    meter: PeakMeter,
    first_calls: dict[str, float],
    spec: str,
    report: BenchmarkReport,
    progress: Any,
    task: Any,
) -> dict[str, tuple[list[float], list[MemoryPeak]]]:
    """Warm-up, then interleaved rounds; per variant, every call's seconds and each round's memory peak."""
    # The same photos, in the same batches, for every variant; a batch larger than the photo set repeats photos.
    calls = [[images[(call * batch + k) % len(images)] for k in range(batch)] for call in range(config.calls_per_round)]
    for variant in variants.values():
        variant.segmenter.batch_size = batch  # one forward pass per call
    for name in list(variants):
        try:
            for index in range(config.warmup):
                start = time.perf_counter()
                variants[name].segmenter.predict_batch(calls[index % len(calls)])
                first_calls.setdefault(name, time.perf_counter() - start)
                progress.advance(task)
        except Exception as exc:
            _fail(variants, name, exc, spec, report)
    timings: dict[str, tuple[list[float], list[MemoryPeak]]] = {name: ([], []) for name in variants}
    for round_index in range(config.rounds):
        names = list(variants)
        shift = round_index % max(1, len(names))
        for name in names[shift:] + names[:shift]:
            seconds, peaks = timings[name]
            # onnxruntime's threads busy-wait for a while after a call (backends.py): let the previous variant's
            # threads go idle first, as they would in a process that runs one model.
            time.sleep(SETTLE_S)
            try:
                meter.start()
                for images_in_call in calls:
                    start = time.perf_counter()
                    variants[name].segmenter.predict_batch(images_in_call)
                    seconds.append(time.perf_counter() - start)
                    progress.advance(task)
                peaks.append(meter.stop())
            except Exception as exc:
                _fail(variants, name, exc, spec, report)
                del timings[name]
    return timings


def _stats(
    spec: str,
    name: str,
    batch: int,
    timing: tuple[list[float], list[MemoryPeak]],
    variant: Variant,
    agreement: float | None,
    first_call_s: float,
) -> VariantStats:
    seconds, peaks = timing
    median = statistics.median(seconds)
    cuda = [p.cuda_max_allocated_mb for p in peaks if p.cuda_max_allocated_mb is not None]
    return VariantStats(
        model=spec,
        variant=name,
        batch=batch,
        latencies_ms=[round(s * 1000, 3) for s in seconds],
        median_ms=median * 1000,
        p90_ms=float(np.percentile(seconds, 90)) * 1000,
        images_per_s=batch / median,
        peak_rss_mb=max(p.peak_rss_mb for p in peaks),
        rss_growth_mb=max(p.growth_mb for p in peaks),
        # onnxruntime and TensorRT allocate CUDA memory outside torch, where its counter cannot see it.
        cuda_max_allocated_mb=max(cuda) if cuda and name in TORCH_ALLOCATED else None,
        agreement=agreement,
        setup_s=variant.setup_s,
        first_call_s=first_call_s,
    )


def _add_ratios(stats: list[VariantStats], baseline: str) -> None:
    reference = next((s for s in stats if s.variant == baseline), None)
    for result in stats:
        result.baseline = baseline
        if reference is None:
            result.notes.append(f"the baseline {baseline} failed, so there are no ratios")
            continue
        result.speedup = reference.median_ms / result.median_ms
        result.memory_ratio = result.peak_rss_mb / reference.peak_rss_mb
        if result.cuda_max_allocated_mb and reference.cuda_max_allocated_mb:
            result.cuda_memory_ratio = result.cuda_max_allocated_mb / reference.cuda_max_allocated_mb


def _fail(variants: dict[str, Variant], name: str, exc: BaseException, spec: str, report: BenchmarkReport) -> None:
    variants.pop(name, None)
    report.skipped.append(Skipped(spec, name, f"{type(exc).__name__}: {_first_line(exc)}", failed=True))


def _check_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{device}' asked for, but this torch sees no CUDA device")
    return torch.device(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich progress display on stderr (the table goes to stdout), or a silent stand-in."""
    if not enabled:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    # Transient: the bar leaves the terminal to the table and the summary once the run ends.
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True) as progress:
        yield progress


class _Silent:
    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass
