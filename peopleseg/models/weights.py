"""Weights in and out: our safetensors format, and loading any supported checkpoint into a ready model.

Our format is one `.safetensors` file whose header metadata holds the `ModelInfo` as JSON, plus the same JSON in a
`.json` sidecar for humans and tools. Weights never come from the network: a name builds a fresh model, a path loads.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peopleseg.atomic import atomic_open, atomic_path
from peopleseg.errors import ModelError
from peopleseg.models.convert import LoadReport, StateDict, detect_and_convert, unwrap_checkpoint
from peopleseg.models.info import ModelInfo
from peopleseg.models.registry import REGISTRY, build_model, encoder_config
from peopleseg.models.segformer import SegFormer

METADATA_KEY = "peopleseg"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tlt", ".ckpt", ".bin")


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor in `state` that holds NaN or infinity, or None: such weights are never
    saved (a diverged training run must not leave them as its result)."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return key
    return None


def save_model(model: SegFormer, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `model` to `path` (.safetensors) and its metadata to the `.json` sidecar, both atomically.

    `dtype=torch.float16` halves the file (for bundling); floating tensors are cast, integer buffers kept.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"{path}: weights are saved as .safetensors")
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        raise ModelError(f"{path}: not saved, the model's {bad} holds NaN or infinite values")
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous()
    meta = json.dumps(model.info.to_dict(), sort_keys=True)
    with atomic_path(path) as temp:
        save_file(state, str(temp), metadata={METADATA_KEY: meta})
    with atomic_open(path.with_suffix(".json")) as stream:
        stream.write(json.dumps(model.info.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_info(path: str | Path) -> ModelInfo | None:
    """The ModelInfo stored in a peopleseg .safetensors file, or None for a foreign safetensors file."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            header_size = int.from_bytes(stream.read(8), "little")
            if header_size <= 0 or header_size > 100_000_000:
                raise ModelError(f"{path}: not a safetensors file (bad header)")
            header = json.loads(stream.read(header_size))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc.__class__.__name__})") from None
    meta = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if meta is None:
        return None
    try:
        return ModelInfo.from_dict(json.loads(meta), source=str(path))
    except json.JSONDecodeError:
        raise ModelError(f"{path}: the peopleseg metadata is not valid JSON") from None


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    strict: bool = True,
    backbone_only: bool = False,
    allow_pickle: bool = False,
    info_overrides: dict[str, Any] | None = None,
) -> SegFormer:
    """Build a registry model by name (random weights), load the bundled model ("default"), or load weights from a
    path, in eval mode.

    Paths may be our .safetensors, an HF transformers folder or file, or an NVlabs/mmseg/TAO .pth/.tlt/.ckpt.
    `info_overrides` sets ModelInfo fields a foreign checkpoint cannot carry, e.g. `{"mean": …, "std": …}`.
    With `strict` (the default) any missing or unexpected key is an error naming them.
    """
    model, _ = load_model_with_report(
        name_or_path,
        strict=strict,
        backbone_only=backbone_only,
        allow_pickle=allow_pickle,
        info_overrides=info_overrides,
    )
    return model.to(device)


def load_model_with_report(
    name_or_path: str | Path,
    *,
    strict: bool = True,
    backbone_only: bool = False,
    allow_pickle: bool = False,
    info_overrides: dict[str, Any] | None = None,
) -> tuple[SegFormer, LoadReport | None]:
    """`load_model`, also returning what the load found (None for a registry name). The model is in eval mode."""
    model, report = _load(name_or_path, strict, backbone_only, allow_pickle, info_overrides)
    if report is not None and not report.clean:
        warnings.warn(report.summary(), stacklevel=2)
    return model.eval(), report


