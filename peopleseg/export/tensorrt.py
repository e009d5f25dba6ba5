"""Build a TensorRT engine from the exported ONNX, or say exactly how to build it elsewhere.

`build_engine` uses the TensorRT Python API when `tensorrt` imports (a GPU machine); otherwise its error carries the
`trtexec` command that does the same build. Both give the one input `input` an optimisation profile for a dynamic
batch (min/opt/max) at the model's fixed height and width.

Precision, and TensorRT 10 against 11:
- TensorRT 10 builds "weakly typed" networks by default: the FP16/INT8 builder flags (`--fp16`/`--int8`) let it pick
  lower-precision kernels for an FP32 graph. INT8 here always means an explicitly quantised ONNX (QuantizeLinear/
  DequantizeLinear nodes, from peopleseg's INT8 export); implicit calibration is deprecated in 10 and gone in 11, so
  `build_engine` refuses INT8 for a graph without Q/DQ nodes.
- TensorRT 11 removed those flags (and `--fp16`/`--int8`/`--best` in trtexec): every network is strongly typed, and
  the precision is the graph's own. `build_engine` detects this and builds strongly typed; an FP16 engine then needs
  an FP16 ONNX (ModelOpt AutoCast), which it checks for. `strongly_typed=True` asks for the same on TensorRT 10.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from peopleseg.atomic import atomic_open
from peopleseg.errors import ConfigError, ModelError

PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "input"
SIDECAR_SUFFIX = ".json"  # "<engine>.json": what the engine itself cannot carry (classes, normalisation, kind)


def _batches(min_batch: int, opt_batch: int | None, max_batch: int) -> tuple[int, int, int]:
    """Validate the profile's batch sizes; opt defaults to 8 (a batch dynamic batchers often form), kept in range."""
    if opt_batch is None:
        opt_batch = min(max(min_batch, 8), max_batch)
    for name, value in (("min_batch", min_batch), ("opt_batch", opt_batch), ("max_batch", max_batch)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not min_batch <= opt_batch <= max_batch:
        raise ConfigError(f"batch sizes must satisfy min <= opt <= max, got {min_batch}, {opt_batch}, {max_batch}")
    return min_batch, opt_batch, max_batch


def _check(precision: str, input_size: tuple[int, int], workspace_mb: int) -> tuple[int, int]:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ConfigError(f"input_size must be (height, width) in pixels, got {input_size!r}")
    if not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise ConfigError(f"workspace_mb must be a positive integer, got {workspace_mb!r}")
    return size  # type: ignore[return-value]


def _shape(batch: int, height: int, width: int) -> str:
    return f"{INPUT_NAME}:{batch}x3x{height}x{width}"


def trtexec_command(
    onnx_file: str | os.PathLike[str],
    engine_file: str | os.PathLike[str],
    precision: str = "fp16",
    input_size: tuple[int, int] = (512, 512),
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 32,
    workspace_mb: int = 4096,
    strongly_typed: bool = False,
) -> str:
    """The `trtexec` command line (TensorRT 10 flags) that builds the same engine as `build_engine`.

    INT8 adds `--fp16` beside `--int8`, so layers outside the Q/DQ pairs may run in FP16 rather than FP32. With
    `strongly_typed` (TensorRT 10.x, and what 11 always does) the precision flags give way to `--stronglyTyped`.
    """
    height, width = _check(precision, input_size, workspace_mb)
    low, opt, high = _batches(min_batch, opt_batch, max_batch)
    args = [
        "trtexec",
        f"--onnx={onnx_file}",
        f"--saveEngine={engine_file}",
        f"--minShapes={_shape(low, height, width)}",
        f"--optShapes={_shape(opt, height, width)}",
        f"--maxShapes={_shape(high, height, width)}",
        f"--memPoolSize=workspace:{workspace_mb}",  # MiB; --workspace was removed in TensorRT 10
    ]
    if strongly_typed:
        args.append("--stronglyTyped")
    elif precision == "fp16":
        args.append("--fp16")
    elif precision == "int8":
        args += ["--int8", "--fp16"]
    return " ".join(shlex.quote(arg) for arg in args)


def build_engine(
    onnx_file: str | os.PathLike[str],
    engine_file: str | os.PathLike[str],
    precision: str = "fp16",
    input_size: tuple[int, int] = (512, 512),
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int = 32,
    workspace_mb: int = 4096,
    strongly_typed: bool | None = None,
) -> Path:
    """Build and serialize a TensorRT engine for `onnx_file`, written atomically to `engine_file`.

    `strongly_typed=None` follows the installed TensorRT: weakly typed with precision flags on 10.x, strongly typed on
    11.x (which has no other mode). Without TensorRT, raises a ModelError holding the equivalent trtexec command.
    """
    onnx_file, engine_file = Path(onnx_file), Path(engine_file)
    height, width = _check(precision, input_size, workspace_mb)
    low, opt, high = _batches(min_batch, opt_batch, max_batch)
    if not onnx_file.is_file():
        raise ModelError(f"{onnx_file}: no such ONNX file")
    check_symmetric_qdq(onnx_file)
    try:
        import tensorrt as trt
    except ImportError:
        command = trtexec_command(onnx_file, engine_file, precision, (height, width), low, opt, high, workspace_mb,
                                  bool(strongly_typed))  # fmt: skip
        raise ModelError(f"TensorRT is not installed here; on the GPU machine run: {command}") from None

    weak_flags = hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11 removed the precision flags with weak typing
    strong = (not weak_flags) if strongly_typed is None else bool(strongly_typed)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, strong))
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so weights stored as external data beside the ONNX are found.
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)] or ["unknown error"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ModelError(f"{onnx_file}: TensorRT cannot parse the ONNX: {' '.join(errors[0].split())}{more}")

    name = _check_input(trt, network, onnx_file, (low, high), (height, width))
    _check_precision(trt, network, onnx_file, precision, strong)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strong:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":  # the Q/DQ scales come from the graph; the flag lets TensorRT use INT8 kernels
            config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (low, 3, height, width), (opt, 3, height, width), (high, 3, height, width))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"{onnx_file}: TensorRT could not build the {precision} engine (its log above says why)")
    try:
        with atomic_open(engine_file, "wb") as stream:
            stream.write(serialized)  # IHostMemory speaks the buffer protocol
    except OSError as exc:
        raise ModelError(f"{engine_file}: cannot write the engine ({exc.strerror or exc})") from None
    write_engine_sidecar(onnx_file, engine_file, precision)
    return engine_file


