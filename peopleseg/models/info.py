"""What travels with a model's weights: architecture, classes, normalisation and input size.

Normalisation belongs to the model (DESIGN.md): it is saved beside the weights, written into ONNX metadata and the
DeepStream config, and never hard-coded in a pipeline. Mean and std are always on the 0-255 scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from peopleseg.errors import ModelError
from peopleseg.resize_policy import POLICIES

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# NVIDIA's deployable PeopleSemSegFormer: mean 0.5, std 0.5 on 0-1, i.e. net-scale-factor 1/127.5, offsets 127.5.
HALF_MEAN = (127.5, 127.5, 127.5)
HALF_STD = (127.5, 127.5, 127.5)

# 2 added `resize`. A file is written at the lowest version that holds it, so a model that stretches stays readable
# by older peopleseg, and one that letterboxes gets their clear "newer format" error, not an unknown key.
FORMAT_VERSION = 2


@dataclass
class ModelInfo:
    arch: str
    classes: list[str] = field(default_factory=lambda: ["background", "person"])
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int] = (512, 512)  # (height, width) the network is fed
    # How an image meets `input_size` by default at inference: "resize" (stretched, as TAO trains) or "letterbox"
    # (aspect ratio kept, padded), the one that matches how the model was trained. Segmenter(resize=...) overrides.
    resize: str = "resize"
    # Architecture settings that differ from the registry defaults (e.g. norm_eps of a converted HF model).
    arch_options: dict[str, Any] = field(default_factory=dict)
    # Free text for humans: where the weights came from, what they were trained on.
    description: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["input_size"] = list(self.input_size)
        if self.resize == "resize":
            del data["resize"]
            data["format_version"] = 1
        else:
            data["format_version"] = 2
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model metadata") -> ModelInfo:
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{source}: unknown metadata key '{unknown[0]}'")
        if "arch" not in data:
            raise ModelError(f"{source}: metadata has no 'arch'")
        version = int(data.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise ModelError(f"{source}: format_version {version} is newer than this peopleseg understands")
        info = cls(**data)
        info.format_version = FORMAT_VERSION  # read and understood: in memory, every model is the current format
        info.mean = _triple(info.mean, "mean", source)
        info.std = _triple(info.std, "std", source)
        if any(value <= 0 for value in info.std):
            raise ModelError(f"{source}: 'std' must be positive, got {list(info.std)}")
        size = tuple(int(v) for v in info.input_size)
        if len(size) != 2 or min(size) <= 0 or size[0] % 32 or size[1] % 32:
            raise ModelError(f"{source}: 'input_size' must be [height, width], multiples of 32, got {info.input_size}")
        info.input_size = size  # type: ignore[assignment]
        if info.resize not in POLICIES:
            raise ModelError(f"{source}: 'resize' must be one of {', '.join(POLICIES)}, got {info.resize!r}")
        # A string is a sequence too: "person" would become six one-letter classes.
        if not isinstance(info.classes, (list, tuple)):
            raise ModelError(f"{source}: 'classes' must be a list of names, got {info.classes!r}")
        info.classes = list(info.classes)
        if not all(isinstance(name, str) and name.strip() for name in info.classes):
            raise ModelError(f"{source}: 'classes' must be non-empty strings, got {info.classes!r}")
        if len(set(info.classes)) != len(info.classes):
            raise ModelError(f"{source}: 'classes' has a name twice, got {info.classes}")
        if len(info.classes) < 2:
            raise ModelError(f"{source}: 'classes' needs at least 2 names, got {info.classes}")
        return info


def _triple(values: Any, name: str, source: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ModelError(f"{source}: '{name}' must be 3 numbers, got {values!r}") from None
    if len(triple) != 3:
        raise ModelError(f"{source}: '{name}' must be 3 numbers, got {values!r}")
    return triple  # type: ignore[return-value]