def _load(
    name_or_path: str | Path,
    strict: bool,
    backbone_only: bool,
    allow_pickle: bool,
    info_overrides: dict[str, Any] | None,
) -> tuple[SegFormer, LoadReport | None]:
    text = str(name_or_path)
    if text == "default" and not Path(text).exists():  # the bundled model, as everywhere a model is named
        from peopleseg.assets import default_weights_path

        weights = default_weights_path()
        if weights is None:
            raise ModelError("default: this install bundles no default model; name a model or a weights file")
        text = str(weights)
    if text in REGISTRY and not Path(text).exists():
        info = ModelInfo(arch=text)
        if info_overrides:
            info = ModelInfo.from_dict({**info.to_dict(), **info_overrides}, source="info_overrides")
        return build_model(text, info=info), None
    path = Path(text)
    if not path.exists():
        known = ", ".join(REGISTRY)
        raise ModelError(f"{path}: no such file, and not a model name (known: {known})")
    if path.is_dir():
        return _load_hf_folder(path, strict, backbone_only, info_overrides)
    if path.suffix == ".safetensors":
        info = read_info(path)
        state = _read_safetensors(path)
        if info is not None:
            if info_overrides:
                info = ModelInfo.from_dict({**info.to_dict(), **info_overrides}, source=str(path))
            model = build_model(info.arch, info=info)
            report = _apply(model, state, LoadReport(str(path), "peopleseg"), strict, backbone_only)
            return model, report
        return _load_foreign(path, state, _hints_beside(path), strict, backbone_only, info_overrides)
    if path.suffix in CHECKPOINT_SUFFIXES:
        state = _read_torch_checkpoint(path, allow_pickle)
        hints = _hints_beside(path) if path.suffix == ".bin" else None
        return _load_foreign(path, state, hints, strict, backbone_only, info_overrides)
    raise ModelError(
        f"{path}: unknown weights format '{path.suffix}' (use .safetensors, .pth, .pt, .tlt, .ckpt or .bin)"
    )


def _read_safetensors(path: Path) -> StateDict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read safetensors weights ({exc})") from None