def check_symmetric_qdq(onnx_file: str | os.PathLike[str]) -> None:
    """Raise a one-line ModelError when a Q/DQ graph has a zero point TensorRT rejects (uint8, or non-zero).

    TensorRT takes symmetric int8 Q/DQ only ("Non-zero zero point is not supported"); onnxruntime's CPU default
    (uint8 activations, zero point 128 or so) is one of these. Skipped when the onnx package is not installed.
    """
    try:
        import numpy as np
        import onnx
        from onnx import external_data_helper, numpy_helper
    except ImportError:
        return
    onnx_file = Path(onnx_file)
    try:
        graph = onnx.load(str(onnx_file), load_external_data=False).graph
    except Exception:  # onnx raises DecodeError and friends: TensorRT's parser names an unreadable file
        return
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            constants[node.output[0]] = node.attribute[0].t
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
            continue
        tensor = constants.get(node.input[2])
        if tensor is None or external_data_helper.uses_external_data(tensor):
            continue
        zero = numpy_helper.to_array(tensor)
        if zero.dtype != np.int8 or zero.any():
            raise ModelError(
                f"{onnx_file}: zero point '{node.input[2]}' is {zero.dtype} {zero.flatten()[:1].tolist()}, but "
                "TensorRT takes symmetric int8 Q/DQ only (zero point 0); export --int8 with --tensorrt or --deepstream"
            )


def sidecar_path(engine_file: str | os.PathLike[str]) -> Path:
    engine_file = Path(engine_file)
    return engine_file.with_name(engine_file.name + SIDECAR_SUFFIX)


