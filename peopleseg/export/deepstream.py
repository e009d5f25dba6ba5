"""A self-contained DeepStream folder for a segmentation ONNX: `nvinfer_config.txt`, `labels.txt`, a README and the
model itself, so `ds-tao-segmentation -c nvinfer_config.txt` runs from that folder on a DeepStream machine.

The config follows NVIDIA's own SegFormer deployments: the `[property]` keys of Gst-nvinfer, `network-type=2`
(semantic segmentation), and the custom parsers of deepstream_tao_apps' `libnvds_infercustomparser_tao.so`:
`NvDsInferParseCustomSegformerTAO` for int64 class ids and `NvDsInferParseCustomSegformerTAO2` for logits at 1/4
resolution. Normalisation comes from the model's `ModelInfo` (DESIGN.md: it belongs to the model), never from a
constant here.

This module also holds what the Triton writer shares with it: the output kinds, the tensor dims each kind has, an
ONNX inspection that checks a file against its `ModelInfo`, and the staged (all-or-nothing) folder write.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from peopleseg.atomic import atomic_open, atomic_path
from peopleseg.errors import ConfigError, ModelError
from peopleseg.export.tensorrt import check_symmetric_qdq
from peopleseg.models.info import ModelInfo

OUTPUT_KINDS = ("argmax", "logits", "probs")
# Gst-nvinfer's network-mode values.
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
# Where TAO's generated SegFormer configs expect the parser library that deepstream_tao_apps/post_processor builds.
TAO_PARSER_LIB = "/opt/nvidia/deepstream/deepstream/lib/libnvds_infercustomparser_tao.so"
# The parser function for each output kind; probabilities at full resolution use nvinfer's built-in parser.
PARSERS = {"argmax": "NvDsInferParseCustomSegformerTAO", "logits": "NvDsInferParseCustomSegformerTAO2", "probs": None}
CONFIG_NAME = "nvinfer_config.txt"
LABELS_NAME = "labels.txt"


# --------------------------------------------------------------------------------------------------------------------
# Shared with the Triton writer: output kinds, dims and the ONNX check.


def check_output_kind(output_kind: str) -> str:
    if output_kind not in OUTPUT_KINDS:
        raise ConfigError(f"unknown output kind '{output_kind}'; choose from {', '.join(OUTPUT_KINDS)}")
    return output_kind


def labels_text(info: ModelInfo) -> str:
    """The label file DeepStream and Triton read: one class name per line, in class-id order."""
    for name in info.classes:
        if not str(name).strip() or "\n" in str(name) or "\r" in str(name):
            raise ModelError(f"class name {name!r} cannot be a line of a label file")
    return "".join(f"{name}\n" for name in info.classes)


def output_dims(info: ModelInfo, output_kind: str, layout: str = "chw") -> list[int]:
    """The dims of `output` without the batch axis: class ids [1, H, W] (or [H, W, 1] for TAO 5's NHWC export),
    logits [C, H/4, W/4], probabilities [C, H, W]."""
    height, width = info.input_size
    check_output_kind(output_kind)
    if output_kind == "argmax":
        return [height, width, 1] if layout == "hwc" else [1, height, width]
    if output_kind == "logits":
        if height % 4 or width % 4:
            raise ModelError(f"input size {height}x{width} is not a multiple of 4, so the 1/4-scale logits are not")
        return [info.num_classes, height // 4, width // 4]
    return [info.num_classes, height, width]


@dataclass
class OnnxSummary:
    """What the deployment files need to know about an ONNX file, read without loading its weights."""

    path: Path
    inputs: dict[str, list[int | str]]  # name -> shape; an int per static axis, the axis name for a dynamic one
    outputs: dict[str, list[int | str]]
    output_types: dict[str, str]  # name -> "float32", "int64", ...
    input_types: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    quantized: bool = False  # has QuantizeLinear/DequantizeLinear nodes (explicit INT8)
    external_data: list[str] = field(default_factory=list)  # files beside it that hold tensors, relative to it

    @property
    def argmax_layout(self) -> str:
        """'hwc' when the class ids come as [N, H, W, 1] (TAO 5's export), else 'chw'."""
        shape = self.outputs.get("output", [])
        return "hwc" if len(shape) == 4 and shape[3] == 1 and shape[1] != 1 else "chw"


def inspect_onnx(path: str | os.PathLike[str]) -> OnnxSummary | None:
    """Read names, shapes, types and metadata of an ONNX file; None when the onnx package is not installed."""
    try:
        import onnx
        from onnx import external_data_helper
    except ImportError:
        return None
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends for a file that is not ONNX
        raise ModelError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None

    def shape(value: object) -> list[int | str]:
        dims = value.type.tensor_type.shape.dim  # type: ignore[attr-defined]
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    initializers = {t.name for t in model.graph.initializer}
    inputs = {v.name: shape(v) for v in model.graph.input if v.name not in initializers}
    outputs = {v.name: shape(v) for v in model.graph.output}

    def dtype(value: object) -> str:
        elem = value.type.tensor_type.elem_type  # type: ignore[attr-defined]
        return onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "undefined"

    types = {v.name: dtype(v) for v in model.graph.output}
    input_types = {v.name: dtype(v) for v in model.graph.input if v.name not in initializers}
    quantized = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)
    locations = sorted(
        {
            entry.value
            for tensor in _tensors(model.graph)
            if external_data_helper.uses_external_data(tensor)
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    for location in locations:  # the copy goes beside ours: never let a stored name point elsewhere
        if Path(location).is_absolute() or ".." in Path(location).parts:
            raise ModelError(f"{path}: external data location {location!r} is outside the model's folder")
    meta = {p.key: p.value for p in model.metadata_props}
    return OnnxSummary(path, inputs, outputs, types, input_types, meta, quantized, locations)


def _tensors(graph: object) -> Iterator[object]:
    """Every tensor of a graph that may hold weights: initializers and constant attributes, subgraphs included."""
    yield from graph.initializer  # type: ignore[attr-defined]
    for node in graph.node:  # type: ignore[attr-defined]
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*subgraphs, *attribute.graphs]:
                yield from _tensors(subgraph)


def check_onnx_model(
    summary: OnnxSummary, info: ModelInfo, output_kind: str, normalized_in_graph: bool | None = None
) -> None:
    """Raise a one-line ModelError when the ONNX file does not match what the deployment files will promise."""
    name = summary.path
    if list(summary.inputs) != ["input"]:
        raise ModelError(f"{name}: the model input must be one tensor named 'input', found {list(summary.inputs)}")
    if "output" not in summary.outputs:
        raise ModelError(f"{name}: the model has no output named 'output' (found {list(summary.outputs)})")
    meta = summary.metadata
    if "output_kind" in meta and meta["output_kind"] != output_kind:
        raise ModelError(f"{name}: the file's output kind is '{meta['output_kind']}', not '{output_kind}'")
    if normalized_in_graph is not None and "normalized_in_graph" in meta:
        in_graph = meta["normalized_in_graph"] == "true"
        if in_graph != normalized_in_graph:
            where = "inside the graph" if in_graph else "outside the graph"
            raise ModelError(f"{name}: the file normalises {where}, but normalized_in_graph={normalized_in_graph}")
    if "peopleseg" in meta:
        _check_info(name, meta["peopleseg"], info)
    # DeepStream feeds float32 and its SegFormer parsers read int64 ids or float32 scores; an FP16 model for
    # deployment keeps float32 inputs and outputs (keep_io_types) and runs FP16 inside.
    hint = " (keep float32 inputs and outputs when converting to FP16)"
    dtype = summary.input_types.get("input", "float32")
    if dtype != "float32":
        raise ModelError(f"{name}: input 'input' is {dtype}, not float32{hint if dtype == 'float16' else ''}")
    dtype = summary.output_types.get("output")
    want = "int64" if output_kind == "argmax" else "float32"
    if dtype != want:
        raise ModelError(
            f"{name}: output 'output' is {dtype}, but the '{output_kind}' kind needs {want}"
            + (hint if dtype == "float16" else "")
        )
    height, width = info.input_size
    _check_shape(name, "input", summary.inputs["input"], [3, height, width])
    layout = summary.argmax_layout if output_kind == "argmax" else "chw"
    _check_shape(name, "output", summary.outputs["output"], output_dims(info, output_kind, layout))


def _check_info(name: Path, text: str, info: ModelInfo) -> None:
    try:
        stored = json.loads(text)
    except json.JSONDecodeError:
        raise ModelError(f"{name}: the 'peopleseg' metadata is not JSON") from None
    if list(stored.get("classes", info.classes)) != list(info.classes):
        raise ModelError(f"{name}: the file's classes {stored['classes']} differ from the given {list(info.classes)}")
    if list(stored.get("input_size", info.input_size)) != list(info.input_size):
        raise ModelError(f"{name}: the file's input size {stored['input_size']} differs from {list(info.input_size)}")
    for key in ("mean", "std"):
        ours = getattr(info, key)
        theirs = stored.get(key, ours)
        if len(theirs) != 3 or not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(theirs, ours, strict=True)):
            raise ModelError(f"{name}: the file's {key} {list(theirs)} differs from the given {list(ours)}")


def _check_shape(name: Path, tensor: str, shape: list[int | str], dims: list[int]) -> None:
    if len(shape) != len(dims) + 1:
        raise ModelError(f"{name}: '{tensor}' has rank {len(shape)}, expected [N, {', '.join(map(str, dims))}]")
    for axis, (have, want) in enumerate(zip(shape[1:], dims, strict=True), start=1):
        if isinstance(have, int) and have > 0 and have != want:  # dynamic axes (names, 0) are not checked
            raise ModelError(f"{name}: '{tensor}' axis {axis} is {have}, expected {want} (shape {shape})")


# --------------------------------------------------------------------------------------------------------------------
# All-or-nothing folders.


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success its files move into `target`.

    A new target appears in one rename. An existing one gets each file replaced in one `os.replace`, so other files
    already there (an engine DeepStream built, other Triton versions) survive. On any failure the temporary folder,
    and any parent folder this call created, are removed: no partial folder is left behind.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target}: exists and is not a folder")
    missing = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        _remove_empty(missing)
        raise ConfigError(f"{target}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        yield temp
        umask = os.umask(0)
        os.umask(umask)
        for folder in [temp, *(p for p in temp.rglob("*") if p.is_dir())]:
            os.chmod(folder, 0o777 & ~umask)  # mkdtemp makes 0700; servers often run as another user
        if not target.exists():
            os.rename(temp, target)
        else:
            for file in sorted(p for p in temp.rglob("*") if not p.is_dir()):
                destination = target / file.relative_to(temp)
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, destination)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        _remove_empty(missing)
        if isinstance(exc, OSError):
            raise ConfigError(f"{target}: cannot write the folder ({exc.strerror or exc})") from None
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


