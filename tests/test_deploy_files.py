"""Deployment files: the DeepStream folder, the Triton model repository and the TensorRT engine build.

One real ONNX (a random segformer_b0, exported once) checks the logits kind end to end; small hand-made ONNX graphs
with the same names, types and metadata stand in for the argmax and probs kinds, whose graphs we never run here.
TensorRT is absent on this machine, so `build_engine` runs against a fake `tensorrt` module that records the calls.
"""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from peopleseg.errors import ConfigError, ModelError
from peopleseg.export import deepstream
from peopleseg.export.deepstream import (
    inspect_onnx,
    parse_nvinfer_config,
    write_deepstream,
)
from peopleseg.export.tensorrt import build_engine, trtexec_command
from peopleseg.export.triton import parse_pbtxt, validate_config_pbtxt, write_triton_repository
from peopleseg.models.info import HALF_MEAN, HALF_STD, ModelInfo

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

# NVIDIA's own citysemsegformer config uses exactly 1/mean(ImageNet std) = 1/57.63.
NVIDIA_IMAGENET_SCALE = 0.01735207357279195


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def real_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelInfo]:
    import peopleseg
    from peopleseg.export.onnx_export import export_onnx

    model = peopleseg.build_model("segformer_b0")
    path = tmp_path_factory.mktemp("onnx") / "people.onnx"
    export_onnx(model, path, check=False)
    return path, model.info


