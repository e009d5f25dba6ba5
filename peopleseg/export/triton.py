"""A Triton Inference Server model repository entry for a peopleseg model:

    repo_dir/model_name/config.pbtxt
    repo_dir/model_name/labels.txt
    repo_dir/model_name/1/model.onnx   (platform onnxruntime_onnx)   or   1/model.plan   (platform tensorrt_plan)

`config.pbtxt` is Triton's protobuf text format (`inference.ModelConfig`): input `input` TYPE_FP32 [3, H, W] and
output `output` by kind (TYPE_INT64 [1, H, W] class ids, TYPE_FP32 [C, H/4, W/4] logits or [C, H, W] probabilities);
with max_batch_size > 0 the dims leave out the batch axis, which Triton adds. The input is normalised by the client
(mean/std are in the header comment) unless the ONNX normalises in its graph.

`validate_config_pbtxt` checks a config: with `tritonclient` installed, against Triton's own protobuf schema; always
with a small text-format parser here, whose result it returns as plain dicts and lists.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from peopleseg.atomic import atomic_open
from peopleseg.errors import ConfigError, ModelError
from peopleseg.export.deepstream import (
    check_onnx_model,
    check_output_kind,
    copy_into,
    inspect_onnx,
    labels_text,
    output_dims,
    staged_folder,
)
from peopleseg.models.info import ModelInfo

INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU", "KIND_AUTO", "KIND_MODEL")
DATA_TYPES = (
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32",
    "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
)  # fmt: skip
PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan")}
PLATFORMS[".engine"] = PLATFORMS[".plan"]
# Fields of ModelConfig (and the messages inside it) that are repeated, so always lists in the parsed dict.
REPEATED = {"input", "output", "instance_group", "dims", "preferred_batch_size", "gpus", "reshape"}
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def write_triton_repository(
    repo_dir: str | os.PathLike[str],
    model_name: str,
    model_file: str | os.PathLike[str],
    info: ModelInfo,
    output_kind: str,
    max_batch_size: int = 8,
    preferred_batch_sizes: tuple[int, ...] = (4, 8),
    max_queue_delay_us: int = 100,
    instance_count: int = 1,
    kind: str = "KIND_GPU",
) -> list[Path]:
    """Write `repo_dir/model_name/` (config, labels, version 1 of the model); returns the paths written.

    `max_batch_size=0` turns batching off (the dims then include the batch axis as -1, and there is no dynamic
    batching). Preferred batch sizes above `max_batch_size` are dropped, since Triton would refuse them. Files already
    in the model folder that this does not write (other versions) are kept; the written ones appear all together.
    """
    model_file = Path(model_file)
    check_output_kind(output_kind)
    if not isinstance(model_name, str) or not MODEL_NAME.fullmatch(model_name) or model_name in (".", ".."):
        raise ConfigError(f"model name {model_name!r} must be letters, digits, '_', '-' or '.'")
    if model_file.suffix.lower() not in PLATFORMS:
        raise ModelError(f"{model_file}: Triton takes an .onnx, .plan or .engine file here")
    platform, file_name = PLATFORMS[model_file.suffix.lower()]
    if not model_file.is_file():
        raise ModelError(f"{model_file}: no such model file")
    if not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise ConfigError(f"max_batch_size must be an integer >= 0, got {max_batch_size!r}")
    if any(not isinstance(size, int) or size < 1 for size in preferred_batch_sizes):
        raise ConfigError(f"preferred batch sizes must be positive integers, got {list(preferred_batch_sizes)}")
    if not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise ConfigError(f"max_queue_delay_us must be an integer >= 0, got {max_queue_delay_us!r}")
    if not isinstance(instance_count, int) or instance_count < 1:
        raise ConfigError(f"instance_count must be a positive integer, got {instance_count!r}")
    if kind not in INSTANCE_KINDS:
        raise ConfigError(f"unknown instance kind '{kind}'; choose from {', '.join(INSTANCE_KINDS)}")
    if platform == "tensorrt_plan" and kind == "KIND_CPU":
        raise ConfigError("a TensorRT plan runs on the GPU only; use kind KIND_GPU")

    layout, external = "chw", []
    if platform == "onnxruntime_onnx":
        summary = inspect_onnx(model_file)
        if summary is not None:
            check_onnx_model(summary, info, output_kind)
            layout = summary.argmax_layout if output_kind == "argmax" else "chw"
            external = summary.external_data  # weights stored beside the ONNX go beside model.onnx too
    labels = labels_text(info)
    preferred = sorted({size for size in preferred_batch_sizes if size <= max_batch_size})
    text = _config_text(model_name, platform, info, output_kind, layout, max_batch_size, preferred,
                        max_queue_delay_us, instance_count, kind)  # fmt: skip

    repo_dir = Path(repo_dir)
    if repo_dir.exists() and not repo_dir.is_dir():
        raise ConfigError(f"{repo_dir}: exists and is not a folder")
    target = repo_dir / model_name
    names = ["config.pbtxt", "labels.txt", f"1/{file_name}"]
    try:
        with staged_folder(target) as stage:
            with atomic_open(stage / "labels.txt", "w", encoding="utf-8") as stream:
                stream.write(labels)
            with atomic_open(stage / "config.pbtxt", "w", encoding="utf-8") as stream:
                stream.write(text)
            (stage / "1").mkdir()
            copy_into(model_file, stage / "1", file_name)
            for location in external:
                (stage / "1" / location).parent.mkdir(parents=True, exist_ok=True)
                copy_into(model_file.parent / location, stage / "1", location)
                names.append(f"1/{location}")
            validate_config_pbtxt(stage / "config.pbtxt")  # what we promise Triton, checked before it lands
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write the Triton model ({exc.strerror or exc})") from None
    return [target / name for name in names]


def _config_text(
    name: str,
    platform: str,
    info: ModelInfo,
    output_kind: str,
    layout: str,
    max_batch_size: int,
    preferred: list[int],
    delay_us: int,
    count: int,
    kind: str,
) -> str:
    height, width = info.input_size
    batch = [] if max_batch_size > 0 else [-1]  # with batching on, Triton prepends the batch axis itself
    in_dims = [*batch, 3, height, width]
    out_dims = [*batch, *output_dims(info, output_kind, layout)]
    out_type = "TYPE_INT64" if output_kind == "argmax" else "TYPE_FP32"
    lines = [
        f"# Triton model config written by peopleseg for {info.arch}: {output_kind} output, classes "
        f"{', '.join(info.classes)}.",
        f"# Clients feed RGB as (pixel - mean) / std with mean {list(info.mean)} and std {list(info.std)} (0-255),",
        "# unless the ONNX normalises inside its graph (then raw 0-255 RGB).",
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        "  {",
        '    name: "input"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {', '.join(map(str, in_dims))} ]",
        "  }",
        "]",
        "output [",
        "  {",
        '    name: "output"',
        f"    data_type: {out_type}",
        f"    dims: [ {', '.join(map(str, out_dims))} ]",
        '    label_filename: "labels.txt"',
        "  }",
        "]",
    ]
    if max_batch_size > 0:
        lines.append("dynamic_batching {")
        if preferred:
            lines.append(f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]")
        lines += [f"  max_queue_delay_microseconds: {delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {count}", f"    kind: {kind}", "  }", "]"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Reading and checking config.pbtxt.

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\f\v]+)|(?P<newline>\n)|(?P<comment>\#[^\n]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan)(?![\w.]))
    |(?P<ident>[A-Za-z_][\w.]*)|(?P<punct>[{}\[\]:,;<>])""",
    re.VERBOSE,
)