def copy_into(source: Path, folder: Path, name: str) -> Path:
    """Copy `source` to `folder/name` atomically (the copy is complete or absent)."""
    target = folder / name
    with atomic_path(target) as temp:
        shutil.copyfile(source, temp)
    return target


# --------------------------------------------------------------------------------------------------------------------
# DeepStream.


@dataclass
class Normalisation:
    """nvinfer's pre-processing, y = net_scale_factor * (x - offsets[c]) on 0-255 pixels, and how it was derived."""

    net_scale_factor: float
    offsets: tuple[float, float, float]
    note: str = ""  # non-empty when the scalar scale only approximates per-channel std


def deepstream_normalisation(info: ModelInfo, normalized_in_graph: bool = False) -> Normalisation:
    """Derive net-scale-factor and offsets from the model's mean/std (0-255 scale).

    DeepStream has one scalar scale for all channels. When the three std values differ (ImageNet's 58.395, 57.12,
    57.375), 1/mean(std) is used, as NVIDIA's citysemsegformer config does (0.01735207357279195 = 1/57.63).
    """
    if normalized_in_graph:  # the graph takes raw 0-255 RGB and normalises itself
        return Normalisation(1.0, (0.0, 0.0, 0.0))
    mean = tuple(float(v) for v in info.mean)
    std = [float(v) for v in info.std]
    if any(v <= 0 for v in std):
        raise ModelError(f"model std must be positive, got {std}")
    scale_std = sum(std) / 3
    note = ""
    if max(std) != min(std):
        worst = max(abs(scale_std / v - 1) for v in std)
        note = (
            f"std differs per channel ({', '.join(_fmt(v) for v in std)}) but net-scale-factor is one scalar: "
            f"using 1/mean(std) = 1/{_fmt(round(scale_std, 6))}, off by up to {worst:.1%} on one channel"
        )
    return Normalisation(1.0 / scale_std, mean, note)  # type: ignore[arg-type]


