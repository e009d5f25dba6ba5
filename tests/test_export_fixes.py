"""Export job fixes: TensorRT-ready INT8, opsets, folder checks, no-TensorRT runs, engine settings, HF/mmseg loading,
class names, and the caller's model left as it was."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from peopleseg.errors import ConfigError, DataError, ModelError
from peopleseg.models import ModelInfo, build_model, load_model, load_model_with_report

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from peopleseg.export.onnx_export import export_onnx  # noqa: E402
from peopleseg.export.run import ExportOptions, parity_table, run_export  # noqa: E402
from peopleseg.export.tensorrt import (  # noqa: E402
    check_symmetric_qdq,
    read_engine_sidecar,
    sidecar_path,
    write_engine_sidecar,
)

DATA = Path(__file__).parent / "data"
SIZE = (128, 128)
no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")


def _b0(**info: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("segformer_b0", info=ModelInfo(arch="segformer_b0", input_size=SIZE, **info)).eval()


def _zero_points(path: Path) -> list[np.ndarray]:
    graph = onnx.load(str(path)).graph
    names = {n.input[2] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    return [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name in names]


def _photos(tmp_path: Path, copies: int = 3) -> Path:
    """tests/data's 3 photos, each `copies` times: calibration needs 8 images."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for index in range(copies):
        for photo in sorted(DATA.glob("*.jpg")):
            shutil.copy(photo, folder / f"{index}_{photo.name}")
    return folder


@no_tensorrt
def test_deployment_int8_is_symmetric_and_agrees_without_tensorrt(tmp_path: Path) -> None:
    """Items 1, 4 and 8: with deployment outputs the INT8 file has int8 zero points 0; without TensorRT the job
    notes the trtexec command and still writes DeepStream and the parity table."""
    options = ExportOptions(
        output=tmp_path / "b0.onnx",
        slim=False,
        check=False,
        int8=True,
        calib=_photos(tmp_path),
        calib_count=12,
        tensorrt=tmp_path / "b0.engine",
        deepstream=tmp_path / "ds",
    )
    summary = run_export(_b0(), options)
    int8 = tmp_path / "b0.int8.onnx"
    zero_points = _zero_points(int8)
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    check_symmetric_qdq(int8)
    row = next(r for r in summary.rows if r.variant == "int8")
    assert row.agreement > 0.9  # against fp32, on the real photos
    assert row.reference == "fp32 onnx (calib images)"
    table = parity_table(summary)
    assert "trtexec" in table and "--saveEngine=" in table and "--int8" in table
    assert "fewer than --calib-count 12" in table and "calibration images themselves" in table
    assert (tmp_path / "ds" / "nvinfer_config.txt").exists() and not (tmp_path / "b0.engine").exists()
    settings = read_engine_sidecar(tmp_path / "b0.engine")  # written for the engine built elsewhere
    assert settings is not None and settings["output_kind"] == "logits"


def test_uint8_int8_file_is_refused_for_tensorrt_and_deepstream(tmp_path: Path) -> None:
    from peopleseg.export.deepstream import write_deepstream
    from peopleseg.export.quantize import QuantizeConfig, quantize_int8
    from peopleseg.export.tensorrt import build_engine

    model = _b0()
    fp32 = export_onnx(model, tmp_path / "b0.onnx", check=False, slim=False).path
    cpu = quantize_int8(
        fp32, tmp_path / "b0.int8.onnx", DATA, config=QuantizeConfig(calibration_count=3), progress=False
    )
    assert any(z.dtype == np.uint8 for z in _zero_points(cpu))
    for call in (
        lambda: build_engine(cpu, tmp_path / "b0.engine", "int8", SIZE),
        lambda: write_deepstream(tmp_path / "ds", cpu, model.info, "logits", precision="int8"),
    ):
        with pytest.raises(ModelError, match="TensorRT takes symmetric int8") as exc:
            call()
        assert "\n" not in str(exc.value)
    assert not (tmp_path / "ds").exists() and not (tmp_path / "b0.engine").exists()


def test_opset_13_is_refused_in_one_line(tmp_path: Path) -> None:
    model = _b0()
    with pytest.raises(ConfigError, match=r"^opset 13 is not supported; use 14-20") as exc:
        export_onnx(model, tmp_path / "b0.onnx", opset=13)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="opset 21"):
        run_export(model, ExportOptions(output=tmp_path / "b0.onnx", opset=21))
    assert not (tmp_path / "b0.onnx").exists()
    assert export_onnx(model, tmp_path / "b0.onnx", opset=14, check=False, slim=False).path.exists()