_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _tokens(text: str, path: Path) -> list[tuple[str, str, int]]:
    tokens, line, pos = [], 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ModelError(f"{path}: line {line}: unexpected character {text[pos]!r}")
        kind, value = match.lastgroup or "", match.group()
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            tokens.append((kind, value, line))
        pos = match.end()
    return tokens


class _Parser:
    """Protobuf text format, the part Triton configs use: fields, nested messages, lists, scalars and enums."""

    def __init__(self, text: str, path: Path) -> None:
        self.path, self.tokens, self.pos = path, _tokens(text, path), 0

    def error(self, message: str) -> ModelError:
        line = self.tokens[min(self.pos, len(self.tokens) - 1)][2] if self.tokens else 1
        return ModelError(f"{self.path}: line {line}: {message}")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise self.error(f"expected {value!r} but the file ends" if value else "unexpected end of file")
        if value is not None and token[1] != value:
            raise self.error(f"expected {value!r}, got {token[1]!r}")
        self.pos += 1
        return token

    def message(self, end: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        while True:
            token = self.peek()
            if token is None:
                if end is not None:
                    raise self.error(f"missing {end!r}")
                return fields
            if end is not None and token[1] == end:
                self.pos += 1
                return fields
            kind, name, _ = self.take()
            if kind != "ident":
                raise self.error(f"expected a field name, got {name!r}")
            colon = self.peek() is not None and self.peek()[1] == ":"  # type: ignore[index]
            if colon:
                self.pos += 1
            value = self.value(name, colon)
            if name in fields:  # a repeated field written once per element
                previous = fields[name] if isinstance(fields[name], list) else [fields[name]]
                fields[name] = previous + (value if isinstance(value, list) else [value])
            else:
                fields[name] = value
            if self.peek() is not None and self.peek()[1] in (",", ";"):  # type: ignore[index]
                self.pos += 1

    def value(self, name: str, colon: bool) -> Any:
        token = self.peek()
        if token is None:
            raise self.error(f"field '{name}' has no value")
        if token[1] in ("{", "<"):
            self.pos += 1
            return self.message("}" if token[1] == "{" else ">")
        if token[1] == "[":
            self.pos += 1
            items: list[Any] = []
            while True:
                if self.peek() is not None and self.peek()[1] == "]":  # type: ignore[index]
                    self.pos += 1
                    return items
                items.append(self.value(name, True))
                following = self.take()
                if following[1] == "]":
                    return items
                if following[1] != ",":
                    raise self.error(f"expected ',' or ']' in '{name}', got {following[1]!r}")
        if not colon:
            raise self.error(f"expected ':' after '{name}'")
        kind, text, _ = self.take()
        if kind == "string":
            return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])
        if kind == "number":
            try:
                return int(text)
            except ValueError:
                return float(text)
        if kind == "ident":
            return {"true": True, "false": False}.get(text, text)
        raise self.error(f"field '{name}' has no value (got {text!r})")