def _aspect_lines(info: ModelInfo) -> list[str]:
    """How frames meet the network, as the model's own policy (`info.resize`) says."""
    if info.resize == "letterbox":
        return [
            "# Keep each frame's aspect ratio and pad it centred, as the model expects (its 'letterbox' policy).",
            "# nvinfer pads with black where peopleseg pads with the mean colour: masks near the bands may differ.",
            "maintain-aspect-ratio=1",
            "symmetric-padding=1",
        ]
    return [
        f"# Stretch each frame to the network input, as TAO does (the model's policy: '{info.resize}').",
        "maintain-aspect-ratio=0",
    ]


def _fmt(value: float) -> str:
    """Shortest exact text of a number; whole numbers without '.0' (offsets=127.5;127.5;127.5 or 0;0;0)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def write_deepstream(
    out_dir: str | os.PathLike[str],
    onnx_file: str | os.PathLike[str],
    info: ModelInfo,
    output_kind: str,
    precision: str = "fp32",
    normalized_in_graph: bool = False,
    batch_size: int = 1,
    engine_file: str | None = None,
    calibration_file: str | None = None,
    segmentation_threshold: float = 0.0,
    custom_lib_path: str = TAO_PARSER_LIB,
) -> list[Path]:
    """Write a DeepStream folder for `onnx_file`: config, labels, README and a copy of the ONNX. Returns the paths.

    `engine_file` is written as given (a path DeepStream reads, relative to the config); without it the line is a
    commented suggestion with nvinfer's own engine name. `calibration_file` (an INT8 calibration cache) is copied in;
    an explicitly quantised (QDQ) ONNX needs none. All files appear together or not at all.
    """
    out_dir = Path(out_dir)
    onnx_file = Path(onnx_file)
    check_output_kind(output_kind)
    if precision not in NETWORK_MODES:
        raise ConfigError(f"unknown precision '{precision}'; choose from {', '.join(NETWORK_MODES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not math.isfinite(segmentation_threshold) or segmentation_threshold < 0:
        raise ConfigError(
            f"segmentation_threshold must be >= 0 (nvinfer refuses negatives), got {segmentation_threshold}"
        )
    if not onnx_file.is_file():
        raise ModelError(f"{onnx_file}: no such ONNX file")
    calibration = Path(calibration_file) if calibration_file else None
    if calibration is not None and not calibration.is_file():
        raise ConfigError(f"{calibration}: no such INT8 calibration file")
    if calibration is not None and precision != "int8":
        raise ConfigError(f"a calibration file is only used with precision int8, not {precision}")
    output_dims(info, output_kind)  # input size fits the kind
    labels = labels_text(info)
    summary = inspect_onnx(onnx_file)
    if summary is not None:
        check_onnx_model(summary, info, output_kind, normalized_in_graph)
        if precision == "int8" and calibration is None and not summary.quantized:
            raise ConfigError(
                f"{onnx_file}: precision int8 needs an explicitly quantised (QDQ) ONNX or a calibration_file"
            )
        if summary.quantized:
            check_symmetric_qdq(onnx_file)  # nvinfer builds with TensorRT, which takes zero point 0 only
    norm = deepstream_normalisation(info, normalized_in_graph)
    if norm.note:
        warnings.warn(f"DeepStream config for {onnx_file.name}: {norm.note}", stacklevel=2)

    text = _nvinfer_config(
        onnx_file.name, info, output_kind, precision, norm, batch_size, engine_file,
        calibration.name if calibration else None, segmentation_threshold, custom_lib_path,
    )  # fmt: skip
    readme = _readme(onnx_file.name, info, output_kind, precision, norm, normalized_in_graph, batch_size, summary)
    names = [CONFIG_NAME, LABELS_NAME, "README.md", onnx_file.name]
    try:
        with staged_folder(out_dir) as stage:
            with atomic_open(stage / CONFIG_NAME, "w", encoding="utf-8") as stream:
                stream.write(text)
            with atomic_open(stage / LABELS_NAME, "w", encoding="utf-8") as stream:
                stream.write(labels)
            with atomic_open(stage / "README.md", "w", encoding="utf-8") as stream:
                stream.write(readme)
            copy_into(onnx_file, stage, onnx_file.name)
            # Weights stored beside the ONNX (external data) travel with it, or the copy would not load.
            for location in summary.external_data if summary else []:
                (stage / location).parent.mkdir(parents=True, exist_ok=True)
                copy_into(onnx_file.parent / location, stage, location)
                names.append(location)
            if calibration is not None:
                copy_into(calibration, stage, calibration.name)
                names.append(calibration.name)
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot write the DeepStream folder ({exc.strerror or exc})") from None
    return [out_dir / name for name in names]


def _nvinfer_config(
    onnx_name: str,
    info: ModelInfo,
    output_kind: str,
    precision: str,
    norm: Normalisation,
    batch_size: int,
    engine_file: str | None,
    calibration_name: str | None,
    threshold: float,
    custom_lib_path: str,
) -> str:
    # nvinfer reads this with GLib's key-file parser: comments must be whole lines (a trailing "# ..." would become
    # part of the value), and relative paths are resolved against this file's folder.
    height, width = info.input_size
    engine = engine_file or f"{onnx_name}_b{batch_size}_gpu0_{precision}.engine"
    lines = [
        f"# DeepStream Gst-nvinfer config written by peopleseg for {info.arch} ({output_kind} output).",
        "[property]",
        "gpu-id=0",
        "gie-unique-id=1",
        f"onnx-file={onnx_name}",
        "# nvinfer builds a TensorRT engine from the ONNX on the first run and saves it under this name;",
        "# point model-engine-file at it (or at an engine built with trtexec) to skip the build next time.",
        f"model-engine-file={engine}" if engine_file else f"# model-engine-file={engine}",
        f"labelfile-path={LABELS_NAME}",
        f"batch-size={batch_size}",
        "# 0=FP32, 1=INT8, 2=FP16",
        f"network-mode={NETWORK_MODES[precision]}",
    ]
    if precision == "int8":
        if calibration_name:
            lines.append(f"int8-calib-file={calibration_name}")
        else:
            lines.append("# An explicitly quantised (QDQ) ONNX carries its own INT8 scales: no int8-calib-file needed.")
    lines += [
        "# 0=Detector, 1=Classifier, 2=Semantic Segmentation, 3=Instance Segmentation, 100=Other",
        "network-type=2",
        f"num-detected-classes={info.num_classes}",
        f"infer-dims=3;{height};{width}",
        "# 0=RGB, 1=BGR, 2=GRAY: the model was trained on RGB",
        "model-color-format=0",
        *_aspect_lines(info),
        "# nvinfer feeds y = net-scale-factor * (x - offsets[c]) for 0-255 pixels x, per RGB channel c.",
    ]
    if norm.note:
        lines.append(f"# Note: {norm.note}.")
    lines += [
        f"net-scale-factor={norm.net_scale_factor!r}",
        "offsets=" + ";".join(_fmt(v) for v in norm.offsets),
        "output-blob-names=output",
        "# 0=CHW, 1=HWC",
        "segmentation-output-order=0",
        f"segmentation-threshold={threshold!r}",
    ]
    parser = PARSERS[output_kind]
    if parser:
        lines += [
            "# The SegFormer parsers of NVIDIA's deepstream_tao_apps (post_processor/, make CUDA_VER=<your CUDA>);",
            "# copy libnvds_infercustomparser_tao.so here or change the path.",
            f"custom-lib-path={custom_lib_path}",
            f"parse-segmentation-func-name={parser}",
        ]
    else:
        lines.append("# Probabilities [C, H, W] at network size: nvinfer's built-in segmentation parser reads them.")
    return "\n".join(lines) + "\n"


def _readme(
    onnx_name: str,
    info: ModelInfo,
    output_kind: str,
    precision: str,
    norm: Normalisation,
    normalized_in_graph: bool,
    batch_size: int,
    summary: OnnxSummary | None,
) -> str:
    from peopleseg.export.tensorrt import trtexec_command  # tensorrt.py imports nothing from here at import time

    height, width = info.input_size
    dims = output_dims(info, output_kind, summary.argmax_layout if summary and output_kind == "argmax" else "chw")
    parser = PARSERS[output_kind]
    if parser:
        parser_text = (
            f"`{parser}` from `libnvds_infercustomparser_tao.so`. Build it from NVIDIA's "
            "[deepstream_tao_apps](https://github.com/NVIDIA-AI-IOT/deepstream_tao_apps):\n\n"
            "```bash\ncd deepstream_tao_apps/post_processor && make CUDA_VER=12.6   # your CUDA version\n"
            f"sudo cp libnvds_infercustomparser_tao.so {TAO_PARSER_LIB}\n```\n\n"
            "or set `custom-lib-path` in `nvinfer_config.txt` to where the library is."
        )
    else:
        parser_text = "nvinfer's built-in segmentation parser (no custom library): it takes probabilities [C, H, W]."
    if normalized_in_graph:
        norm_text = (
            "The ONNX normalises inside the graph, so DeepStream feeds raw 0-255 RGB: "
            "`net-scale-factor=1.0`, `offsets=0;0;0`."
        )
    else:
        norm_text = (
            f"The model expects (x - mean) / std per RGB channel with mean {list(info.mean)} and std {list(info.std)} "
            f"(0-255 scale). DeepStream computes `net-scale-factor * (x - offsets[c])`, so "
            f"`net-scale-factor={norm.net_scale_factor!r}` and `offsets={';'.join(_fmt(v) for v in norm.offsets)}`."
        )
        if norm.note:
            norm_text += f" Note: {norm.note}."
    kinds = {
        "argmax": "class ids (int64)",
        "logits": "logits at 1/4 of the input resolution (float32)",
        "probs": "class probabilities (float32)",
    }
    trtexec = trtexec_command(onnx_name, f"{onnx_name}_b{batch_size}_gpu0_{precision}.engine", precision,
                              (height, width), min_batch=1, opt_batch=batch_size, max_batch=batch_size)  # fmt: skip
    return f"""# {info.arch} for DeepStream