def _read_torch_checkpoint(path: Path, allow_pickle: bool) -> StateDict:
    with open(path, "rb") as stream:
        head = stream.read(4)
    # torch.save writes a zip archive; old-style checkpoints start with a pickle protocol byte (0x80). Anything else
    # (TAO's encrypted .tlt/.etlt among them) is not a checkpoint torch can read.
    if not head.startswith((b"PK", b"\x80")):
        raise ModelError(
            f"{path}: not a PyTorch checkpoint; it looks encrypted (an encrypted TAO .tlt needs its key): "
            "decrypt it with TAO first, or load the unencrypted .pth"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as exc:  # torch raises many types for a bad archive or a forbidden pickle global
        if not allow_pickle and "weights_only" in str(exc):
            raise ModelError(
                f"{path}: the checkpoint holds pickled Python objects besides tensors; "
                "only if you trust its source, pass allow_pickle=True, or convert it once to safetensors with "
                f"`peopleseg convert {path} -o model.safetensors --allow-pickle`"
            ) from None
        raise ModelError(f"{path}: cannot read the checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    return unwrap_checkpoint(obj, str(path))


def _load_hf_folder(
    folder: Path, strict: bool, backbone_only: bool, overrides: dict[str, Any] | None
) -> tuple[SegFormer, LoadReport]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        weights = folder / name
        if weights.exists():
            break
    else:
        raise ModelError(f"{folder}: a model folder needs model.safetensors or pytorch_model.bin")
    state = _read_safetensors(weights) if weights.suffix == ".safetensors" else _read_torch_checkpoint(weights, False)
    return _load_foreign(weights, state, _hf_hints(folder), strict, backbone_only, overrides)


def _hf_hints(folder: Path) -> dict[str, Any]:
    """Class names (config.json's id2label) and normalisation (preprocessor_config.json) of an HF model folder."""
    hints: dict[str, Any] = {}
    config_path = folder / "config.json"
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{config_path}: unreadable config ({exc})") from None
        labels = config.get("id2label") if isinstance(config, dict) else None
        if isinstance(labels, dict) and labels:
            names = [str(labels[k]) for k in sorted(labels, key=int)]
            if len(set(names)) == len(names):  # ImageNet's id2label names "crane" twice: such names say nothing here
                hints["classes"] = names
    processor = folder / "preprocessor_config.json"
    if processor.exists():
        try:
            prep = json.loads(processor.read_text())
            scale = 255.0
            hints["mean"] = [float(v) * scale for v in prep["image_mean"]]
            hints["std"] = [float(v) * scale for v in prep["image_std"]]
        except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
            pass  # no usable statistics: keep the default
    return hints


def _hints_beside(path: Path) -> dict[str, Any] | None:
    """An HF weights file named directly gets the same class names and normalisation as its folder would."""
    if (path.parent / "config.json").exists() or (path.parent / "preprocessor_config.json").exists():
        return _hf_hints(path.parent)
    return None


def _load_foreign(
    path: Path,
    state: StateDict,
    hints: dict[str, Any] | None,
    strict: bool,
    backbone_only: bool,
    overrides: dict[str, Any] | None,
) -> tuple[SegFormer, LoadReport]:
    fmt, converted, ignored = detect_and_convert(state, backbone_only)
    arch, options = infer_architecture(converted, str(path))
    if fmt == "HF transformers":
        options["norm_eps"] = 1e-5  # HF's LayerNorms use PyTorch's default eps
    data: dict[str, Any] = {"arch": arch, "arch_options": options, "description": f"converted from {path.name}"}
    num_classes = options.pop("num_classes", None)
    if num_classes is not None and num_classes != 2:
        data["classes"] = [f"class_{i}" for i in range(num_classes)]
    hints = dict(hints or {})
    if num_classes is None:
        hints.pop("classes", None)  # an encoder alone (an ImageNet MiT): its classifier's labels name no head here
    data.update(hints)
    data.update(overrides or {})
    info = ModelInfo.from_dict({**ModelInfo(arch=arch).to_dict(), **data}, source=str(path))
    if num_classes is not None and info.num_classes != num_classes:
        raise ModelError(f"{path}: the checkpoint has {num_classes} classes but {info.num_classes} names were given")
    model = build_model(arch, info=info)
    report = LoadReport(str(path), fmt, ignored=ignored)
    return model, _apply(model, converted, report, strict, backbone_only)


def infer_architecture(state: StateDict, source: str) -> tuple[str, dict[str, Any]]:
    """Name the registry model whose encoder matches the tensor shapes, plus head options read from the shapes."""
    options: dict[str, Any] = {}
    if "decode_head.linear_c1.proj.weight" in state:
        options["decoder_dim"] = int(state["decode_head.linear_c1.proj.weight"].shape[0])
    if "decode_head.linear_pred.weight" in state:
        options["num_classes"] = int(state["decode_head.linear_pred.weight"].shape[0])
    if "backbone.patch_embed1.proj.weight" in state:
        lost = [i for i in range(2, 5) if f"backbone.patch_embed{i}.proj.weight" not in state]
        if lost:
            raise ModelError(f"{source}: the encoder is incomplete (no patch embedding for stage {lost[0]})")
        dims = tuple(int(state[f"backbone.patch_embed{i}.proj.weight"].shape[0]) for i in range(1, 5))
        depths = tuple(_count_blocks(state, rf"^backbone\.block{i}\.(\d+)\.") for i in range(1, 5))
        family, signature = "mit", (dims, depths)
    elif "backbone.patch_embed.proj.weight" in state:
        dim = int(state["backbone.patch_embed.proj.weight"].shape[0])
        family, signature = "fan_hybrid", (dim, _count_blocks(state, r"^backbone\.blocks\.(\d+)\."))
    else:
        raise ModelError(f"{source}: no SegFormer encoder found (neither MiT patch_embed1 nor FAN patch_embed keys)")
    for entry in REGISTRY.values():
        if entry.family != family:
            continue
        config = encoder_config(entry)
        known = (
            (tuple(config.embed_dims), tuple(config.depths)) if family == "mit" else (config.embed_dim, config.depth)
        )
        if known == signature:
            if options.get("decoder_dim") == entry.decoder_dim:
                options.pop("decoder_dim")
            return entry.name, options
    raise ModelError(f"{source}: encoder shape {signature} matches no known {family} model")


def _count_blocks(state: StateDict, pattern: str) -> int:
    indices = {int(m[1]) for key in state if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def _apply(model: SegFormer, state: StateDict, report: LoadReport, strict: bool, backbone_only: bool) -> LoadReport:
    expected = model.state_dict()
    if backbone_only:
        expected = {k: v for k, v in expected.items() if k.startswith("backbone.")}
        report.ignored += [k for k in state if not k.startswith("backbone.")]
        state = {k: v for k, v in state.items() if k.startswith("backbone.")}
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    report.ignored += [k for k in state if k.endswith("num_batches_tracked")]
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    report.missing = sorted(set(expected) - set(state))
    report.unexpected = sorted(set(state) - set(expected))
    for key in sorted(set(expected) & set(state)):
        if tuple(expected[key].shape) != tuple(state[key].shape):
            raise ModelError(
                f"{report.source}: '{key}' has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    if strict and not report.clean:
        raise ModelError(report.summary())
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items() if k in expected}, strict=False)
    return report
