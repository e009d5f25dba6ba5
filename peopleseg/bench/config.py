"""`BenchmarkConfig`: what `peopleseg benchmark` measures. Every field is checked up front; a bad value is a
`ConfigError` that names the field, before any model is loaded or exported."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peopleseg.data.image_io import IMAGE_SUFFIXES
from peopleseg.errors import ConfigError
from peopleseg.resize_policy import CHOICES

# The variants, in the order they are run and shown.
VARIANTS = ("hf", "torch", "torch-compile", "ort", "ort-int8", "ort-fp16", "fast-fp32", "fast", "tensorrt")
VARIANT_ABOUT = {
    "hf": "HF transformers SegformerForSemanticSegmentation, eager fp32",
    "torch": "peopleseg torch eager fp32 (decoder folded)",
    "torch-compile": "peopleseg torch fp32, torch.compile",
    "ort": "onnxruntime fp32",
    "ort-int8": "onnxruntime INT8 (static QDQ, calibrated on the benchmark images)",
    "ort-fp16": "onnxruntime FP16 (float32 I/O)",
    "fast-fp32": "the fast CPU path in fp32: lean graph (decoder folded, layout rewritten), onnxruntime",
    "fast": "the default on CPU: the lean graph with INT8 weights, dynamic activations, cascaded decoder, onnxruntime",
    "tensorrt": "TensorRT FP16 engine",
}
DEFAULT_VARIANTS = ("hf", "torch", "ort", "ort-int8", "fast")
DEVICES = ("cpu", "cuda")
# The repository's own photos, found only in a source checkout: an installed package has no tests/ folder.
REPO_TEST_IMAGES = Path(__file__).resolve().parents[2] / "tests" / "data"


@dataclass
class BenchmarkConfig:
    """What to measure. `models`: "default" (the bundled model), registry names (random weights, seeded) or weights
    paths. `baseline`: "auto" (HF eager when transformers is installed and mirrors the architecture, else "torch"),
    or a variant name; it is measured in the same run even when `variants` leaves it out."""

    models: tuple[str, ...] = ("default",)
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    baseline: str = "auto"
    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1,)
    input_size: tuple[int, int] | None = None  # (height, width), multiples of 32; None keeps the model's own
    threads: int | None = None  # CPU threads for torch and onnxruntime; None leaves the libraries' defaults
    rounds: int = 5  # interleaved rounds: in each, every variant runs `calls_per_round` timed calls in turn
    calls_per_round: int = 3
    warmup: int = 2  # untimed calls per variant and batch size first (torch.compile compiles here)
    images: tuple[str, ...] = ()  # files or folders of real photos; empty: the repository's tests/data, if present
    max_images: int = 32  # at most this many, evenly spaced over the sorted list
    resize: str = "auto"  # the Segmenter's resolution policy
    seed: int = 0  # for models built with random weights
    progress: bool = True

    def __post_init__(self) -> None:
        # Lists from YAML, JSON or a caller become tuples, so the config stays hashable-looking and printable.
        for name in ("models", "variants", "batch_sizes", "images"):
            value = getattr(self, name)
            if isinstance(value, (str, int)):
                value = (value,)
            setattr(self, name, tuple(value))
        if self.input_size is not None:
            self.input_size = parse_input_size(self.input_size)
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field that is out of range."""
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise ConfigError(f"models: give at least one model name or path, got {list(self.models)}")
        if not self.variants:
            raise ConfigError("variants: give at least one variant")
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ConfigError(f"variants: unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")
        if len(set(self.variants)) != len(self.variants):
            raise ConfigError(f"variants: each variant once, got {', '.join(self.variants)}")
        if self.baseline != "auto" and self.baseline not in VARIANTS:
            raise ConfigError(f"baseline: unknown variant '{self.baseline}'; use auto or one of {', '.join(VARIANTS)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be cpu, cuda or cuda:N, got '{self.device}'")
        if not self.batch_sizes:
            raise ConfigError("batch_sizes: give at least one batch size")
        for batch in self.batch_sizes:
            if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
                raise ConfigError(f"batch_sizes: each must be a positive integer, got {batch!r}")
        positive = {"rounds": self.rounds, "calls_per_round": self.calls_per_round, "max_images": self.max_images}
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ConfigError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.resize not in CHOICES:
            raise ConfigError(f"resize must be one of {', '.join(CHOICES)}, got '{self.resize}'")

    def image_paths(self) -> list[Path]:
        """The benchmark photos: `images` (files and folders, recursively), or tests/data in a source checkout."""
        sources = [Path(p) for p in self.images]
        if not sources:
            if not REPO_TEST_IMAGES.is_dir():
                raise ConfigError(
                    "images: none given, and there is no tests/data folder beside the package to fall back on; "
                    "pass --images with real photos (agreement between variants is measured on them)"
                )
            sources = [REPO_TEST_IMAGES]
        found: list[Path] = []
        for source in sources:
            if source.is_dir():
                found += sorted(
                    (p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda p: p.relative_to(source).as_posix(),
                )
            elif source.is_file():
                if source.suffix.lower() not in IMAGE_SUFFIXES:
                    raise ConfigError(f"images: {source} is not an image ({', '.join(IMAGE_SUFFIXES)})")
                found.append(source)
            else:
                raise ConfigError(f"images: {source}: no such file or folder")
        found = list(dict.fromkeys(found))
        if not found:
            raise ConfigError(f"images: no images in {', '.join(str(s) for s in sources)}")
        if len(found) > self.max_images:
            # Evenly spaced over the sorted list, so sub-folders (scenes) stay represented in proportion.
            found = [found[i * len(found) // self.max_images] for i in range(self.max_images)]
        return found

    def as_command(self) -> str:
        """The `peopleseg benchmark` command line that measures this config (for reports: how to rerun it)."""
        args = ["peopleseg", "benchmark"]
        for model in self.models:
            args += ["-m", model]
        args += ["--variants", ",".join(self.variants), "--baseline", self.baseline, "--device", self.device]
        args += ["--batch", ",".join(str(b) for b in self.batch_sizes)]
        if self.input_size is not None:
            args += ["--input-size", f"{self.input_size[1]}x{self.input_size[0]}"]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        args += ["--rounds", str(self.rounds), "--calls", str(self.calls_per_round), "--warmup", str(self.warmup)]
        if self.images:
            args += ["--images", *self.images]
        if self.max_images != BenchmarkConfig.max_images:
            args += ["--max-images", str(self.max_images)]
        if self.resize != "auto":
            args += ["--resize", self.resize]
        if self.seed:
            args += ["--seed", str(self.seed)]
        return shlex.join(args)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("models", "variants", "batch_sizes", "images"):
            data[name] = list(data[name])
        data["input_size"] = list(self.input_size) if self.input_size else None
        return data


def parse_input_size(value: Any) -> tuple[int, int]:
    """512, "512", "512x384" (width x height, as image sizes are written) or (height, width) → (height, width)."""
    if isinstance(value, str):
        parts = value.lower().split("x")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"input_size must be N or WxH, got '{value}'") from None
        if len(numbers) == 1:
            size = (numbers[0], numbers[0])
        elif len(numbers) == 2:
            size = (numbers[1], numbers[0])
        else:
            raise ConfigError(f"input_size must be N or WxH, got '{value}'")
    elif isinstance(value, int) and not isinstance(value, bool):
        size = (value, value)
    else:
        try:
            height, width = (int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"input_size must be N, WxH or (height, width), got {value!r}") from None
        size = (height, width)
    if min(size) <= 0 or size[0] % 32 or size[1] % 32:
        raise ConfigError(f"input_size must be positive multiples of 32, got {size[1]}x{size[0]} (WxH)")
    return size
