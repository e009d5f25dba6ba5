"""Export a SegFormer to ONNX: input `input` float32 [N, 3, H, W] (normalised outside the graph, as TAO does),
output `output` logits [N, C, H/4, W/4], dynamic batch, the model's metadata in the file.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from peopleseg.atomic import atomic_path
from peopleseg.errors import ModelError
from peopleseg.models.segformer import SegFormer


@dataclass
class OnnxExportResult:
    path: Path
    max_abs_diff: float  # onnxruntime against eager torch on a random batch; NaN when not checked
    argmax_agreement: float  # fraction of equal argmax pixels; NaN when not checked


def export_onnx(
    model: SegFormer, path: str | Path, batch: int = 1, opset: int = 17, check: bool = True, check_batch: int = 2
) -> OnnxExportResult:
    """Write `path` atomically; with `check`, compare onnxruntime against torch on a random batch of `check_batch`."""
    try:
        import onnx
    except ImportError:
        raise ModelError("ONNX export needs the export extra: pip install 'peopleseg[export]'") from None
    path = Path(path)
    model = model.eval().cpu()
    height, width = model.info.input_size
    example = torch.randn(batch, 3, height, width)
    with atomic_path(path) as temp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not the user's concern
        # The TorchScript-based exporter writes opset 17 directly, which TensorRT and DeepStream take as is.
        torch.onnx.export(
            model,
            (example,),
            str(temp),
            input_names=["input"],
            output_names=["output"],
            opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
        graph = onnx.load(str(temp))
        for key, value in _metadata(model).items():
            graph.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(temp))
    diff = agreement = float("nan")
    if check:
        diff, agreement = check_onnx_parity(model, path, batch=check_batch)
    return OnnxExportResult(path, diff, agreement)


def _metadata(model: SegFormer) -> dict[str, str]:
    info = model.info
    return {
        "peopleseg": json.dumps(info.to_dict(), sort_keys=True),
        "arch": info.arch,
        "classes": json.dumps(info.classes),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "input_size": json.dumps(list(info.input_size)),
        "output_kind": "logits",
    }


def check_onnx_parity(model: SegFormer, path: str | Path, batch: int = 2, seed: int = 0) -> tuple[float, float]:
    """Run the ONNX file in onnxruntime and eager torch on the same random batch: (max |diff|, argmax agreement)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError("the ONNX parity check needs onnxruntime: pip install 'peopleseg[export]'") from None
    height, width = model.info.input_size
    pixels = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["output"], {"input": pixels.numpy()})[0]
    with torch.inference_mode():
        torch_logits = model.eval()(pixels).numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    agreement = float(np.mean(onnx_logits.argmax(1) == torch_logits.argmax(1)))
    return diff, agreement
