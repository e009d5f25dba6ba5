"""Every registry model builds, runs at 512x512, traces with torch.export and exports to ONNX that matches torch."""

import onnx
import pytest
import torch

from peopleseg.export.onnx_export import check_onnx_parity, export_onnx
from peopleseg.models import build_model
from peopleseg.models.registry import REGISTRY

pytest.importorskip("onnxruntime")

# The deep variants run the same code as b1 and fan_tiny with more blocks, for 13-40 s each on 2 cores: they run
# with -m slow, so the default suite stays well inside its 10 minutes.
SLOW = {
    "segformer_b2",
    "segformer_b3",
    "segformer_b4",
    "segformer_b5",
    "segformer_fan_small_hybrid",
    "segformer_fan_base_hybrid",
    "segformer_fan_large_hybrid",
}
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in REGISTRY]


@pytest.mark.parametrize("name", NAMES)
def test_forward_export_and_onnx(name: str, tmp_path) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 512, 512))
    assert logits.shape == (1, 2, 128, 128) and torch.isfinite(logits).all()

    # torch.export with a symbolic batch: the graph must not specialise on the example's batch size.
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 256, 256),), dynamic_shapes={"pixels": {0: batch}})
    single = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(single), model(single), atol=1e-4, rtol=1e-4)

    result = export_onnx(model, tmp_path / f"{name}.onnx", check=True, check_batch=1, slim=False)
    assert result.max_abs_diff < 1e-3 and result.argmax_agreement > 0.999
    graph = onnx.load(str(result.path))
    assert [i.name for i in graph.graph.input] == ["input"] and [o.name for o in graph.graph.output] == ["output"]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["arch"] == name and meta["output_kind"] == "logits"


def test_onnx_batch_axis_is_dynamic(tmp_path) -> None:
    model = build_model("segformer_b0").eval()
    path = export_onnx(model, tmp_path / "b0.onnx", batch=1, check=False).path
    diff, agreement = check_onnx_parity(model, path, batch=3)
    assert diff < 1e-3 and agreement > 0.999