def write_engine_sidecar(
    onnx_file: str | os.PathLike[str], engine_file: str | os.PathLike[str], precision: str
) -> Path | None:
    """Write "<engine>.json" with the ONNX's peopleseg metadata (ModelInfo, output kind, normalisation), which an
    engine has no room for; None (nothing written) for an ONNX without that metadata or without the onnx package."""
    try:
        import onnx
    except ImportError:
        return None
    onnx_file = Path(onnx_file)
    try:
        meta = {p.key: p.value for p in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    except Exception:  # onnx raises DecodeError and friends; TensorRT read the file, so no settings is all it costs
        return None
    if "peopleseg" not in meta:
        return None
    try:
        info = json.loads(meta["peopleseg"])
    except json.JSONDecodeError:
        raise ModelError(f"{onnx_file}: the 'peopleseg' metadata is not valid JSON") from None
    data = {
        "peopleseg": info,
        "output_kind": meta.get("output_kind", "logits"),
        "normalized_in_graph": meta.get("normalized_in_graph") == "true",
        "precision": precision,
        "onnx": onnx_file.name,
    }
    target = sidecar_path(engine_file)
    try:
        with atomic_open(target, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise ModelError(f"{target}: cannot write the engine's settings ({exc.strerror or exc})") from None
    return target


def read_engine_sidecar(engine_file: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings beside an engine: {"info": ModelInfo, "output_kind", "normalized_in_graph"}; None when absent."""
    from peopleseg.models.info import ModelInfo

    path = sidecar_path(engine_file)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not a readable engine settings file ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("peopleseg"), dict):
        raise ModelError(f"{path}: engine settings need a 'peopleseg' object (the model info)")
    kind = data.get("output_kind", "logits")
    if kind not in ("argmax", "logits", "probs"):
        raise ModelError(f"{path}: unknown output_kind {kind!r}; expected argmax, logits or probs")
    in_graph = data.get("normalized_in_graph", False)
    if not isinstance(in_graph, bool):
        raise ModelError(f"{path}: normalized_in_graph must be true or false, got {in_graph!r}")
    info = ModelInfo.from_dict(data["peopleseg"], source=str(path))
    return {"info": info, "output_kind": kind, "normalized_in_graph": in_graph}


def _network_flags(trt: Any, strong: bool) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    major = int(str(getattr(trt, "__version__", "10")).split(".")[0])
    if major < 10 and hasattr(creation, "EXPLICIT_BATCH"):  # explicit batch is the only mode from TensorRT 10 on
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if strong and hasattr(creation, "STRONGLY_TYPED"):  # accepted and implied on 11
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def _check_input(trt: Any, network: Any, onnx_file: Path, batches: tuple[int, int], size: tuple[int, int]) -> str:
    """The one image input: its name, checked against the profile (a fixed batch or size would reject it)."""
    if network.num_inputs != 1:
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        raise ModelError(f"{onnx_file}: expected one input, found {network.num_inputs} ({names})")
    tensor = network.get_input(0)
    shape = list(tensor.shape)
    if len(shape) != 4 or shape[1] not in (3, -1):
        raise ModelError(f"{onnx_file}: input '{tensor.name}' has shape {shape}, expected [N, 3, H, W]")
    if shape[0] != -1 and batches != (shape[0], shape[0]):
        raise ModelError(f"{onnx_file}: input '{tensor.name}' has a fixed batch of {shape[0]}; export a dynamic batch")
    for axis, want in ((2, size[0]), (3, size[1])):
        if shape[axis] not in (-1, want):
            raise ModelError(f"{onnx_file}: input '{tensor.name}' is {shape[2]}x{shape[3]}, not {size[0]}x{size[1]}")
    return str(tensor.name)


def _check_precision(trt: Any, network: Any, onnx_file: Path, precision: str, strong: bool) -> None:
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    if precision == "int8":
        quantize = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
        if not any(layer.type in quantize for layer in layers):
            raise ModelError(
                f"{onnx_file}: INT8 needs an explicitly quantised ONNX (QuantizeLinear/DequantizeLinear nodes); "
                "export one with peopleseg's INT8 quantisation first"
            )
    elif precision == "fp16" and strong:
        half = any(layer.get_output(j).dtype == trt.float16 for layer in layers for j in range(layer.num_outputs))
        if not half:
            raise ModelError(
                f"{onnx_file}: a strongly typed build takes the graph's own precision and this graph has no FP16; "
                f"convert it first (python -m modelopt.onnx.autocast --onnx_path {onnx_file}) or build fp32"
            )
