"""FP16 conversion of an exported ONNX file: float16 weights and compute, float32 inputs and outputs.

Float32 graph I/O (`keep_io_types`) keeps the file a drop-in replacement: the same preprocessing, the same parsers
(DeepStream, Triton, the Segmenter) and half the weight bytes. The file is meant for GPUs (CUDA, TensorRT). On CPU,
onnxruntime has float16 kernels for few ops and wraps the rest in Casts, so it runs correctly but no faster.

Our exports (logits, probs and argmax outputs, normalised in the graph or not) load and run in onnxruntime CPU once
converted, so nothing beyond onnxruntime's default block list is kept in float32. Should a graph hold an op that
onnxruntime cannot run in float16, the conversion finds it in the load error, keeps that op type in float32 and
tries again, with a warning naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peopleseg.atomic import atomic_path
from peopleseg.errors import ModelError

# onnxruntime's messages for an op without a kernel: "Could not find an implementation for Foo(13) node ..."
_MISSING_KERNEL = re.compile(r"implementation for (\w+)\(\d+\)")
_MAX_RETRIES = 8


def convert_fp16(
    onnx_in: str | os.PathLike[str],
    onnx_out: str | os.PathLike[str],
    keep_io_types: bool = True,
    op_block_list: Sequence[str] | None = None,
    check: bool = True,
) -> Path:
    """Write a float16 copy of `onnx_in` to `onnx_out` atomically; returns `onnx_out`.

    `op_block_list`: op types kept in float32, on top of onnxruntime's default list. With `check`, the result must
    load and run one batch in onnxruntime (CPU); ops that it cannot run in float16 are blocked automatically.
    """
    try:
        import onnx
        import onnxruntime as ort
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError:
        raise ModelError("FP16 export needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    source, target = Path(onnx_in), Path(onnx_out)
    original = _load(source, onnx)
    meta = {p.key: p.value for p in original.metadata_props}
    meta["precision"] = "fp16"
    blocked = list(dict.fromkeys([*DEFAULT_OP_BLOCK_LIST, *(op_block_list or ())]))
    for _attempt in range(_MAX_RETRIES):
        try:
            # The converter edits the proto in place: give it a copy, so a retry starts from float32 again.
            copy = onnx.ModelProto.FromString(original.SerializeToString())
            model = convert_float_to_float16(copy, keep_io_types=keep_io_types, op_block_list=blocked)
        except Exception as exc:  # the converter raises assorted types on graphs it does not understand
            raise ModelError(f"{source}: FP16 conversion failed ({_first_line(exc)})") from None
        del model.metadata_props[:]
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        problem = None
        try:
            with atomic_path(target) as temp:
                try:
                    onnx.save(model, str(temp))
                except (OSError, ValueError) as exc:
                    raise ModelError(f"{target}: cannot write the ONNX file ({_first_line(exc)})") from None
                problem = _run_once(temp, meta, ort) if check else None
                if problem is not None:
                    problem = problem.replace(str(temp), str(target))
                    raise _Rejected  # leave atomic_path without the rename: the temp file goes, the target stays
        except _Rejected:
            pass
        if problem is None:
            return target
        missing = _MISSING_KERNEL.search(problem)
        if missing is None or missing.group(1) in blocked:
            raise ModelError(f"{target}: the FP16 model does not run in onnxruntime ({problem})")
        op = missing.group(1)
        warnings.warn(f"{source}: onnxruntime cannot run {op} in float16; keeping it in float32", stacklevel=2)
        blocked.append(op)
    raise ModelError(f"{target}: the FP16 model still does not run after keeping {', '.join(blocked[-3:])} in float32")


class _Rejected(Exception):
    """The converted file failed its onnxruntime check."""


def _load(path: Path, onnx: Any) -> Any:
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and friends for a bad file
        raise ModelError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None


def _run_once(path: Path, meta: dict[str, str], ort: Any) -> str | None:
    """Load the file in onnxruntime CPU and run one batch; the first line of the error, or None when it runs."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CPU provider's notes about fp16 fallbacks are not the user's concern
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        arg = session.get_inputs()[0]
        session.run(None, {arg.name: _example_input(arg, meta)})
    except Exception as exc:  # onnxruntime raises its own exception types
        return _first_line(exc)
    return None


def _example_input(arg: Any, meta: dict[str, str]) -> np.ndarray:
    """A random batch of one at the model's input size (from the metadata, else the graph, else 512x512)."""
    size = [512, 512]
    if "peopleseg" in meta:
        with contextlib.suppress(ValueError, TypeError, AttributeError):  # a malformed entry: the default size
            size = [int(v) for v in json.loads(meta["peopleseg"]).get("input_size", size)]
    shape = [d if isinstance(d, int) else None for d in arg.shape]
    if len(shape) == 4:
        shape = [shape[0] or 1, shape[1] or 3, shape[2] or size[0], shape[3] or size[1]]
    else:
        shape = [d or 1 for d in shape]
    generator = np.random.default_rng(0)
    if meta.get("normalized_in_graph") == "true":
        pixels = generator.uniform(0, 255, shape)
    else:
        pixels = generator.standard_normal(shape)
    return pixels.astype(np.float16 if arg.type == "tensor(float16)" else np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:300]