def test_folders_are_checked_first_and_the_minimum_is_for_calibration_only(tmp_path: Path) -> None:
    model = _b0()
    output = tmp_path / "b0.onnx"
    val = tmp_path / "val"
    val.mkdir()
    shutil.copy(DATA / "messi5.jpg", val / "a.jpg")
    few = tmp_path / "few"
    shutil.copytree(val, few)
    # Bad folders fail before the fp32 file is written.
    for options in (
        ExportOptions(output=output, int8=True, calib=tmp_path / "nowhere"),
        ExportOptions(output=output, int8=True, calib=few),  # 1 image: below the calibration minimum
        ExportOptions(output=output, fp16=True, val_images=tmp_path / "nowhere"),
    ):
        with pytest.raises(DataError):
            run_export(model, options)
        assert not output.exists()
    # One validation image is enough without --int8.
    summary = run_export(model, ExportOptions(output=output, fp16=True, val_images=val, slim=False, check=False))
    row = next(r for r in summary.rows if r.variant == "fp16")
    assert row.reference == "fp32 onnx" and row.agreement > 0.9
    assert not any("n/a" in note for note in summary.notes)
    blind = run_export(model, ExportOptions(output=output, fp16=True, slim=False, check=False))
    assert "n/a | n/a" in parity_table(blind) and "add --val-images or --calib" in parity_table(blind)


def test_engine_settings_sidecar_round_trip(tmp_path: Path) -> None:
    model = _b0(classes=["bg", "person"])
    fp32 = export_onnx(model, tmp_path / "b0.onnx", output_kind="probs", normalize_in_graph=True, check=False).path
    engine = tmp_path / "b0.engine"
    assert read_engine_sidecar(engine) is None  # absent: the backend keeps today's behaviour
    written = write_engine_sidecar(fp32, engine, "fp16")
    assert written == sidecar_path(engine) == tmp_path / "b0.engine.json"
    settings = read_engine_sidecar(engine)
    assert settings is not None
    assert settings["info"].classes == ["bg", "person"] and settings["info"].input_size == SIZE
    assert settings["output_kind"] == "probs" and settings["normalized_in_graph"] is True
    written.write_text("{not json")
    with pytest.raises(ModelError, match=r"b0\.engine\.json: not a readable engine settings file"):
        read_engine_sidecar(engine)
    written.write_text(json.dumps({"peopleseg": model.info.to_dict(), "output_kind": "scores"}))
    with pytest.raises(ModelError, match="unknown output_kind 'scores'"):
        read_engine_sidecar(engine)


def test_tensorrt_backend_needs_info_only_without_settings(tmp_path: Path) -> None:
    from peopleseg.infer.backends import make_backend

    engine = tmp_path / "b0.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(ConfigError, match="carries no metadata"):
        make_backend(engine, backend="tensorrt", device="cuda")
    fp32 = export_onnx(_b0(), tmp_path / "b0.onnx", check=False, slim=False).path
    write_engine_sidecar(fp32, engine, "fp32")
    with pytest.raises(ModelError, match=r"tensorrt|CUDA"):  # past the info check: TensorRT or a GPU is missing here
        make_backend(engine, backend="tensorrt", device="cuda")


def test_export_leaves_the_callers_model_as_it_was(tmp_path: Path) -> None:
    model = _b0().train()
    export_onnx(model, tmp_path / "b0.onnx", check=True, slim=False)
    assert model.training and all(m.training for m in model.modules())
    assert next(model.parameters()).device.type == "cpu"
    model.eval()
    export_onnx(model, tmp_path / "b0.onnx", check=False, slim=False)
    assert not model.training


@pytest.mark.parametrize(
    "classes, message",
    [
        ("person", "must be a list of names"),
        (["bg", ""], "non-empty strings"),
        (["bg", 3], "non-empty strings"),
        (["person", "person"], "a name twice"),
    ],
)
def test_classes_must_be_a_list_of_distinct_names(classes: object, message: str) -> None:
    with pytest.raises(ModelError, match=message) as exc:
        ModelInfo.from_dict({"arch": "segformer_b0", "classes": classes})
    assert "\n" not in str(exc.value)
    with pytest.raises(ModelError, match=message):
        load_model("segformer_b0", info_overrides={"classes": classes})
    assert ModelInfo.from_dict({"arch": "segformer_b0", "classes": ("bg", "person")}).classes == ["bg", "person"]


def test_hf_weights_file_reads_the_folders_config(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from test_hf_parity import make_hf

    hf = make_hf("segformer_b0", num_labels=3)
    hf.config.id2label = {0: "bg", 1: "person", 2: "bag"}
    hf.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    folder = load_model(tmp_path)
    single = load_model(tmp_path / "model.safetensors")
    assert single.info.classes == folder.info.classes == ["bg", "person", "bag"]
    assert single.info.mean == folder.info.mean == (127.5, 127.5, 127.5)


def test_mmseg1_full_checkpoint_loads_its_encoder_with_backbone_only(tmp_path: Path) -> None:
    from test_weights import _mmseg_native_state

    b0 = _b0()
    state = _mmseg_native_state(b0)
    state["decode_head.convs.0.conv.weight"] = torch.zeros(256, 32, 1, 1)
    state["decode_head.fusion_conv.conv.weight"] = torch.zeros(256, 1024, 1, 1)
    path = tmp_path / "mmseg.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    with pytest.raises(ModelError, match="backbone_only=True"):
        load_model(path)
    model, report = load_model_with_report(path, backbone_only=True)
    assert report.format == "mmseg 1.x"
    assert any(re.match(r"decode_head\.convs\.", key) for key in report.ignored)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(model.backbone(pixels), b0.backbone(pixels), strict=True):
            torch.testing.assert_close(ours, theirs)
