"""ONNX export in every output kind and normalisation, read back by the Segmenter, with one-line errors."""

import numpy as np
import pytest
import torch

from peopleseg import Segmenter, build_model
from peopleseg.errors import ConfigError, ModelError
from peopleseg.export.onnx_export import export_onnx, read_metadata

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return build_model("segformer_b0").eval()


@pytest.mark.parametrize("kind", ["logits", "argmax", "probs"])
@pytest.mark.parametrize("in_graph", [False, True])
def test_every_output_kind_matches_torch_and_segments(b0, data_dir, tmp_path, kind, in_graph) -> None:
    slim = kind == "logits" and not in_graph  # onnxslim once is enough: it costs seconds per export
    result = export_onnx(
        b0, tmp_path / "m.onnx", output_kind=kind, normalize_in_graph=in_graph, check_batch=1, slim=slim
    )
    assert result.argmax_agreement >= 0.999
    if kind != "argmax":
        assert result.max_abs_diff < 1e-3
    meta = read_metadata(result.path)
    assert meta["output_kind"] == kind and meta["normalized_in_graph"] == str(in_graph).lower()
    output = ort.InferenceSession(str(result.path)).get_outputs()[0]
    expected = {"logits": [2, 128, 128], "argmax": [1, 512, 512], "probs": [2, 512, 512]}[kind]
    assert output.name == "output" and output.shape[1:] == expected
    assert ("int64" in output.type) == (kind == "argmax")
    # The runtime reads the layout and the normalisation from the file and answers like eager torch.
    eager = Segmenter(b0).predict(data_dir / "messi5.jpg")
    runtime = Segmenter(result.path).predict(data_dir / "messi5.jpg")
    assert (runtime == eager).mean() >= (0.97 if kind == "argmax" else 0.995)


def test_dynamic_height_and_width(b0, tmp_path) -> None:
    path = export_onnx(b0, tmp_path / "dyn.onnx", dynamic_hw=True, check=False).path
    session = ort.InferenceSession(str(path))
    for shape in [(1, 3, 256, 320), (2, 3, 128, 96)]:
        pixels = torch.randn(*shape)
        out = session.run(["output"], {"input": pixels.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, b0(pixels).numpy(), atol=1e-4)


def test_bad_export_requests(b0, tmp_path) -> None:
    with pytest.raises(ConfigError, match="opset 9 is not supported"):
        export_onnx(b0, tmp_path / "m.onnx", opset=9)
    with pytest.raises(ConfigError, match="unknown output kind 'mask'"):
        export_onnx(b0, tmp_path / "m.onnx", output_kind="mask")
    with pytest.raises(ConfigError, match="cascade_upsampling rewrites the lean graph's decoder: it needs lean=True"):
        export_onnx(b0, tmp_path / "m.onnx", cascade_upsampling=True)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises((ModelError, OSError)):
        export_onnx(b0, blocker / "m.onnx", check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing partial left behind
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"bad\.onnx: not a readable ONNX file"):
        read_metadata(bad)


def test_cli_export_with_deployment_files(tmp_path, capsys) -> None:
    from peopleseg.cli import main
    from peopleseg.export.deepstream import parse_nvinfer_config
    from peopleseg.export.triton import validate_config_pbtxt

    args = [
        "export",
        "segformer_b0",
        "-o",
        str(tmp_path / "b0.onnx"),
        "--output-kind",
        "argmax",
        "--no-slim",
        "--deepstream",
        str(tmp_path / "ds"),
        "--triton",
        str(tmp_path / "triton"),
        "--triton-name",
        "people",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| fp32 | b0.onnx |" in out and "torch" in out
    config = parse_nvinfer_config(tmp_path / "ds" / "nvinfer_config.txt")
    assert config["infer-dims"] == "3;512;512" and config["network-type"] == "2" and config["network-mode"] == "0"
    assert (tmp_path / "ds" / "labels.txt").read_text().split() == ["background", "person"]
    assert validate_config_pbtxt(tmp_path / "triton" / "people" / "config.pbtxt")["name"] == "people"
    assert (tmp_path / "triton" / "people" / "1" / "model.onnx").exists()


def test_cli_export_errors(tmp_path, capsys) -> None:
    from peopleseg.cli import main

    assert main(["export", "segformer_b0", "-o", str(tmp_path / "b0.onnx"), "--int8"]) == 1
    assert "--int8 needs calibration images" in capsys.readouterr().err
    assert main(["export", "segformer_b0", "-o", str(tmp_path / "b0.txt")]) == 1
    assert "must end in .onnx" in capsys.readouterr().err
    code = main(
        [
            "export",
            "segformer_b0",
            "-o",
            str(tmp_path / "b0.onnx"),
            "--no-slim",
            "--int8",
            "--calib",
            str(tmp_path / "nowhere"),
        ]
    )
    assert code == 1 and "nowhere" in capsys.readouterr().err
