"""Export a SegFormer to ONNX in the TAO/DeepStream layout, checked against eager PyTorch on every export.

- input `input`: float32 [N, 3, H, W], normalised outside the graph (as TAO does) unless `normalize_in_graph`,
  when it takes RGB on the 0-255 scale;
- output `output`, by `output_kind`: `argmax` int64 class ids [N, 1, H, W] (like NVIDIA's deployable
  PeopleSemSegFormer), `logits` [N, C, H/4, W/4] (DeepStream's NvDsInferParseCustomSegformerTAO2 parser) or
  `probs` float [N, C, H, W] (upsampled softmax);
- a dynamic batch axis (and optionally dynamic H and W); the model's `ModelInfo`, the output kind and the
  normalisation in the ONNX metadata; `onnx.checker`, then onnxslim (when installed) for a lean graph.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peopleseg.atomic import atomic_path
from peopleseg.errors import ConfigError, ModelError
from peopleseg.models.fold import fold_decoder
from peopleseg.models.lean import lean_network
from peopleseg.models.segformer import SegFormer

OUTPUT_KINDS = ("argmax", "logits", "probs")
# 14 is the floor: the attention's scaled_dot_product_attention exports from opset 14 on.
SUPPORTED_OPSETS = range(14, 21)


@dataclass
class OnnxExportResult:
    path: Path
    output_kind: str
    max_abs_diff: float  # onnxruntime against eager torch; NaN when not checked
    argmax_agreement: float  # fraction of equal class ids; NaN when not checked
    slimmed: bool = False


class ExportWrapper(nn.Module):
    """The graph that gets exported: optional normalisation, the SegFormer, then the requested output."""

    def __init__(self, model: SegFormer, output_kind: str = "logits", normalize_in_graph: bool = False) -> None:
        super().__init__()
        if output_kind not in OUTPUT_KINDS:
            raise ConfigError(f"unknown output kind '{output_kind}'; choose from {', '.join(OUTPUT_KINDS)}")
        self.model, self.output_kind, self.normalize_in_graph = model, output_kind, normalize_in_graph
        self.register_buffer("mean", torch.tensor(model.info.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.info.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.normalize_in_graph:
            pixels = (pixels - self.mean) / self.std
        logits = self.model(pixels)
        if self.output_kind == "logits":
            return logits
        scores = F.interpolate(logits, size=pixels.shape[2:], mode="bilinear", align_corners=False)
        if self.output_kind == "probs":
            return scores.softmax(dim=1)
        return scores.argmax(dim=1, keepdim=True)


def export_onnx(
    model: SegFormer,
    path: str | Path,
    batch: int = 1,
    opset: int = 17,
    check: bool = True,
    check_batch: int = 2,
    output_kind: str = "logits",
    normalize_in_graph: bool = False,
    dynamic_hw: bool = False,
    slim: bool = True,
    fold: bool = True,
    lean: bool = False,
    cascade_upsampling: bool = False,
) -> OnnxExportResult:
    """Write `path` atomically; with `check`, compare onnxruntime against torch on a random batch of `check_batch`.

    `fold` exports the decoder folded (`models/fold.py`): the same outputs for about half of B0's compute. The
    parity check always compares with the unfolded model, so it proves the fold on every export. `lean` also
    rewrites the encoder's layout for onnxruntime on CPU (`models/lean.py`; it implies `fold`), and with it
    `cascade_upsampling` sums the decoder's stages coarse to fine: faster, not exact (the parity check shows by how
    much).
    """
    try:
        import onnx  # noqa: F401  (checked here, before any work; used in _export)
    except ImportError:
        raise ModelError("ONNX export needs onnx: pip install onnx onnxruntime") from None
    check_opset(opset)
    path = Path(path)
    if cascade_upsampling and not lean:
        raise ConfigError("cascade_upsampling rewrites the lean graph's decoder: it needs lean=True")
    # The caller's model is exported on the CPU in eval mode, then given back on its own device and in its own mode.
    training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        return _export(
            model, path, batch, opset, check, check_batch, output_kind, normalize_in_graph, dynamic_hw, slim,
            fold, lean, cascade_upsampling,
        )  # fmt: skip
    finally:
        model.train(training).to(device)


def check_opset(opset: object) -> int:
    """`opset` when the exporter supports it, else a one-line ConfigError."""
    if not isinstance(opset, int) or isinstance(opset, bool) or opset not in SUPPORTED_OPSETS:
        low, high = SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1
        raise ConfigError(f"opset {opset} is not supported; use {low}-{high} (the attention needs opset 14 or later)")
    return opset


def _export(
    model: SegFormer,
    path: Path,
    batch: int,
    opset: int,
    check: bool,
    check_batch: int,
    output_kind: str,
    normalize_in_graph: bool,
    dynamic_hw: bool,
    slim: bool,
    fold: bool,
    lean: bool,
    cascade_upsampling: bool,
) -> OnnxExportResult:
    import onnx

    if lean:
        network = lean_network(model.eval().cpu(), cascade_upsampling=cascade_upsampling)
    else:
        network = fold_decoder(model.eval().cpu()) if fold else model.eval().cpu()
    wrapper = ExportWrapper(network, output_kind, normalize_in_graph).eval()  # type: ignore[arg-type]
    height, width = model.info.input_size
    example = _example(batch, height, width, normalize_in_graph)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    slimmed = False
    try:
        with atomic_path(path) as temp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not the user's concern
            # The TorchScript-based exporter writes opset 14-20 directly, which TensorRT and DeepStream take as is.
            torch.onnx.export(
                wrapper,
                (example,),
                str(temp),
                input_names=["input"],
                output_names=["output"],
                opset_version=opset,
                dynamic_axes={"input": axes, "output": axes},
                dynamo=False,
            )
            graph = onnx.load(str(temp))
            _fix_output_dims(graph, wrapper, example, dynamic_hw)
            onnx.checker.check_model(graph)
            if slim:
                graph, slimmed = _slim(graph)
            del graph.metadata_props[:]
            for key, value in _metadata(model, output_kind, normalize_in_graph).items():
                graph.metadata_props.add(key=key, value=value)
            onnx.save(graph, str(temp))
    except OSError as exc:
        raise ModelError(f"{path}: cannot write the ONNX file ({exc.strerror or exc})") from None
    diff = agreement = float("nan")
    if check:
        diff, agreement = check_onnx_parity(model, path, batch=check_batch)
    return OnnxExportResult(path, output_kind, diff, agreement, slimmed)


def _fix_output_dims(graph: object, wrapper: ExportWrapper, example: torch.Tensor, dynamic_hw: bool) -> None:
    """The TorchScript exporter leaves the output's non-batch dims symbolic; TensorRT, DeepStream and Triton want
    them fixed (all but the batch, and H and W when those are dynamic)."""
    with torch.no_grad():
        shape = wrapper(example).shape
    dims = graph.graph.output[0].type.tensor_type.shape.dim  # type: ignore[attr-defined]
    for index, size in enumerate(shape):
        if index == 0 or (dynamic_hw and index >= 2):
            continue
        dims[index].Clear()
        dims[index].dim_value = int(size)


def _example(batch: int, height: int, width: int, normalize_in_graph: bool, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if normalize_in_graph:  # the graph takes RGB on the 0-255 scale
        return torch.rand(batch, 3, height, width, generator=generator) * 255
    return torch.randn(batch, 3, height, width, generator=generator)


def _slim(graph: object) -> tuple[object, bool]:
    """onnxslim folds constants and removes redundant nodes with standard ONNX ops only (TensorRT-friendly)."""
    try:
        import onnxslim
    except ImportError:
        return graph, False
    try:
        return onnxslim.slim(graph), True
    except Exception as exc:  # a slimmer failure must not cost the user the export
        warnings.warn(
            f"onnxslim could not simplify the graph ({exc.__class__.__name__}); keeping it as exported", stacklevel=3
        )
        return graph, False


def _metadata(model: SegFormer, output_kind: str, normalize_in_graph: bool) -> dict[str, str]:
    info = model.info
    return {
        "peopleseg": json.dumps(info.to_dict(), sort_keys=True),
        "arch": info.arch,
        "classes": json.dumps(info.classes),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "input_size": json.dumps(list(info.input_size)),
        "output_kind": output_kind,
        "normalized_in_graph": "true" if normalize_in_graph else "false",
        "precision": "fp32",
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for a bad file
        raise ModelError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None
    return {p.key: p.value for p in graph.metadata_props}


def check_onnx_parity(model: nn.Module, path: str | Path, batch: int = 2, seed: int = 0) -> tuple[float, float]:
    """Run the ONNX file in onnxruntime and the same graph in eager torch on one random batch. `model`: a SegFormer,
    or a rewritten network of one (`models/lean.py`), which has its `info`.

    Returns (max |difference| of the outputs — logits, probabilities or class ids — and the fraction of equal
    argmax pixels). The output kind and normalisation are read from the file's metadata.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("the ONNX parity check needs onnxruntime: pip install onnx onnxruntime") from None
    meta = read_metadata(path)
    kind = meta.get("output_kind", "logits")
    in_graph = meta.get("normalized_in_graph") == "true"
    height, width = model.info.input_size
    pixels = _example(batch, height, width, in_graph, seed + 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["output"], {"input": pixels.numpy()})[0]
    with torch.inference_mode():
        torch_out = ExportWrapper(model.eval().cpu(), kind, in_graph).eval()(pixels).numpy()
    return compare_outputs(onnx_out, torch_out, kind)


def compare_outputs(a: np.ndarray, b: np.ndarray, kind: str) -> tuple[float, float]:
    """(max |a - b| — NaN for class ids, where a difference has no size — and the fraction of equal argmax)."""
    if kind == "argmax":
        return float("nan"), float(np.mean(a == b))
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    return diff, float(np.mean(a.argmax(1) == b.argmax(1)))