Written by peopleseg. Everything DeepStream needs is in this folder:

- `nvinfer_config.txt`: the Gst-nvinfer config (`[property]` group);
- `labels.txt`: the class names, one per line ({", ".join(info.classes)});
- `{onnx_name}`: the model. Input `input` float32 [N, 3, {height}, {width}]; output `output`:
  {kinds[output_kind]} [N, {", ".join(map(str, dims))}].

## Run

With NVIDIA's [deepstream_tao_apps](https://github.com/NVIDIA-AI-IOT/deepstream_tao_apps) built:

```bash
ds-tao-segmentation -c nvinfer_config.txt -i file:///path/video.mp4        # writes ./out.mp4; -d shows it instead
```

In your own pipeline or `deepstream-app`, use this file as the nvinfer config (`config-file-path` of `nvinfer`, or
`config-file` in deepstream-app's `[primary-gie]` group), for example:

```bash
gst-launch-1.0 uridecodebin uri=file:///path/video.mp4 ! m.sink_0 nvstreammux name=m batch-size=1 width=1280 \\
  height=720 ! nvinfer config-file-path=nvinfer_config.txt ! nvsegvisual width={width} height={height} ! \\
  nvvideoconvert ! nveglglessink
```

The first run builds a TensorRT engine ({precision}, batch {batch_size}), which takes minutes. To build it ahead:

```bash
{trtexec}
```

then uncomment `model-engine-file` in `nvinfer_config.txt`. These are TensorRT 10 flags: TensorRT 11 dropped `--fp16`
and `--int8` (every network is strongly typed), so there the ONNX itself must be FP16 (ModelOpt AutoCast) or
explicitly quantised, and the precision flag goes.

## Parser

{parser_text}

## Normalisation

{norm_text}

## Aspect ratio

{_aspect_text(info)}
"""


def _aspect_text(info: ModelInfo) -> str:
    if info.resize == "letterbox":
        return (
            "The model expects each frame letterboxed (its policy, saved with its weights), so the config sets "
            "`maintain-aspect-ratio=1` and `symmetric-padding=1`: nvinfer scales the frame to fit, keeping its aspect "
            "ratio, and pads it centred with black (peopleseg pads with the mean colour, so masks next to the bands "
            "may differ slightly). The segmentation output covers the padded network input: crop the bands off "
            "before mapping a mask back onto the frame."
        )
    return "Each frame is stretched to the network input (`maintain-aspect-ratio=0`), as TAO trains its models."


def parse_nvinfer_config(path: str | os.PathLike[str], group: str = "property") -> dict[str, str]:
    """Read one group of a Gst-nvinfer key file as {key: value}; comment and blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    values: dict[str, str] = {}
    current: str | None = None
    seen = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{path}: line {number}: malformed group header {line!r}")
            current = line[1:-1].strip()
            seen = seen or current == group
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}: line {number}: expected key=value, got {line!r}")
        if current is None:
            raise ConfigError(f"{path}: line {number}: key '{key.strip()}' comes before any [group]")
        if current == group:
            values[key.strip()] = value.strip()
    if not seen:
        raise ConfigError(f"{path}: no [{group}] group")
    return values
