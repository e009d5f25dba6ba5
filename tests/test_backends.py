"""Backends are interchangeable: torch and onnxruntime agree; NVIDIA-style argmax ONNX files are understood."""

import numpy as np
import pytest
import torch
from torch import nn

from peopleseg import Segmenter, build_model
from peopleseg.errors import ConfigError, ModelError
from peopleseg.export.onnx_export import export_onnx
from peopleseg.models.weights import save_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def b0_and_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("segformer_b0").eval()
    path = tmp_path_factory.mktemp("onnx") / "b0.onnx"
    export_onnx(model, path, check=False)
    return model, path


def test_torch_and_onnxruntime_agree_on_real_photos(b0_and_onnx, data_dir) -> None:
    model, path = b0_and_onnx
    eager = Segmenter(model)
    runtime = Segmenter(path, threads=2)
    assert runtime.backend.name == "onnxruntime" and runtime.info == model.info
    for name in ("astronaut.jpg", "messi5.jpg", "grace_hopper.jpg"):
        a, b = eager.predict(data_dir / name), runtime.predict(data_dir / name)
        assert a.shape == b.shape and (a == b).mean() >= 0.995
        np.testing.assert_allclose(
            eager.predict_proba(data_dir / name), runtime.predict_proba(data_dir / name), atol=1e-4
        )


class ArgmaxWrapper(nn.Module):
    """What NVIDIA's deployable PeopleSemSegFormer ONNX gives: class ids at full input size."""

    def __init__(self, model: nn.Module, layout: str) -> None:
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = nn.functional.interpolate(self.model(pixels), size=pixels.shape[2:], mode="bilinear")
        labels = logits.argmax(1, keepdim=True)
        return labels if self.layout == "NCHW" else labels.permute(0, 2, 3, 1)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_nvidia_style_argmax_onnx(b0_and_onnx, data_dir, tmp_path, layout) -> None:
    model, _ = b0_and_onnx
    path = tmp_path / "deployable.onnx"
    pixels = torch.randn(1, 3, 512, 512)
    torch.onnx.export(
        ArgmaxWrapper(model, layout),
        (pixels,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        opset_version=17,
        dynamo=False,
    )  # fixed batch 1, like many deployables
    runtime = Segmenter(path, info=model.info)
    assert runtime.backend.output_kind == "labels"
    eager = Segmenter(model)
    for name in ("messi5.jpg", "grace_hopper.jpg"):
        # Labels can only be resized nearest-neighbour, so edges differ a little from resized logits; a random
        # model's masks are all edges, which makes this the worst case.
        assert (runtime.predict(data_dir / name) == eager.predict(data_dir / name)).mean() >= 0.97
    masks = runtime.predict_batch([data_dir / "messi5.jpg", data_dir / "astronaut.jpg"])  # fixed batch: one by one
    assert masks[1].shape == (512, 512)


def test_foreign_onnx_defaults_to_nvidia_normalisation(b0_and_onnx, tmp_path) -> None:
    import onnx

    _, path = b0_and_onnx
    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(graph, str(bare))
    segmenter = Segmenter(bare)
    assert segmenter.info.mean == (127.5, 127.5, 127.5) and segmenter.info.input_size == (512, 512)


def test_backend_errors(b0_and_onnx, tmp_path) -> None:
    _, path = b0_and_onnx
    with pytest.raises(ConfigError, match=r"runs an \.onnx file"):
        Segmenter("segformer_b0", backend="onnxruntime")
    with pytest.raises(ConfigError, match="unknown backend 'openvino'"):
        Segmenter(path, backend="openvino")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(ModelError, match=r"broken\.onnx: onnxruntime cannot load it"):
        Segmenter(broken)
    with pytest.raises(ModelError, match="no such ONNX file"):
        Segmenter(tmp_path / "missing.onnx")


def test_tensorrt_without_tensorrt_says_how_to_get_it(tmp_path) -> None:
    pytest.importorskip("peopleseg")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ModelError, match="pip install tensorrt"):
        Segmenter(engine, info=build_model("segformer_b0").info)


def test_the_tensorrt_backend_on_a_weights_file_says_it_needs_an_engine(tmp_path) -> None:
    weights = save_model(build_model("segformer_b0"), tmp_path / "b0.safetensors")
    with pytest.raises(ConfigError, match=r"runs a TensorRT engine \(.engine or .plan\), got .*b0\.safetensors"):
        Segmenter(weights, backend="tensorrt")


def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelError, match="no CUDA device"):
        Segmenter("segformer_b0", device="cuda")


@pytest.mark.gpu
def test_cuda_fp16_matches_cpu(data_dir) -> None:
    model = build_model("segformer_b0").eval()
    cpu = Segmenter(model).predict(data_dir / "messi5.jpg")
    gpu = Segmenter(model, device="cuda", precision="fp16")
    assert (gpu.predict(data_dir / "messi5.jpg") == cpu).mean() > 0.99
