"""What a benchmark run found, and its three renderings: a rich table for the terminal, JSON and Markdown.

Ratios compare each variant with the baseline measured in the same run (interleaved with it), never with figures
from another run or another machine.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peopleseg.atomic import atomic_open
from peopleseg.bench.config import VARIANT_ABOUT, BenchmarkConfig
from peopleseg.bench.machine import machine_line
from peopleseg.bench.variants import Skipped

WHAT_IS_TIMED = (
    "each call is Segmenter.predict_batch on decoded photos: preprocessing + model + postprocessing to masks at "
    "each photo's own size"
)


@dataclass
class VariantStats:
    """One variant of one model at one batch size."""

    model: str
    variant: str
    batch: int
    latencies_ms: list[float]  # every timed call, in run order
    median_ms: float
    p90_ms: float
    images_per_s: float  # batch / median latency
    peak_rss_mb: float  # the highest process RSS seen during this variant's calls
    rss_growth_mb: float  # the most that RSS rose during one round of its calls
    cuda_max_allocated_mb: float | None  # torch's CUDA allocator peak; None on CPU or for non-torch runtimes
    agreement: float | None  # equal argmax pixels against our torch fp32, over all benchmark photos
    setup_s: float  # export, quantisation, engine build
    first_call_s: float  # the variant's first call in this run, where torch.compile compiles
    baseline: str = ""
    speedup: float | None = None  # baseline median / this median: above 1 is faster than the baseline
    # Peak RSS / the baseline's. All variants share one process, so this is near 1 unless one needs far more
    # working memory than the rest; `rss_growth_mb` is the per-variant figure to read.
    memory_ratio: float | None = None
    cuda_memory_ratio: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return self.variant == self.baseline


@dataclass
class ModelRun:
    spec: str  # as given: "default", a registry name or a path
    arch: str
    input_size: tuple[int, int]  # (height, width)
    random_weights: bool
    baseline: str


@dataclass
class BenchmarkReport:
    config: BenchmarkConfig
    machine: dict[str, Any]
    images: list[str]
    memory_method: str
    models: list[ModelRun] = field(default_factory=list)
    results: list[VariantStats] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    created: str = ""

    def result(self, variant: str, batch: int | None = None, model: str | None = None) -> VariantStats:
        """The stats of `variant` (of the first model and batch size unless given); KeyError if it did not run."""
        model = model if model is not None else self.config.models[0]
        batch = batch if batch is not None else self.config.batch_sizes[0]
        for stats in self.results:
            if (stats.model, stats.variant, stats.batch) == (model, variant, batch):
                return stats
        raise KeyError(f"no result for {variant} (model {model}, batch {batch})")

    @property
    def failed(self) -> list[Skipped]:
        return [s for s in self.skipped if s.failed]

    # --- JSON --------------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return _finite(
            {
                "tool": "peopleseg benchmark",
                "created": self.created,
                "command": self.config.as_command(),
                "timed": WHAT_IS_TIMED,
                "machine": self.machine,
                "config": self.config.to_dict(),
                "images": self.images,
                "memory_method": self.memory_method,
                "models": [asdict(m) | {"input_size": list(m.input_size)} for m in self.models],
                "results": [asdict(r) | {"is_baseline": r.is_baseline} for r in self.results],
                "skipped": [asdict(s) for s in self.skipped],
                "notes": self.notes,
                "elapsed_s": round(self.elapsed_s, 2),
            }
        )

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        with atomic_open(path) as stream:
            json.dump(self.to_json(), stream, indent=2, allow_nan=False)
            stream.write("\n")
        return Path(path)

    # --- Markdown ----------------------------------------------------------------------------------------------

    def markdown(self) -> str:
        config = self.config
        lines = [
            "## peopleseg benchmark",
            "",
            f"- command: `{config.as_command()}`",
            f"- machine: {machine_line(self.machine)}",
            f"- timed: {WHAT_IS_TIMED}; {_schedule(config)}",
            f"- photos: {len(self.images)}; agreement: equal argmax pixels against our torch fp32 on them",
            *(f"- {_model_line(m)}" for m in self.models),
            "",
            "| " + " | ".join(self._header()) + " |",
            "|---|---|" + "---:|" * (len(self._header()) - 2),
        ]
        lines += ["| " + " | ".join(_escape(cell) for cell in self._row(r)) + " |" for r in self.results]
        if self.skipped:
            lines += ["", "Not measured:", ""] + [f"- {line}" for line in self.not_measured()]
        notes = self.notes + [f"{r.model}, {r.variant}: {n}" for r in self._first_batch() for n in r.notes]
        if notes:
            lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
        return "\n".join(lines) + "\n"

    def write_markdown(self, path: str | os.PathLike[str]) -> Path:
        with atomic_open(path) as stream:
            stream.write(self.markdown())
        return Path(path)

    # --- terminal ----------------------------------------------------------------------------------------------

    def table(self) -> Any:
        """A rich Table of every result; the baseline's rows are bold. `not_measured()` lists what is missing."""
        from rich.markup import escape
        from rich.table import Table

        title = escape(f"peopleseg benchmark: {WHAT_IS_TIMED}")
        caption = escape(f"{_schedule(self.config)}. {machine_line(self.machine)}.")
        table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
        for index, column in enumerate(self._header()):
            table.add_column(column, justify="left" if index < 2 else "right")
        for result in self.results:
            style = "bold" if result.is_baseline else None
            table.add_row(*(escape(cell) for cell in self._row(result)), style=style)
        return table

    def not_measured(self) -> list[str]:
        """One line per variant that did not run: skipped (unavailable here) or failed, with the reason."""
        return [f"{s.model}, {s.variant}: {'FAILED' if s.failed else 'skipped'}: {s.reason}" for s in self.skipped]

    def summary(self) -> str:
        """One line for the end of a run."""
        measured = len({(r.model, r.variant) for r in self.results})
        parts = [f"benchmarked {measured} variant(s) of {len(self.models)} model(s) in {self.elapsed_s:.0f} s"]
        best = max(self.results, key=lambda r: r.images_per_s, default=None)
        if best is not None:
            ratio = f", {best.speedup:.2f}x {best.baseline}" if best.speedup is not None else ""
            parts.append(f"fastest: {best.variant} at batch {best.batch}, {best.images_per_s:.2f} images/s{ratio}")
        unavailable = [s for s in self.skipped if not s.failed]
        if unavailable:
            parts.append(f"skipped: {', '.join(sorted({s.variant for s in unavailable}))}")
        if self.failed:
            parts.append(f"FAILED: {', '.join(sorted({s.variant for s in self.failed}))}")
        return "; ".join(parts)

    # --- shared ------------------------------------------------------------------------------------------------

    def _header(self) -> list[str]:
        header = ["model", "variant", "batch", "median ms", "p90 ms", "images/s", "x baseline", "peak RSS MB"]
        header += ["RSS +MB in calls"]
        if any(r.cuda_max_allocated_mb is not None for r in self.results):
            header += ["CUDA max MB"]
        return [*header, "agreement"]

    def _row(self, result: VariantStats) -> list[str]:
        variant = result.variant + (" (baseline)" if result.is_baseline else "")
        cells = [
            result.model,
            variant,
            str(result.batch),
            f"{result.median_ms:.1f}",
            f"{result.p90_ms:.1f}",
            f"{result.images_per_s:.2f}",
            _ratio(result.speedup),
            f"{result.peak_rss_mb:.0f}",
            f"{result.rss_growth_mb:.0f}",
        ]
        if "CUDA max MB" in self._header():
            cuda = result.cuda_max_allocated_mb
            cells.append(f"{cuda:.0f}" if cuda is not None else "n/a")
        cells.append(f"{100 * result.agreement:.2f}%" if result.agreement is not None else "n/a")
        return cells

    def _first_batch(self) -> list[VariantStats]:
        return [r for r in self.results if r.batch == self.config.batch_sizes[0]]


def _schedule(config: BenchmarkConfig) -> str:
    threads = f"{config.threads} thread{'s' if config.threads != 1 else ''}" if config.threads else "default threads"
    return (
        f"{config.warmup} warm-up call(s), then {config.rounds} interleaved round(s) of {config.calls_per_round} "
        f"call(s) per variant, {config.device}, {threads}; ratios against the baseline in the same run"
    )


def _model_line(model: ModelRun) -> str:
    height, width = model.input_size
    weights = "random weights" if model.random_weights else "trained weights"
    about = VARIANT_ABOUT[model.baseline]
    return f"model {model.spec}: {model.arch} at {width}x{height}, {weights}; baseline {model.baseline} ({about})"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _finite(value: Any) -> Any:
    """NaN and infinity become None, so the JSON stays standard (and `allow_nan=False` holds)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
