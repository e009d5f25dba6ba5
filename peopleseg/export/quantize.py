"""INT8 post-training quantisation of an exported ONNX file, calibrated on real images, and an agreement check.

The result is a QDQ graph (QuantizeLinear/DequantizeLinear pairs around float ops): explicit quantisation that
onnxruntime fuses into integer kernels on CPU, and that TensorRT reads as is. What stays float by default, and why:

- the attention core (Q·Kᵀ, Softmax, ·V): 8-bit softmax probabilities cost accuracy, and onnxruntime's
  QLinearSoftmax is slower on CPU than the float one; the MatMuls with weights (Q, K, V, projections, MLPs) are
  quantised, the two that multiply activations are not;
- LayerNormalization: its statistics are sensitive to rounding, and it is cheap;
- the first Conv (the first patch embed) and the last Conv (the classifier): the usual first/last-layer
  exceptions. The first sees raw pixels, the last writes the logits that decide the mask, and both are cheap.

Only Conv and MatMul are quantised (plus Softmax/LayerNormalization when dropped from `keep_float`): quantising the
element-wise ops as well (Add, Resize, Concat) gained nothing measurable for B0 on CPU and cost agreement.

For TensorRT use `activation_type="int8"`: TensorRT only takes symmetric int8 Q/DQ, so activations are then
calibrated symmetrically (zero point 0). The CPU default is U8S8 (uint8 activations, int8 weights), the fastest
onnxruntime path on x86. On x86 CPUs without VNNI, U8S8 can saturate; `reduce_range=True` avoids that.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peopleseg.atomic import atomic_path
from peopleseg.data.image_io import IMAGE_SUFFIXES, read_image
from peopleseg.errors import ConfigError, DataError, ModelError, PeoplesegError
from peopleseg.models.info import ModelInfo
from peopleseg.resize_policy import single_input_policy

METHODS = ("minmax", "entropy", "percentile")
QUANT_TYPES = ("uint8", "int8")
FIRST_CONV, LAST_CONV = "first_conv", "last_conv"
# Fewer images than this calibrate ranges on too little data to trust (unless the caller asks for fewer).
MIN_CALIBRATION_IMAGES = 8
# Op types that only become quantised when dropped from `keep_float` (quantize_static quantises what it is given).
_OPTIONAL_OPS = ("Softmax", "LayerNormalization")
# Calibration runs this many images per pass: histogram calibrators hold every intermediate tensor of a pass in
# memory (hundreds of MB per 512x512 image), so passes are kept short and their statistics merged.
_MAX_PASS = 4

ImageSource = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass
class QuantizeConfig:
    method: str = "minmax"  # "minmax" | "entropy" | "percentile"
    calibration_count: int = 64
    per_channel: bool = True
    # Op types kept in float, plus FIRST_CONV / LAST_CONV for the first patch embed and the classifier.
    # Dropping "Softmax" also quantises the attention MatMuls around it; () quantises everything in `op_types`.
    keep_float: tuple[str, ...] = ("Softmax", "LayerNormalization", FIRST_CONV, LAST_CONV)
    activation_type: str = "uint8"  # "uint8" (fastest on CPU) | "int8" (symmetric; what TensorRT needs)
    weight_type: str = "int8"
    reduce_range: bool = False  # 7-bit weights: avoids U8S8 saturation on x86 without VNNI
    percentile: float = 99.999  # for method "percentile"
    # The op types quantised: Conv and MatMul carry nearly all of SegFormer's compute (see the module docstring).
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method '{self.method}'; choose from {', '.join(METHODS)}")
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in QUANT_TYPES:
                raise ConfigError(f"{name} must be one of {', '.join(QUANT_TYPES)}, got '{getattr(self, name)}'")
        if self.calibration_count < 1:
            raise ConfigError(f"calibration_count must be at least 1, got {self.calibration_count}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")


def find_images(folder: str | os.PathLike[str], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Every image under `folder`, recursively, sorted by relative path; hidden files and folders are skipped."""
    root = Path(folder)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    wanted = {s.lower() for s in suffixes}
    found = [
        path
        for path in root.rglob("*")
        if path.suffix.lower() in wanted
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def calibration_images(
    folder: str | os.PathLike[str], count: int, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[Path]:
    """Up to `count` images from `folder`: all of them, or an evenly spaced (deterministic) subsample.

    At least min(count, 8) must be there, so that the ranges are not calibrated on one or two pictures.
    """
    if count < 1:
        raise ConfigError(f"calibration count must be at least 1, got {count}")
    return _pick(find_images(folder, suffixes), count, str(Path(folder)))


def _pick(paths: list[Path], count: int, where: str) -> list[Path]:
    """At least `min(count, MIN_CALIBRATION_IMAGES)` images, thinned to `count` when there are more."""
    need = min(count, MIN_CALIBRATION_IMAGES)
    if len(paths) < need:
        raise DataError(f"{where}: {len(paths)} images, need at least {need} for calibration")
    if len(paths) > count:
        # Evenly spaced over the sorted list: sub-folders (scenes, subsets) stay represented in proportion.
        paths = [paths[i * len(paths) // count] for i in range(count)]
    return paths


def prepare_input(image: np.ndarray | str | os.PathLike[str], info: ModelInfo, normalize: bool = True) -> np.ndarray:
    """An RGB image (array or path) as the network input: float32 [1, 3, H, W] at `info.input_size`.

    Fitted by the model's own policy (`info.resize`: stretched, or letterboxed with the mean colour; bilinear,
    antialiased, torch's interpolate) and normalised with the model's mean/std, or left on the 0-255 scale when the
    graph normalises itself. Both steps are linear per channel, so their order changes nothing beyond float rounding.
    """
    from peopleseg.infer.resolution import prepare

    pixels = read_image(image) if not isinstance(image, np.ndarray) else image
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    tensor, _ = prepare(tensor, single_input_policy(info.resize), info.input_size, pad=torch.tensor(info.mean))
    if normalize:
        mean = torch.tensor(info.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(info.std, dtype=torch.float32).view(1, 3, 1, 1)
        tensor = (tensor - mean) / std
    return tensor.numpy()


def quantize_int8(
    onnx_in: str | os.PathLike[str],
    onnx_out: str | os.PathLike[str],
    calibration: ImageSource,
    info: ModelInfo | None = None,
    config: QuantizeConfig | None = None,
    normalize_in_graph: bool | None = None,
    progress: bool = True,
) -> Path:
    """Static INT8 quantisation (QDQ) of `onnx_in` into `onnx_out`, calibrated on real images.

    `calibration`: a folder (subsampled to `config.calibration_count`) or a list of image paths. `info` defaults to
    the file's peopleseg metadata; `normalize_in_graph` to its "normalized_in_graph" key. Returns `onnx_out`.
    """
    config = config or QuantizeConfig()
    config.validate()
    ort, quantization = _import_ort()
    source, target = Path(onnx_in), Path(onnx_out)
    meta = {p.key: p.value for p in _load_onnx(source, weights=False).metadata_props}
    info = info or _info_from_metadata(meta, source)
    in_graph = normalize_in_graph if normalize_in_graph is not None else meta.get("normalized_in_graph") == "true"
    images = _image_list(calibration, config.calibration_count)

    with tempfile.TemporaryDirectory(prefix="peopleseg_int8_") as work:
        prepared = _preprocess(source, Path(work) / "prepared.onnx", quantization)
        graph = _load_onnx(prepared)
        _name_nodes(graph)
        _unshare_initializers(graph)
        # Always quantise a copy in `work`: quantize_static writes "<model>-inferred.onnx" beside its input.
        prepared = Path(work) / "named.onnx"
        _save_onnx(graph, prepared)
        exclude, op_types = _exclusions(graph, config)
        input_arg = graph.graph.input[0]
        input_dtype = np.float16 if input_arg.type.tensor_type.elem_type == 10 else np.float32  # 10: FLOAT16
        extra: dict[str, Any] = {
            # A MatMul's float output feeds Add/Reshape; without Q/DQ there onnxruntime fuses it into
            # MatMulIntegerToFloat, faster and more exact than requantising. Conv keeps its output Q/DQ (QLinearConv).
            "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
        }
        if "LayerNormalization" in op_types:
            # Its scale is a vector: per-channel means along axis 0 (the default, 1, is out of range for rank 1).
            extra["QDQOpTypePerChannelSupportToAxis"] = {"LayerNormalization": 0}
        if config.activation_type == "int8":
            extra["ActivationSymmetric"] = True  # TensorRT takes zero-point-0 int8 Q/DQ only
            extra["QuantizeBias"] = False  # and float biases: it fuses them itself, and has no int32 dequantisation
        quantized = Path(work) / "int8.onnx"
        arguments = dict(
            quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=_quant_type(config.activation_type, quantization),
            weight_type=_quant_type(config.weight_type, quantization),
            nodes_to_exclude=exclude,
            calibrate_method=_calibration_method(config.method, quantization),
            extra_options=extra,
        )
        reader_args = (images, input_arg.name, info, not in_graph, input_dtype)
        try:
            # The calibrators print as they go: stdout is swallowed, and the progress bar is on stderr.
            with _progress_bar(len(images), progress) as advance, contextlib.redirect_stdout(io.StringIO()):
                reader = _ImageReader(*reader_args, advance)
                if "calibration_cache_path" in inspect.signature(quantization.quantize_static).parameters:
                    cache = _calibrate(prepared, Path(work), reader, op_types, config, quantization)
                    arguments.update(calibration_data_reader=None, calibration_cache_path=str(cache))
                else:  # an older onnxruntime: calibration inside quantize_static, with its default histogram sizes
                    extra.update(CalibStridedMinMax=_pass_size(len(images)), CalibPercentile=config.percentile)
                    arguments.update(calibration_data_reader=reader)
                quantization.quantize_static(str(prepared), str(quantized), **arguments)
        except PeoplesegError:
            raise  # e.g. an unreadable calibration image, named by read_image
        except Exception as exc:  # onnxruntime raises assorted types (RuntimeError, ValueError, Fail...)
            raise ModelError(f"{source}: INT8 quantisation failed ({_first_line(exc)})") from None
        result = _load_onnx(quantized)
        meta.update(
            precision="int8",
            calibration=f"{config.method}, {len(images)} images",
            quantization=f"QDQ {config.activation_type}/{config.weight_type}"
            + (", per-channel" if config.per_channel else "")
            + (f", float: {','.join(config.keep_float)}" if config.keep_float else ""),
        )
        _set_metadata(result, meta)
        with atomic_path(target) as temp:
            _save_onnx(result, temp)
            _check_loads(temp, target, ort)
    return target


def agreement(
    onnx_a: str | os.PathLike[str],
    onnx_b: str | os.PathLike[str],
    images: ImageSource,
    info: ModelInfo | None = None,
    threads: int = 2,
    normalize_in_graph: bool | None = None,
) -> dict[str, float]:
    """Run two ONNX files (onnxruntime CPU) on the same real images and compare their outputs.

    Returns "images" (count), "max_abs_diff" and "mean_abs_diff" (NaN unless both give float outputs of one shape)
    and "agreement": the fraction of pixels with the same class (argmax over channels of logits or probabilities,
    or the class ids themselves for label outputs). `images`: a folder (every image in it) or a list of paths.
    """
    ort, _ = _import_ort()
    paths = [Path(onnx_a), Path(onnx_b)]
    metas = [{p.key: p.value for p in _load_onnx(path, weights=False).metadata_props} for path in paths]
    if info is None:
        found = next((i for i, m in enumerate(metas) if "peopleseg" in m), 0)
        info = _info_from_metadata(metas[found], paths[found])
    files = find_images(images) if isinstance(images, (str, os.PathLike)) else [Path(p) for p in images]
    if not files:
        raise DataError(f"{images}: no images to compare the models on")
    sessions = [_session(path, threads, ort) for path in paths]
    normalize = [
        not (normalize_in_graph if normalize_in_graph is not None else meta.get("normalized_in_graph") == "true")
        for meta in metas
    ]
    equal = total = 0
    max_diff, diff_sum, diff_count, comparable = 0.0, 0.0, 0, True
    for file in files:
        pixels = read_image(file)
        outputs = []
        for session, norm in zip(sessions, normalize, strict=True):
            batch = prepare_input(pixels, info, normalize=norm)
            arg = session.get_inputs()[0]
            batch = batch.astype(np.float16 if arg.type == "tensor(float16)" else np.float32)
            outputs.append(np.asarray(session.run(None, {arg.name: batch})[0]))
        a, b = outputs
        labels_a, labels_b = _labels(a), _labels(b)
        if labels_a.shape != labels_b.shape:
            raise ModelError(f"{paths[0]} and {paths[1]}: outputs of shapes {a.shape} and {b.shape} do not compare")
        equal += int(np.count_nonzero(labels_a == labels_b))
        total += labels_a.size
        if comparable and _is_float(a) and _is_float(b) and a.shape == b.shape:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            max_diff = max(max_diff, float(diff.max()))
            diff_sum, diff_count = diff_sum + float(diff.sum()), diff_count + diff.size
        else:
            comparable = False
    nan = float("nan")
    return {
        "images": float(len(files)),
        "max_abs_diff": max_diff if comparable else nan,
        "mean_abs_diff": diff_sum / diff_count if comparable else nan,
        "agreement": equal / total,
    }


class _ImageReader:
    """Feeds calibration images one at a time; `set_range` lets onnxruntime calibrate in short passes."""

    def __init__(
        self,
        paths: list[Path],
        input_name: str,
        info: ModelInfo,
        normalize: bool,
        dtype: type,
        advance: Callable[[], None],
    ) -> None:
        self.paths, self.input_name, self.info, self.normalize = paths, input_name, info, normalize
        self.dtype, self.advance = dtype, advance
        self.index, self.end = 0, len(paths)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= self.end:
            return None
        batch = prepare_input(self.paths[self.index], self.info, self.normalize).astype(self.dtype)
        self.index += 1
        self.advance()
        return {self.input_name: batch}

    def __iter__(self) -> _ImageReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.index, self.end = start_index, min(end_index, len(self.paths))


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar over the calibration images; yields the `advance()` the reader calls per image."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("calibrating INT8"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not enabled, transient=True) as bar:
        task = bar.add_task("calibrate", total=total)
        yield lambda: bar.advance(task)


def _import_ort() -> tuple[Any, Any]:
    try:
        import onnxruntime as ort
        import onnxruntime.quantization as quantization
    except ImportError:
        raise ModelError("INT8 export needs onnxruntime: pip install onnx onnxruntime") from None
    return ort, quantization


def _load_onnx(path: Path, weights: bool = True) -> Any:
    import onnx

    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX file")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as exc:  # onnx raises DecodeError and friends for a bad file
        raise ModelError(f"{path}: not a readable ONNX file ({exc.__class__.__name__})") from None


def _save_onnx(model: Any, path: Path) -> None:
    import onnx

    try:
        onnx.save(model, str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot write the ONNX file ({_first_line(exc)})") from None


def _info_from_metadata(meta: dict[str, str], source: Path) -> ModelInfo:
    if "peopleseg" not in meta:
        raise ModelError(f"{source}: no peopleseg metadata; pass info= (normalisation and input size)")
    try:
        data = json.loads(meta["peopleseg"])
    except json.JSONDecodeError:
        raise ModelError(f"{source}: the 'peopleseg' metadata is not valid JSON") from None
    return ModelInfo.from_dict(data, source=str(source))


def _image_list(calibration: ImageSource, count: int) -> list[Path]:
    if isinstance(calibration, (str, os.PathLike)):
        return calibration_images(calibration, count)
    return _pick([Path(p) for p in calibration], count, "calibration")


def _preprocess(source: Path, prepared: Path, quantization: Any) -> Path:
    """Symbolic shape inference and graph optimisation, which onnxruntime recommends before quantising.

    Some graphs defeat the symbolic shape inference; those are quantised as they are, with a warning.
    """
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(source), str(prepared))
        return prepared
    except Exception as exc:  # an optional step: any failure only costs the optimisation
        warnings.warn(
            f"{source}: quant_pre_process failed ({_first_line(exc)}); quantising the graph as exported", stacklevel=3
        )
        return source


def _name_nodes(graph: Any) -> None:
    """Give unnamed nodes a name: exclusions are by node name."""
    taken = {node.name for node in graph.graph.node if node.name}
    for index, node in enumerate(graph.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _unshare_initializers(graph: Any) -> None:
    """Give every node its own copy of each float initializer it shares with other nodes.

    onnxslim merges initializers with equal values (all-zero biases, all-one norm scales: common in a freshly
    initialised model). Shared between a quantised Conv and a float one, a bias would be quantised with the first
    Conv's scales and dequantised for both, so a node meant to stay float would be fed a DequantizeLinear.
    """
    from onnx import TensorProto

    floats = {
        init.name: init
        for init in graph.graph.initializer
        if init.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    }
    seen: set[str] = set()
    for node in graph.graph.node:
        for slot, name in enumerate(node.input):
            if name not in floats:
                continue
            if name in seen:
                copy = type(floats[name])()
                copy.CopyFrom(floats[name])
                copy.name = f"{name}__{node.name}_{slot}"
                graph.graph.initializer.append(copy)
                node.input[slot] = copy.name
            else:
                seen.add(name)


def _exclusions(graph: Any, config: QuantizeConfig) -> tuple[list[str], list[str]]:
    """(node names kept in float, op types to quantise) from `keep_float`."""
    nodes = list(graph.graph.node)  # ONNX graphs are topologically sorted: the first Conv meets the pixels first
    convs = [node.name for node in nodes if node.op_type == "Conv"]
    keep_types = {name for name in config.keep_float if name not in (FIRST_CONV, LAST_CONV)}
    exclude = [node.name for node in nodes if node.op_type in keep_types]
    if "Softmax" in keep_types:
        # The attention's MatMuls (Q·Kᵀ and ·V) multiply two activations: keep them float with the Softmax between
        # them, so that it is neither fed nor read through Q/DQ. (The QDQ quantizer ignores "MatMulConstBOnly".)
        weights = {init.name for init in graph.graph.initializer}
        exclude += [
            node.name for node in nodes if node.op_type == "MatMul" and not any(name in weights for name in node.input)
        ]
    if convs and FIRST_CONV in config.keep_float:
        exclude.append(convs[0])
    if convs and LAST_CONV in config.keep_float:
        exclude.append(convs[-1])
    op_types = [op for op in config.op_types if op not in keep_types]
    op_types += [op for op in _OPTIONAL_OPS if op not in keep_types and op not in op_types]
    return list(dict.fromkeys(exclude)), op_types


def _calibrate(
    model: Path, work: Path, reader: _ImageReader, op_types: list[str], config: QuantizeConfig, quantization: Any
) -> Path:
    """Collect activation ranges in short passes and write them as a calibration cache for quantize_static.

    Done here rather than inside quantize_static for two reasons: quantize_static cannot set the histogram sizes,
    and its entropy default (128 bins for 128 quantised levels) can never clip, which makes it MinMax under another
    name. Entropy here uses 512 bins, so it may clip down to a quarter of the observed range; TensorRT's 2048 take
    about 100 s for B0 (2 cores) in onnxruntime's pure-Python threshold search, 512 about 20 s. And short passes
    bound the memory.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options: dict[str, Any] = {}
    if config.method == "entropy":
        options = {"num_bins": 512, "num_quantized_bins": 128}
    elif config.method == "percentile":
        options = {"num_bins": 2048, "percentile": config.percentile}
    calibrator = create_calibrator(
        model,
        op_types,
        augmented_model_path=str(work / "augmented.onnx"),
        calibrate_method=_calibration_method(config.method, quantization),
        extra_options=options,
    )
    for start in range(0, len(reader), _MAX_PASS):
        reader.set_range(start, start + _MAX_PASS)
        calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    cache = work / "calibration.json"
    save_tensors_data(ranges, cache)
    return cache


def _pass_size(count: int) -> int:
    """The largest divisor of `count` up to _MAX_PASS (onnxruntime wants passes of equal size)."""
    return max(d for d in range(1, min(count, _MAX_PASS) + 1) if count % d == 0)


def _quant_type(name: str, quantization: Any) -> Any:
    return quantization.QuantType.QUInt8 if name == "uint8" else quantization.QuantType.QInt8


def _calibration_method(name: str, quantization: Any) -> Any:
    methods = quantization.CalibrationMethod
    return {"minmax": methods.MinMax, "entropy": methods.Entropy, "percentile": methods.Percentile}[name]


def _set_metadata(model: Any, meta: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)


def _session(path: Path, threads: int, ort: Any) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the CPU provider's fp16 fallbacks are not the user's concern
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise ModelError(f"{path}: onnxruntime cannot load it ({_first_line(exc)})") from None


def _check_loads(temp: Path, target: Path, ort: Any) -> None:
    try:
        _session(temp, 1, ort)
    except ModelError as exc:
        raise ModelError(str(exc).replace(str(temp), str(target), 1)) from None


def _labels(output: np.ndarray) -> np.ndarray:
    """Class ids [N, H, W] from logits/probabilities [N, C, H, W] or label maps [N, 1, H, W] / [N, H, W, 1]."""
    if _is_float(output):
        return output.argmax(1)
    if output.ndim == 4:
        return output[:, 0] if output.shape[1] == 1 else output[..., 0]
    return output


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:200]


__all__ = [
    "FIRST_CONV",
    "IMAGE_SUFFIXES",
    "LAST_CONV",
    "METHODS",
    "QuantizeConfig",
    "agreement",
    "calibration_images",
    "find_images",
    "prepare_input",
    "quantize_int8",
]
