"""Model names and their builders: `segformer_b0` … `segformer_b5`, `segformer_fan_{tiny,small,base,large}_hybrid`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from peopleseg.errors import ModelError
from peopleseg.models.info import ModelInfo
from peopleseg.models.segformer import SegFormer


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # "mit" or "fan_hybrid"
    variant: str
    decoder_dim: int
    # Published parameter counts, in millions: SegFormer paper (150-class ADE20K head) for MiT,
    # NVlabs FAN ImageNet classifiers for FAN-Hybrid encoders.
    published_params_m: float
    summary: str


_ENTRIES = [
    ModelEntry("segformer_b0", "mit", "b0", 256, 3.8, "MiT-B0: smallest and fastest"),
    ModelEntry("segformer_b1", "mit", "b1", 256, 13.7, "MiT-B1"),
    ModelEntry("segformer_b2", "mit", "b2", 768, 27.5, "MiT-B2: a good speed/accuracy balance"),
    ModelEntry("segformer_b3", "mit", "b3", 768, 47.3, "MiT-B3"),
    ModelEntry("segformer_b4", "mit", "b4", 768, 64.1, "MiT-B4"),
    ModelEntry("segformer_b5", "mit", "b5", 768, 84.7, "MiT-B5: largest MiT"),
    ModelEntry("segformer_fan_tiny_hybrid", "fan_hybrid", "tiny", 768, 7.4, "FAN-Tiny-Hybrid"),
    ModelEntry("segformer_fan_small_hybrid", "fan_hybrid", "small", 768, 26.3, "FAN-Small-Hybrid"),
    ModelEntry(
        "segformer_fan_base_hybrid", "fan_hybrid", "base", 768, 50.4, "FAN-Base-Hybrid: NVIDIA PeopleSemSegFormer's"
    ),
    ModelEntry("segformer_fan_large_hybrid", "fan_hybrid", "large", 768, 76.8, "FAN-Large-Hybrid"),
]
REGISTRY: dict[str, ModelEntry] = {entry.name: entry for entry in _ENTRIES}

# Options that belong to the decoder rather than the encoder config.
_HEAD_OPTIONS = {"decoder_dim", "dropout"}


def list_models() -> list[ModelEntry]:
    return list(_ENTRIES)


def get_entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model '{name}'; known: {', '.join(REGISTRY)}") from None


def encoder_config(entry: ModelEntry) -> Any:
    if entry.family == "mit":
        from peopleseg.models.mit import MIT_VARIANTS

        return MIT_VARIANTS[entry.variant]
    from peopleseg.models.fan import FAN_HYBRID_VARIANTS

    return FAN_HYBRID_VARIANTS[entry.variant]


def build_encoder(entry: ModelEntry, options: dict[str, Any]) -> nn.Module:
    config = encoder_config(entry)
    known = {f.name for f in dataclasses.fields(config)}
    for key in options:
        if key not in known:
            raise ModelError(f"model '{entry.name}': unknown option '{key}'; known: {', '.join(sorted(known))}")
    config = dataclasses.replace(config, **options)
    if entry.family == "mit":
        from peopleseg.models.mit import MixVisionTransformer

        return MixVisionTransformer(config)
    from peopleseg.models.fan import FANHybridEncoder

    return FANHybridEncoder(config)


def build_model(name: str, info: ModelInfo | None = None, num_classes: int | None = None, **options: Any) -> SegFormer:
    """Build a randomly initialised model by registry name.

    `info` carries the classes and normalisation (default: background/person, ImageNet statistics);
    `num_classes` is a shortcut for generic class names; other keyword options override the encoder config
    (e.g. `drop_path_rate=0.0`) or the decoder (`decoder_dim`, `dropout`) and are recorded in `info.arch_options`.
    """
    entry = get_entry(name)
    info = dataclasses.replace(info) if info is not None else ModelInfo(arch=name)
    if info.arch != name:
        raise ModelError(f"model info names arch '{info.arch}' but '{name}' was asked for")
    if num_classes is not None:
        if num_classes < 2:
            raise ModelError(f"num_classes must be at least 2, got {num_classes}")
        if num_classes != info.num_classes:
            info.classes = ["background", "person"] if num_classes == 2 else [f"class_{i}" for i in range(num_classes)]
    merged = {**info.arch_options, **options}
    info.arch_options = merged
    head_options = {k: v for k, v in merged.items() if k in _HEAD_OPTIONS}
    encoder_options = {k: v for k, v in merged.items() if k not in _HEAD_OPTIONS}
    encoder = build_encoder(entry, encoder_options)
    return SegFormer(
        encoder,
        decoder_dim=int(head_options.get("decoder_dim", entry.decoder_dim)),
        info=info,
        dropout=float(head_options.get("dropout", 0.1)),
    )