def parse_pbtxt(text: str, path: str | os.PathLike[str] = "config.pbtxt") -> dict[str, Any]:
    """Parse protobuf text format into dicts; repeated fields (written as [..] or more than once) become lists."""
    return _Parser(text, Path(path)).message(None)


def validate_config_pbtxt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a Triton config.pbtxt and return it as a dict; raise a one-line ModelError when it is malformed.

    Checks: the syntax (and Triton's schema when tritonclient is installed); a name equal to the model folder's; a
    platform or backend; max_batch_size >= 0; inputs and outputs with names, known data types and integer dims;
    dynamic batching only with batching on and preferred sizes within max_batch_size; instance groups with a known
    kind and count >= 1; a label file that exists beside the config.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    _check_with_triton_schema(text, path)
    config = parse_pbtxt(text, path)
    for key in REPEATED & set(config):
        config[key] = _as_list(config[key])

    def fail(message: str) -> ModelError:
        return ModelError(f"{path}: {message}")

    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise fail("'name' is missing")
    folder = path.parent.name
    if not folder.startswith(".") and name != folder:  # a staged copy sits in a hidden temporary folder
        raise fail(f"name '{name}' differs from the model folder '{folder}'")
    if not isinstance(config.get("platform", config.get("backend")), str):
        raise fail("neither 'platform' nor 'backend' is set")
    batch = config.get("max_batch_size", 0)
    if not isinstance(batch, int) or batch < 0:
        raise fail(f"max_batch_size must be an integer >= 0, got {batch!r}")
    for group in ("input", "output"):
        tensors = config.get(group, [])
        if not tensors:
            raise fail(f"no '{group}' is declared")
        for tensor in tensors:
            _check_tensor(tensor, group, path)
            label = tensor.get("label_filename")
            if label is not None and not (path.parent / label).is_file():
                raise fail(f"{group} '{tensor['name']}' names label file '{label}', which is not beside the config")
    dynamic = config.get("dynamic_batching")
    if dynamic is not None:
        if not isinstance(dynamic, dict):
            raise fail("'dynamic_batching' must be a message { ... }")
        if batch == 0:
            raise fail("dynamic_batching needs max_batch_size > 0")
        sizes = dynamic["preferred_batch_size"] = _as_list(dynamic.get("preferred_batch_size", []))
        if any(not isinstance(s, int) or not 1 <= s <= batch for s in sizes):
            raise fail(f"preferred_batch_size {sizes} must lie in 1..max_batch_size ({batch})")
        delay = dynamic.get("max_queue_delay_microseconds", 0)
        if not isinstance(delay, int) or delay < 0:
            raise fail(f"max_queue_delay_microseconds must be an integer >= 0, got {delay!r}")
    for group in config.get("instance_group", []):
        if not isinstance(group, dict):
            raise fail("each instance_group must be a message { ... }")
        if group.get("kind", "KIND_AUTO") not in INSTANCE_KINDS:
            raise fail(f"unknown instance_group kind {group.get('kind')!r}")
        count = group.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise fail(f"instance_group count must be a positive integer, got {count!r}")
    return config


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_tensor(tensor: Any, group: str, path: Path) -> None:
    if not isinstance(tensor, dict):
        raise ModelError(f"{path}: each {group} must be a message {{ ... }}")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise ModelError(f"{path}: an {group} has no name")
    if tensor.get("data_type") not in DATA_TYPES:
        raise ModelError(f"{path}: {group} '{name}' has unknown data_type {tensor.get('data_type')!r}")
    dims = tensor["dims"] = _as_list(tensor.get("dims", []))
    if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d < -1 or d == 0 for d in dims):
        raise ModelError(f"{path}: {group} '{name}' needs dims of positive integers or -1, got {dims}")


def _check_with_triton_schema(text: str, path: Path) -> None:
    """Parse with Triton's own ModelConfig message when tritonclient (or tritonserver's python) provides it."""
    model_config = None
    for module in ("tritonclient.grpc.model_config_pb2", "tritonclient.grpc.aio.model_config_pb2"):
        try:
            model_config = __import__(module, fromlist=["ModelConfig"])
            break
        except ImportError:
            continue
    if model_config is None:
        return
    from google.protobuf import text_format

    try:
        text_format.Parse(text, model_config.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelError(f"{path}: not a valid Triton ModelConfig ({' '.join(str(exc).split())})") from None
