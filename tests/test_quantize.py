"""INT8 (static QDQ) and FP16 ONNX files from an exported SegFormer-B0: written atomically, smaller, loadable,
float where promised, close to fp32 on the real photos, and one-line errors on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from peopleseg.errors import ConfigError, DataError, ModelError, PeoplesegError
from peopleseg.models import ModelInfo, build_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from peopleseg.export import fp16 as fp16_module  # noqa: E402
from peopleseg.export.fp16 import convert_fp16  # noqa: E402
from peopleseg.export.onnx_export import export_onnx  # noqa: E402
from peopleseg.export.quantize import (  # noqa: E402
    QuantizeConfig,
    agreement,
    calibration_images,
    find_images,
    prepare_input,
    quantize_int8,
)

DATA = Path(__file__).parent / "data"
PHOTOS = sorted(DATA.glob("*.jpg"))
SMALL = QuantizeConfig(calibration_count=3)  # tests/data holds 3 photos


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("segformer_b0").eval()
    return export_onnx(model, tmp_path_factory.mktemp("fp32") / "b0.onnx", check=False).path


@pytest.fixture(scope="module")
def int8(fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_int8(fp32, tmp_path_factory.mktemp("int8") / "b0.int8.onnx", DATA, config=SMALL, progress=False)


@pytest.fixture(scope="module")
def half(fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fp16(fp32, tmp_path_factory.mktemp("fp16") / "b0.fp16.onnx")


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _one_line(exc: pytest.ExceptionInfo[PeoplesegError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_int8_file_is_small_loadable_qdq_with_metadata(fp32: Path, int8: Path) -> None:
    assert sorted(p.name for p in int8.parent.iterdir()) == ["b0.int8.onnx"]  # no temp or augmented files
    assert int8.stat().st_size < 0.4 * fp32.stat().st_size
    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": prepare_input(PHOTOS[0], _info(fp32))})[0]
    assert out.shape == (1, 2, 128, 128) and np.isfinite(out).all()
    meta, source = _meta(int8), _meta(fp32)
    assert meta["precision"] == "int8" and meta["calibration"] == "minmax, 3 images"
    assert all(meta[key] == value for key, value in source.items() if key != "precision")


def test_int8_keeps_softmax_layernorm_first_and_last_conv_float(int8: Path) -> None:
    """Kept in float means: no input of the node (activation, weight or bias) comes out of a DequantizeLinear."""
    nodes = list(onnx.load(str(int8)).graph.node)
    producer = {out: node.op_type for node in nodes for out in node.output}

    def quantized(node: object) -> bool:
        return any(producer.get(name) == "DequantizeLinear" for name in node.input)  # type: ignore[attr-defined]

    convs = [node for node in nodes if node.op_type == "Conv"]
    kept = [node for node in nodes if node.op_type in ("Softmax", "LayerNormalization")] + [convs[0], convs[-1]]
    assert len(kept) == 8 + 30 + 2
    assert not [node.name for node in kept if quantized(node)]
    assert "patch_embed1" in convs[0].name and "linear_pred" in convs[-1].name
    assert all(quantized(node) for node in convs[1:-1])
    # The encoder's linear layers, not Q·Kᵀ nor ·V (8 each); the folded decoder's stage projections are 1x1 convs.
    assert sum(quantized(node) for node in nodes if node.op_type == "MatMul") == 40


def test_agreement_int8_and_identity(fp32: Path, int8: Path) -> None:
    same = agreement(fp32, fp32, DATA)
    assert same["agreement"] == 1.0 and same["max_abs_diff"] == 0.0 and same["images"] == 3
    found = agreement(fp32, int8, PHOTOS, _info(fp32))
    # Random weights give small, nearly tied logits: no accuracy claim, only sane figures.
    assert 0.0 <= found["agreement"] <= 1.0 and np.isfinite(found["max_abs_diff"])
    assert found["agreement"] > 0.5 and found["max_abs_diff"] < 1.0


def test_fp16_runs_with_float32_io_close_to_fp32(fp32: Path, half: Path) -> None:
    assert sorted(p.name for p in half.parent.iterdir()) == ["b0.fp16.onnx"]
    assert half.stat().st_size < 0.6 * fp32.stat().st_size
    session = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    assert [a.type for a in session.get_inputs()] == ["tensor(float)"]
    assert [a.type for a in session.get_outputs()] == ["tensor(float)"]
    assert _meta(half)["precision"] == "fp16"
    found = agreement(fp32, half, DATA)
    assert found["max_abs_diff"] < 0.01 and found["agreement"] > 0.995


def test_fp16_blocks_an_op_onnxruntime_cannot_run(fp32: Path, tmp_path: Path, monkeypatch) -> None:
    """A float16 op without a CPU kernel is found in the load error and kept in float32, with a warning."""
    real, calls = fp16_module._run_once, []

    def fake(path: Path, meta: dict[str, str], runtime: object) -> str | None:
        calls.append(path)
        if len(calls) == 1:
            return "Could not find an implementation for Erf(13) node with name '/Erf'"
        return real(path, meta, runtime)

    monkeypatch.setattr(fp16_module, "_run_once", fake)
    with pytest.warns(UserWarning, match="cannot run Erf in float16"):
        path = convert_fp16(fp32, tmp_path / "out" / "b0.fp16.onnx")
    graph = onnx.load(str(path))
    erf_inputs = {name for node in graph.graph.node if node.op_type == "Erf" for name in node.input}
    casts = {out for node in graph.graph.node if node.op_type == "Cast" for out in node.output}
    assert len(calls) == 2 and erf_inputs and erf_inputs <= casts  # every Erf now reads a Cast to float32
    assert sorted(p.name for p in path.parent.iterdir()) == ["b0.fp16.onnx"]


def test_calibration_images_recursive_sorted_evenly_subsampled(tmp_path: Path) -> None:
    for index in range(12):
        folder = tmp_path / ("a" if index < 6 else "b")
        folder.mkdir(exist_ok=True)
        shutil.copy(PHOTOS[index % 3], folder / f"{index:02d}.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    shutil.copy(PHOTOS[0], tmp_path / ".hidden" / "x.jpg")
    assert len(find_images(tmp_path)) == 12
    picked = calibration_images(tmp_path, 4)
    assert [p.relative_to(tmp_path).as_posix() for p in picked] == ["a/00.JPG", "a/03.JPG", "b/06.JPG", "b/09.JPG"]
    assert calibration_images(tmp_path, 4) == picked
    assert len(calibration_images(tmp_path, 64)) == 12


def test_bad_calibration_inputs_are_one_line_errors(fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no such folder") as exc:
        quantize_int8(fp32, out / "b0.int8.onnx", tmp_path / "missing", progress=False)
    assert "missing" in _one_line(exc)
    few = tmp_path / "calib"
    few.mkdir()
    for photo in PHOTOS[:2]:
        shutil.copy(photo, few / photo.name)
    with pytest.raises(DataError, match="calib: 2 images, need at least 8 for calibration") as exc:
        quantize_int8(fp32, out / "b0.int8.onnx", few, progress=False)
    _one_line(exc)
    (few / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg") as exc:
        quantize_int8(fp32, out / "b0.int8.onnx", few, config=SMALL, progress=False)
    _one_line(exc)
    with pytest.raises(ConfigError, match="unknown calibration method 'kl'"):
        quantize_int8(fp32, out / "b0.int8.onnx", DATA, config=QuantizeConfig(method="kl"), progress=False)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_bad_model_inputs_are_one_line_errors(fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="no such file") as exc:
        quantize_int8(tmp_path / "absent.onnx", out / "x.onnx", DATA, config=SMALL, progress=False)
    assert "absent.onnx" in _one_line(exc)
    with pytest.raises(ModelError, match="no such file"):
        convert_fp16(tmp_path / "absent.onnx", out / "x.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf")
    with pytest.raises(ModelError, match="not a readable ONNX file") as exc:
        quantize_int8(garbage, out / "x.onnx", DATA, config=SMALL, progress=False)
    _one_line(exc)
    bare_model = onnx.load(str(fp32))
    del bare_model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(bare_model, str(bare))
    with pytest.raises(ModelError, match="no peopleseg metadata; pass info=") as exc:
        quantize_int8(bare, out / "x.onnx", DATA, config=SMALL, progress=False)
    assert "bare.onnx" in _one_line(exc)
    assert not out.exists() or not any(out.iterdir())


def _info(path: Path) -> ModelInfo:
    return ModelInfo.from_dict(json.loads(_meta(path)["peopleseg"]))


def test_preprocess_failure_falls_back_percentile_symmetric_int8(fp32: Path, tmp_path: Path, monkeypatch) -> None:
    """quant_pre_process failing costs only a warning; int8 activations are symmetric (zero point 0, TensorRT)."""
    import onnxruntime.quantization.shape_inference as shape_inference

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("symbolic shape inference gave up\nsecond line")

    monkeypatch.setattr(shape_inference, "quant_pre_process", broken)
    config = QuantizeConfig(calibration_count=3, method="percentile", activation_type="int8")
    with pytest.warns(UserWarning, match="quant_pre_process failed \\(symbolic shape inference gave up\\)"):
        path = quantize_int8(fp32, tmp_path / "b0.int8.onnx", PHOTOS, config=config, progress=False)
    graph = onnx.load(str(path)).graph
    zero_points = [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and all(z.dtype in (np.int8, np.int32) and not z.any() for z in zero_points)
    assert _meta(path)["calibration"] == "percentile, 3 images"
    assert 0.5 < agreement(fp32, path, PHOTOS)["agreement"] <= 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0.int8.onnx"]
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["b0.onnx"]  # nothing written beside the input