def synthetic_onnx(
    path: Path,
    kind: str,
    info: ModelInfo,
    normalized: bool = False,
    quantized: bool = False,
    hwc: bool = False,
    half_output: bool = False,
    external: bool = False,
) -> Path:
    """A tiny graph with the real model's interface: 1x1 conv to C classes, then the kind's head."""
    height, width = info.input_size
    classes = info.num_classes
    nodes, source = [], "input"
    weights = np.full((classes, 3, 1, 1), 0.1, dtype=np.float32)
    initializers = [onnx.numpy_helper.from_array(weights, "w")]  # raw bytes, so it can live in an external file
    if quantized:
        initializers += [
            helper.make_tensor("scale", TensorProto.FLOAT, [], [0.02]),
            helper.make_tensor("zero", TensorProto.INT8, [], [0]),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
        ]
        source = "dq"
    nodes.append(helper.make_node("Conv", [source, "w"], ["scores"]))
    if kind == "logits":  # the real graph ends at 1/4 scale; a stride-4 pool stands in for it
        nodes.append(helper.make_node("AveragePool", ["scores"], ["output"], kernel_shape=[4, 4], strides=[4, 4]))
        out_type, out_shape = TensorProto.FLOAT, ["batch", classes, height // 4, width // 4]
    elif kind == "probs":
        nodes.append(helper.make_node("Softmax", ["scores"], ["output"], axis=1))
        out_type, out_shape = TensorProto.FLOAT, ["batch", classes, height, width]
    elif hwc:  # TAO 5 writes class ids as N x H x W x 1
        nodes.append(helper.make_node("ArgMax", ["scores"], ["ids"], axis=1, keepdims=1))
        nodes.append(helper.make_node("Transpose", ["ids"], ["output"], perm=[0, 2, 3, 1]))
        out_type, out_shape = TensorProto.INT64, ["batch", height, width, 1]
    else:
        nodes.append(helper.make_node("ArgMax", ["scores"], ["output"], axis=1, keepdims=1))
        out_type, out_shape = TensorProto.INT64, ["batch", 1, height, width]
    if half_output:  # an FP16 conversion that did not keep float32 outputs
        nodes[-1].output[0] = "output32"
        nodes.append(helper.make_node("Cast", ["output32"], ["output"], to=TensorProto.FLOAT16))
        out_type = TensorProto.FLOAT16
    graph = helper.make_graph(
        nodes,
        "people",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, height, width])],
        [helper.make_tensor_value_info("output", out_type, out_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {
        "peopleseg": json.dumps(info.to_dict()),
        "output_kind": kind,
        "normalized_in_graph": "true" if normalized else "false",
    }
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    if external:  # weights in a file beside the ONNX, as large models are saved
        onnx.save(model, str(path), save_as_external_data=True, location=f"{path.stem}.weights", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def half_info() -> ModelInfo:
    return ModelInfo(arch="segformer_fan_base_hybrid", mean=HALF_MEAN, std=HALF_STD)


# --------------------------------------------------------------------------------------------------------------------
# DeepStream


@pytest.mark.parametrize(("precision", "mode"), [("fp32", "0"), ("fp16", "2")])
def test_deepstream_logits_imagenet_stats(real_onnx, tmp_path: Path, precision: str, mode: str) -> None:
    onnx_file, info = real_onnx
    out = tmp_path / "ds"
    with pytest.warns(UserWarning, match=r"1/mean\(std\)"):
        written = write_deepstream(out, onnx_file, info, "logits", precision=precision, batch_size=4)
    assert all(path.is_file() for path in written)
    assert {p.name for p in written} == {"nvinfer_config.txt", "labels.txt", "README.md", "people.onnx"}
    config = parse_nvinfer_config(out / "nvinfer_config.txt")
    height, width = info.input_size
    assert config["gpu-id"] == "0"
    assert config["onnx-file"] == "people.onnx"
    assert (out / "people.onnx").read_bytes() == onnx_file.read_bytes()  # a self-contained folder
    assert config["infer-dims"] == f"3;{height};{width}"
    assert config["batch-size"] == "4"
    assert config["network-mode"] == mode
    assert config["network-type"] == "2"
    assert config["num-detected-classes"] == str(len(info.classes)) == "2"
    # ImageNet std differs per channel: one scalar, 1/mean(std), with a comment saying so.
    assert float(config["net-scale-factor"]) == pytest.approx(3 / sum(info.std), rel=1e-15)
    assert float(config["net-scale-factor"]) == NVIDIA_IMAGENET_SCALE
    assert config["offsets"] == "123.675;116.28;103.53"
    text = (out / "nvinfer_config.txt").read_text()
    assert "# Note: std differs per channel" in text and "1/mean(std)" in text
    assert config["model-color-format"] == "0"
    assert config["output-blob-names"] == "output"
    assert config["segmentation-threshold"] == "0.0"
    assert config["labelfile-path"] == "labels.txt"
    assert config["parse-segmentation-func-name"] == "NvDsInferParseCustomSegformerTAO2"
    assert config["custom-lib-path"].endswith("/libnvds_infercustomparser_tao.so")
    assert "model-engine-file" not in config  # only suggested, in nvinfer's own naming
    assert f"# model-engine-file=people.onnx_b4_gpu0_{precision}.engine" in text
    assert "int8-calib-file" not in config
    for line in text.splitlines():  # GLib's key files have no trailing comments
        assert line.startswith("#") or "#" not in line
    assert (out / "labels.txt").read_text() == "background\nperson\n"
    readme = (out / "README.md").read_text()
    assert "ds-tao-segmentation -c nvinfer_config.txt -i file:///" in readme
    assert "NvDsInferParseCustomSegformerTAO2" in readme and NVIDIA_IMAGENET_SCALE.__repr__() in readme


def test_deepstream_argmax_half_stats(tmp_path: Path) -> None:
    info = half_info()
    onnx_file = synthetic_onnx(tmp_path / "deployable.onnx", "argmax", info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal std: nothing to warn about
        write_deepstream(tmp_path / "ds", onnx_file, info, "argmax", precision="fp16")
    config = parse_nvinfer_config(tmp_path / "ds" / "nvinfer_config.txt")
    assert config["net-scale-factor"] == "0.00784313725490196"
    assert float(config["net-scale-factor"]) == 1 / 127.5
    assert config["offsets"] == "127.5;127.5;127.5"
    assert config["parse-segmentation-func-name"] == "NvDsInferParseCustomSegformerTAO"  # int64 class ids
    assert "Note:" not in (tmp_path / "ds" / "nvinfer_config.txt").read_text()
    assert config["maintain-aspect-ratio"] == "0" and "symmetric-padding" not in config  # stretched, as TAO


def test_deepstream_letterboxes_a_letterbox_model(tmp_path: Path) -> None:
    info = half_info()
    info.resize = "letterbox"
    onnx_file = synthetic_onnx(tmp_path / "people.onnx", "argmax", info)
    write_deepstream(tmp_path / "ds", onnx_file, info, "argmax", precision="fp16")
    config = parse_nvinfer_config(tmp_path / "ds" / "nvinfer_config.txt")
    assert config["maintain-aspect-ratio"] == "1" and config["symmetric-padding"] == "1"  # padded centred, as ours


def test_deepstream_probs_normalised_in_graph(tmp_path: Path) -> None:
    info = ModelInfo(arch="segformer_b0", classes=["background", "person", "bag"])
    onnx_file = synthetic_onnx(tmp_path / "probs.onnx", "probs", info, normalized=True)
    write_deepstream(tmp_path / "ds", onnx_file, info, "probs", normalized_in_graph=True, segmentation_threshold=0.5)
    config = parse_nvinfer_config(tmp_path / "ds" / "nvinfer_config.txt")
    assert config["net-scale-factor"] == "1.0" and config["offsets"] == "0;0;0"
    assert config["num-detected-classes"] == "3"
    assert config["segmentation-threshold"] == "0.5"
    assert "parse-segmentation-func-name" not in config and "custom-lib-path" not in config  # built-in parser
    assert (tmp_path / "ds" / "labels.txt").read_text().splitlines() == ["background", "person", "bag"]
    # The file normalises in its graph: a config that normalises again is refused.
    with pytest.raises(ModelError) as error:
        write_deepstream(tmp_path / "again", onnx_file, info, "probs", normalized_in_graph=False)
    assert "normalises inside the graph" in one_line(error)
    assert not (tmp_path / "again").exists()


def test_deepstream_int8(real_onnx, tmp_path: Path) -> None:
    info = half_info()
    qdq = synthetic_onnx(tmp_path / "qdq.onnx", "logits", info, quantized=True)
    write_deepstream(tmp_path / "qdq", qdq, info, "logits", precision="int8")
    config = parse_nvinfer_config(tmp_path / "qdq" / "nvinfer_config.txt")
    assert config["network-mode"] == "1" and "int8-calib-file" not in config  # QDQ carries its own scales

    onnx_file, real_info = real_onnx
    calibration = tmp_path / "calibration.bin"
    calibration.write_bytes(b"TRT-INT8-EntropyCalibration2\n")
    with pytest.warns(UserWarning):
        written = write_deepstream(tmp_path / "cal", onnx_file, real_info, "logits", "int8",
                                   calibration_file=str(calibration), engine_file="people_int8.engine")  # fmt: skip
    config = parse_nvinfer_config(tmp_path / "cal" / "nvinfer_config.txt")
    assert config["int8-calib-file"] == "calibration.bin" and tmp_path / "cal" / "calibration.bin" in written
    assert (tmp_path / "cal" / "calibration.bin").read_bytes() == calibration.read_bytes()
    assert config["model-engine-file"] == "people_int8.engine"

    with pytest.raises(ConfigError) as error:  # refused before any warning about the scale
        write_deepstream(tmp_path / "none", onnx_file, real_info, "logits", "int8")
    assert "QDQ" in one_line(error) and not (tmp_path / "none").exists()


def test_deepstream_rewrite_keeps_other_files(tmp_path: Path) -> None:
    info = half_info()
    onnx_file = synthetic_onnx(tmp_path / "m.onnx", "argmax", info)
    out = tmp_path / "ds"
    write_deepstream(out, onnx_file, info, "argmax", batch_size=1)
    (out / "m.onnx_b1_gpu0_fp32.engine").write_bytes(b"engine")  # what nvinfer leaves after its first run
    write_deepstream(out, onnx_file, info, "argmax", batch_size=2)
    assert parse_nvinfer_config(out / "nvinfer_config.txt")["batch-size"] == "2"
    assert (out / "m.onnx_b1_gpu0_fp32.engine").read_bytes() == b"engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "m.onnx"]  # no staging folder left


@pytest.mark.parametrize(
    ("change", "error_type", "words"),
    [
        ({"output_kind": "boxes"}, ConfigError, "unknown output kind"),
        ({"precision": "int4"}, ConfigError, "unknown precision"),
        ({"batch_size": 0}, ConfigError, "batch_size"),
        ({"segmentation_threshold": -0.1}, ConfigError, "segmentation_threshold"),
        ({"onnx_file": "missing.onnx"}, ModelError, "no such ONNX file"),
        ({"output_kind": "logits"}, ModelError, "output kind is 'argmax'"),
        ({"calibration_file": "missing.bin", "precision": "int8"}, ConfigError, "calibration"),
        ({"info": ModelInfo(arch="x", classes=["a", "b", "c"])}, ModelError, "classes"),
    ],
)
def test_deepstream_bad_inputs(tmp_path: Path, change: dict[str, Any], error_type: type, words: str) -> None:
    info = half_info()
    args: dict[str, Any] = {
        "out_dir": tmp_path / "out" / "ds",
        "onnx_file": synthetic_onnx(tmp_path / "m.onnx", "argmax", info),
        "info": info,
        "output_kind": "argmax",
    }
    if "onnx_file" in change:
        change = {**change, "onnx_file": tmp_path / change["onnx_file"]}
    with pytest.raises(error_type) as error:
        write_deepstream(**{**args, **change})
    assert words in one_line(error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # not even the parent folder


def test_deepstream_unwritable_target_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = half_info()
    onnx_file = synthetic_onnx(tmp_path / "m.onnx", "argmax", info)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file")
    # We run as root, which ignores permission bits: a folder under a regular file fails for everyone.
    with pytest.raises(ConfigError) as error:
        write_deepstream(blocker / "ds", onnx_file, info, "argmax")
    assert str(blocker / "ds") in one_line(error)
    with pytest.raises(ConfigError) as error:
        write_deepstream(blocker, onnx_file, info, "argmax")
    assert "not a folder" in one_line(error)

    # A failure half-way (the disk fills while copying the model) removes the staged folder and new parents.
    def full_disk(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deepstream.shutil, "copyfile", full_disk)
    with pytest.raises(ConfigError) as error:
        write_deepstream(tmp_path / "new" / "ds", onnx_file, info, "argmax")
    assert "No space left on device" in one_line(error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "m.onnx"]


def test_parse_nvinfer_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.txt"
    path.write_text("[property]\n# comment\ngpu-id=0\n\n[class-attrs-all]\nthreshold=0.2\n")
    assert parse_nvinfer_config(path) == {"gpu-id": "0"}
    assert parse_nvinfer_config(path, group="class-attrs-all") == {"threshold": "0.2"}
    for text, words in [
        ("gpu-id=0\n", "before any [group]"),
        ("[property]\nnonsense\n", "line 2"),
        ("", "no [property]"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError) as error:
            parse_nvinfer_config(path)
        assert words in one_line(error)
    with pytest.raises(ConfigError):
        parse_nvinfer_config(tmp_path / "missing.txt")


def test_inspect_onnx_reports_layout_and_quantisation(tmp_path: Path) -> None:
    info = half_info()
    summary = inspect_onnx(synthetic_onnx(tmp_path / "hwc.onnx", "argmax", info, hwc=True, quantized=True))
    assert summary is not None and summary.argmax_layout == "hwc" and summary.quantized
    assert summary.output_types == {"output": "int64"} and summary.inputs == {"input": ["batch", 3, 512, 512]}
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelError) as error:
        inspect_onnx(tmp_path / "junk.onnx")
    assert "not a readable ONNX file" in one_line(error)


def test_deployment_copies_external_weights_and_refuses_fp16_outputs(tmp_path: Path) -> None:
    info = half_info()
    onnx_file = synthetic_onnx(tmp_path / "big.onnx", "logits", info, external=True)
    assert inspect_onnx(onnx_file).external_data == ["big.weights"]  # type: ignore[union-attr]
    written = write_deepstream(tmp_path / "ds", onnx_file, info, "logits")
    assert tmp_path / "ds" / "big.weights" in written
    assert (tmp_path / "ds" / "big.weights").read_bytes() == (tmp_path / "big.weights").read_bytes()
    written = write_triton_repository(tmp_path / "repo", "big", onnx_file, info, "logits")
    assert tmp_path / "repo/big/1/big.weights" in written and (tmp_path / "repo/big/1/big.weights").is_file()

    half = synthetic_onnx(tmp_path / "half.onnx", "logits", info, half_output=True)
    with pytest.raises(ModelError) as error:
        write_deepstream(tmp_path / "ds16", half, info, "logits", precision="fp16")
    assert "float16" in one_line(error) and "keep float32" in one_line(error)


# --------------------------------------------------------------------------------------------------------------------
# Triton


def model_config_schema() -> types.ModuleType:
    """A stand-in for tritonclient's model_config_pb2: the ModelConfig fields we write, with Triton's names."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="peopleseg_test_model_config.proto", package="inference")
    data_type = proto.enum_type.add(name="DataType")
    for number, name in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                                   "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16",
                                   "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):  # fmt: skip
        data_type.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, str | None, bool]]) -> None:
        msg = proto.message_type.add(name=name)
        for number, (field, kind, type_name, repeated) in enumerate(fields, start=1):
            label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
            added = msg.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name

    def tensor(extra: list[tuple[str, int, str | None, bool]]) -> list[tuple[str, int, str | None, bool]]:
        base = [("name", F.TYPE_STRING, None, False), ("data_type", F.TYPE_ENUM, ".inference.DataType", False)]
        return [*base, ("dims", F.TYPE_INT64, None, True), *extra]

    message("ModelInput", tensor([]))
    message("ModelOutput", tensor([("label_filename", F.TYPE_STRING, None, False)]))
    message("ModelDynamicBatching", [("preferred_batch_size", F.TYPE_INT32, None, True),
                                     ("max_queue_delay_microseconds", F.TYPE_UINT64, None, False)])  # fmt: skip
    group = proto.message_type.add(name="ModelInstanceGroup")
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=number)
    group.field.add(name="count", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    group.field.add(name="kind", number=2, type=F.TYPE_ENUM, label=F.LABEL_OPTIONAL,
                    type_name=".inference.ModelInstanceGroup.Kind")  # fmt: skip
    message("ModelConfig", [
        ("name", F.TYPE_STRING, None, False), ("platform", F.TYPE_STRING, None, False),
        ("backend", F.TYPE_STRING, None, False), ("max_batch_size", F.TYPE_INT32, None, False),
        ("input", F.TYPE_MESSAGE, ".inference.ModelInput", True),
        ("output", F.TYPE_MESSAGE, ".inference.ModelOutput", True),
        ("dynamic_batching", F.TYPE_MESSAGE, ".inference.ModelDynamicBatching", False),
        ("instance_group", F.TYPE_MESSAGE, ".inference.ModelInstanceGroup", True),
    ])  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    module = types.ModuleType("tritonclient.grpc.model_config_pb2")
    module.ModelConfig = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))
    return module


@pytest.fixture
def triton_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = model_config_schema()
    for name in ("tritonclient", "tritonclient.grpc"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", schema)


@pytest.mark.parametrize(
    ("kind", "data_type", "dims"),
    [
        ("argmax", "TYPE_INT64", [1, 512, 512]),
        ("logits", "TYPE_FP32", [2, 128, 128]),
        ("probs", "TYPE_FP32", [2, 512, 512]),
    ],
)
def test_triton_repository_per_output_kind(
    real_onnx, tmp_path: Path, triton_schema: None, kind: str, data_type: str, dims: list[int]
) -> None:
    onnx_file, info = real_onnx
    if kind != "logits":
        onnx_file = synthetic_onnx(tmp_path / f"{kind}.onnx", kind, info)
    repo = tmp_path / "models"
    written = write_triton_repository(repo, "people", onnx_file, info, kind, instance_count=2)
    assert written == [repo / "people" / "config.pbtxt", repo / "people" / "labels.txt", repo / "people/1/model.onnx"]
    assert (repo / "people/1/model.onnx").read_bytes() == onnx_file.read_bytes()
    assert (repo / "people" / "labels.txt").read_text() == "background\nperson\n"
    config = validate_config_pbtxt(repo / "people" / "config.pbtxt")  # also parsed by the (stand-in) Triton schema
    assert config["name"] == "people" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 512, 512]}]
    assert config["output"] == [
        {"name": "output", "data_type": data_type, "dims": dims, "label_filename": "labels.txt"}
    ]
    assert config["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100}
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_GPU"}]


def test_triton_plan_and_batching_options(tmp_path: Path) -> None:
    info = half_info()
    engine = tmp_path / "people.engine"
    engine.write_bytes(b"serialized engine")
    write_triton_repository(tmp_path / "repo", "trt", engine, info, "argmax", max_batch_size=4, max_queue_delay_us=0)
    config = validate_config_pbtxt(tmp_path / "repo" / "trt" / "config.pbtxt")
    assert config["platform"] == "tensorrt_plan"
    assert (tmp_path / "repo/trt/1/model.plan").read_bytes() == b"serialized engine"
    assert config["dynamic_batching"] == {"preferred_batch_size": [4], "max_queue_delay_microseconds": 0}

    hwc = synthetic_onnx(tmp_path / "hwc.onnx", "argmax", info, hwc=True)
    write_triton_repository(tmp_path / "repo", "nobatch", hwc, info, "argmax", max_batch_size=0, kind="KIND_CPU")
    config = validate_config_pbtxt(tmp_path / "repo" / "nobatch" / "config.pbtxt")
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [-1, 3, 512, 512]
    assert config["output"][0]["dims"] == [-1, 512, 512, 1]  # TAO 5's N x H x W x 1 class ids
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]


@pytest.mark.parametrize(
    ("change", "error_type", "words"),
    [
        ({"output_kind": "mask"}, ConfigError, "unknown output kind"),
        ({"model_name": "../up"}, ConfigError, "model name"),
        ({"model_file": "model.pt"}, ModelError, ".onnx, .plan or .engine"),
        ({"model_file": "missing.onnx"}, ModelError, "no such model file"),
        ({"max_batch_size": -1}, ConfigError, "max_batch_size"),
        ({"preferred_batch_sizes": (0,)}, ConfigError, "preferred"),
        ({"instance_count": 0}, ConfigError, "instance_count"),
        ({"kind": "KIND_TPU"}, ConfigError, "instance kind"),
        ({"output_kind": "probs"}, ModelError, "output kind is 'argmax'"),
    ],
)
def test_triton_bad_inputs(tmp_path: Path, change: dict[str, Any], error_type: type, words: str) -> None:
    info = half_info()
    args: dict[str, Any] = {
        "repo_dir": tmp_path / "repo",
        "model_name": "people",
        "model_file": synthetic_onnx(tmp_path / "m.onnx", "argmax", info),
        "info": info,
        "output_kind": "argmax",
    }
    if "model_file" in change:
        (tmp_path / "model.pt").write_bytes(b"x")
        change = {**change, "model_file": tmp_path / change["model_file"]}
    with pytest.raises(error_type) as error:
        write_triton_repository(**{**args, **change})
    assert words in one_line(error)
    assert not (tmp_path / "repo").exists()


def test_triton_plan_refuses_cpu_and_unwritable_repo(tmp_path: Path) -> None:
    info = half_info()
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"plan")
    with pytest.raises(ConfigError) as error:
        write_triton_repository(tmp_path / "repo", "m", engine, info, "argmax", kind="KIND_CPU")
    assert "GPU" in one_line(error)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as error:
        write_triton_repository(blocker / "repo", "m", engine, info, "argmax")
    assert one_line(error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "m.plan"]


GOOD_CONFIG = """
name: "m"  # trailing comment
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input", data_type: TYPE_FP32, dims: [ 3, 512, 512 ] } ]
output { name: "output" data_type: TYPE_INT64 dims: [ 1, 512, 512 ] label_filename: "labels.txt" }
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 1 kind: KIND_GPU } ]
"""


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('name: "m"', 'name: "other"', "differs from the model folder"),
        ('name: "m"', "", "'name' is missing"),
        ('platform: "onnxruntime_onnx"', "", "neither 'platform' nor 'backend'"),
        ("max_batch_size: 8", "max_batch_size: -2", "max_batch_size"),
        ("max_batch_size: 8", "max_batch_size: 0", "dynamic_batching needs max_batch_size > 0"),
        ("TYPE_FP32", "TYPE_FLOAT", "unknown data_type"),
        ("dims: [ 3, 512, 512 ]", "dims: [ 3, 0, 512 ]", "dims"),
        ("[ 4, 8 ]", "[ 4, 16 ]", "preferred_batch_size"),
        ("KIND_GPU", "KIND_TPU", "instance_group kind"),
        ("count: 1", "count: 0", "count"),
        ('"labels.txt"', '"missing.txt"', "label file"),
        ("input [ {", "input [ ", "line 5"),
        ("max_batch_size: 8", "max_batch_size 8", "expected ':'"),
        ("}\ninstance_group", "\ninstance_group", "missing '}'"),
        ('name: "m"', 'name: "m" @', "unexpected character"),
    ],
)
def test_validate_config_pbtxt_rejects(tmp_path: Path, old: str, new: str, words: str) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "labels.txt").write_text("background\nperson\n")
    path = folder / "config.pbtxt"
    path.write_text(GOOD_CONFIG)
    assert validate_config_pbtxt(path)["output"][0]["dims"] == [1, 512, 512]
    assert old in GOOD_CONFIG
    path.write_text(GOOD_CONFIG.replace(old, new, 1))
    with pytest.raises(ModelError) as error:
        validate_config_pbtxt(path)
    assert words in one_line(error)


def test_validate_config_pbtxt_with_triton_schema(tmp_path: Path, triton_schema: None) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "labels.txt").write_text("background\nperson\n")
    path = folder / "config.pbtxt"
    path.write_text(GOOD_CONFIG)
    validate_config_pbtxt(path)
    path.write_text(GOOD_CONFIG.replace("preferred_batch_size", "preferred_batch_sizes"))  # a field Triton lacks
    with pytest.raises(ModelError) as error:
        validate_config_pbtxt(path)
    assert "not a valid Triton ModelConfig" in one_line(error)


def test_parse_pbtxt_text_format() -> None:
    parsed = parse_pbtxt('a: 1\nb: "x\\"y" # c\nm < k: true >\nr: 1\nr: 2\nl: [ ]\nf: -1.5e3\ne: KIND_GPU\n')
    assert parsed == {"a": 1, "b": 'x"y', "m": {"k": True}, "r": [1, 2], "l": [], "f": -1500.0, "e": "KIND_GPU"}


# --------------------------------------------------------------------------------------------------------------------
# TensorRT


def test_trtexec_command() -> None:
    command = trtexec_command("m.onnx", "m.plan", "fp16", (512, 512), min_batch=1, opt_batch=4, max_batch=16)
    assert command == (
        "trtexec --onnx=m.onnx --saveEngine=m.plan --minShapes=input:1x3x512x512 --optShapes=input:4x3x512x512 "
        "--maxShapes=input:16x3x512x512 --memPoolSize=workspace:4096 --fp16"
    )
    int8 = trtexec_command("dir with space/q.onnx", "q.plan", "int8", (384, 640), workspace_mb=1024)
    assert "'--onnx=dir with space/q.onnx'" in int8 and "--int8 --fp16" in int8
    assert "--optShapes=input:8x3x384x640" in int8 and "--maxShapes=input:32x3x384x640" in int8
    assert "--memPoolSize=workspace:1024" in int8
    fp32 = trtexec_command("m.onnx", "m.plan", "fp32", (512, 512))
    assert "--fp16" not in fp32 and "--int8" not in fp32
    strong = trtexec_command("m.onnx", "m.plan", "fp16", (512, 512), strongly_typed=True)
    assert strong.endswith("--stronglyTyped") and "--fp16" not in strong
    for bad in [{"precision": "int4"}, {"min_batch": 4, "opt_batch": 2}, {"max_batch": 0}, {"input_size": (512,)}]:
        with pytest.raises(ConfigError):
            trtexec_command("m.onnx", "m.plan", **{"precision": "fp16", "input_size": (512, 512), **bad})


class FakeTensorRT:
    """Enough of the TensorRT 10 Python API to build an engine, recording every call."""

    def __init__(self, version: str = "10.3.0", weak_flags: bool = True, layers: tuple[str, ...] = ("CONVOLUTION",),
                 input_shape: tuple[int, ...] = (-1, 3, 512, 512), parse_ok: bool = True, build_ok: bool = True,
                 dtype: str = "float32") -> None:  # fmt: skip
        self.calls: list[tuple[Any, ...]] = []
        calls = self.calls
        module = types.ModuleType("tensorrt")
        module.__version__ = version
        module.float16, module.float32 = "float16", "float32"

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity: str) -> None:
                calls.append(("logger", severity))

        class Flag(int):
            pass

        module.Logger = Logger
        module.BuilderFlag = types.SimpleNamespace(**({"FP16": "FP16", "INT8": "INT8"} if weak_flags else {}))
        module.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=Flag(0), STRONGLY_TYPED=Flag(1))
        module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        module.LayerType = types.SimpleNamespace(QUANTIZE="QUANTIZE", DEQUANTIZE="DEQUANTIZE")

        class Tensor:
            def __init__(self, name: str, shape: tuple[int, ...] = (), dtype: str = "float32") -> None:
                self.name, self.shape, self.dtype = name, shape, dtype

        class Layer:
            def __init__(self, kind: str) -> None:
                self.type, self.num_outputs = kind, 1

            def get_output(self, index: int) -> Tensor:
                return Tensor(f"out{index}", dtype=dtype)

        class Network:
            num_inputs = 1
            num_layers = len(layers)

            def get_input(self, index: int) -> Tensor:
                return Tensor("input", input_shape)

            def get_layer(self, index: int) -> Layer:
                return Layer(layers[index])

        class Profile:
            def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
                calls.append(("profile", name, low, opt, high))

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                calls.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                calls.append(("flag", flag))

            def add_optimization_profile(self, profile: Profile) -> int:
                calls.append(("add_profile",))
                return 0

        class Builder:
            def __init__(self, logger: Logger) -> None:
                calls.append(("builder",))

            def create_network(self, flags: int = 0) -> Network:
                calls.append(("network", flags))
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                calls.append(("build",))
                return b"PLAN" if build_ok else None

        class OnnxParser:
            num_errors = 0 if parse_ok else 2

            def __init__(self, network: Network, logger: Logger) -> None:
                pass

            def parse_from_file(self, path: str) -> bool:
                calls.append(("parse", path))
                return parse_ok

            def get_error(self, index: int) -> str:
                return f"In node {index}:\n unsupported op"

        module.Builder, module.OnnxParser = Builder, OnnxParser
        self.module = module

    def flags(self) -> list[str]:
        return [call[1] for call in self.calls if call[0] == "flag"]


@pytest.fixture
def onnx_stub(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"onnx")  # the fake parser never reads it
    return path


@pytest.mark.parametrize(
    ("precision", "layers", "flags"),
    [("fp16", ("CONVOLUTION",), ["FP16"]), ("fp32", ("CONVOLUTION",), []),
     ("int8", ("QUANTIZE", "CONVOLUTION", "DEQUANTIZE"), ["FP16", "INT8"])],
)  # fmt: skip
def test_build_engine_with_fake_tensorrt(
    onnx_stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, layers: tuple, flags: list
) -> None:
    fake = FakeTensorRT(layers=layers, input_shape=(-1, 3, 384, 640))
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    engine = build_engine(onnx_stub, tmp_path / "out" / "m.plan", precision, (384, 640), 2, None, 16, workspace_mb=512)
    assert engine == tmp_path / "out" / "m.plan" and engine.read_bytes() == b"PLAN"
    assert [p.name for p in engine.parent.iterdir()] == ["m.plan"]  # written atomically, no temp file left
    calls = fake.calls
    assert ("network", 0) in calls  # explicit batch is implied on TensorRT 10; weakly typed
    assert ("parse", str(onnx_stub)) in calls
    assert ("pool", "WORKSPACE", 512 << 20) in calls
    assert ("profile", "input", (2, 3, 384, 640), (8, 3, 384, 640), (16, 3, 384, 640)) in calls
    assert ("add_profile",) in calls and calls[-1] == ("build",)
    assert fake.flags() == flags


def test_build_engine_strongly_typed_and_tensorrt_11(onnx_stub: Path, tmp_path: Path, monkeypatch) -> None:
    # TensorRT 11 has no precision flags: the build is strongly typed and FP16 must already be in the graph.
    fake = FakeTensorRT(version="11.4.0", weak_flags=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    with pytest.raises(ModelError) as error:
        build_engine(onnx_stub, tmp_path / "m.plan", "fp16")
    assert "modelopt.onnx.autocast" in one_line(error) and not (tmp_path / "m.plan").exists()
    fake = FakeTensorRT(version="11.4.0", weak_flags=False, dtype="float16")
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    build_engine(onnx_stub, tmp_path / "m.plan", "fp16", max_batch=4)
    assert ("network", 1 << 1) in fake.calls and fake.flags() == []
    assert ("profile", "input", (1, 3, 512, 512), (4, 3, 512, 512), (4, 3, 512, 512)) in fake.calls
    # TensorRT 8 needs the explicit-batch flag asked for.
    fake = FakeTensorRT(version="8.6.1")
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    build_engine(onnx_stub, tmp_path / "m8.plan", "fp32")
    assert ("network", 1) in fake.calls


@pytest.mark.parametrize(
    ("fake", "precision", "words"),
    [
        ({"parse_ok": False}, "fp16", "cannot parse the ONNX: In node 0: unsupported op (and 1 more)"),
        ({"build_ok": False}, "fp16", "could not build"),
        ({}, "int8", "QuantizeLinear/DequantizeLinear"),
        ({"input_shape": (1, 3, 512, 512)}, "fp16", "fixed batch of 1"),
        ({"input_shape": (-1, 3, 256, 256)}, "fp16", "256x256, not 512x512"),
    ],
)
def test_build_engine_errors(onnx_stub: Path, tmp_path: Path, monkeypatch, fake: dict, precision: str, words: str):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(**fake).module)
    with pytest.raises(ModelError) as error:
        build_engine(onnx_stub, tmp_path / "e" / "m.plan", precision)
    assert words in one_line(error)
    assert not (tmp_path / "e").exists()


def test_build_engine_without_tensorrt(onnx_stub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    with pytest.raises(ModelError) as error:
        build_engine(onnx_stub, tmp_path / "m.plan", "fp16", max_batch=8)
    message = one_line(error)
    assert "trtexec" in message and f"--onnx={onnx_stub}" in message and "--maxShapes=input:8x3x512x512" in message
    with pytest.raises(ModelError) as error:
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.plan")
    assert "no such ONNX file" in one_line(error)
    with pytest.raises(ConfigError):
        build_engine(onnx_stub, tmp_path / "m.plan", "bf16")
    assert not (tmp_path / "m.plan").exists()
