"""MiT encoders and the SegFormer decoder: sizes, published parameter counts, batching, export-friendly code."""

import ast
import inspect

import pytest
import torch

from peopleseg.models import build_model, layers, mit
from peopleseg.models.registry import REGISTRY


@pytest.mark.parametrize("name", [n for n, e in REGISTRY.items() if e.family == "mit"])
def test_params_match_published_150_class_counts(name: str) -> None:
    # The SegFormer paper counts its ADE20K models, whose head has 150 classes.
    model = build_model(name, num_classes=150)
    published = REGISTRY[name].published_params_m * 1e6
    assert abs(model.num_params() - published) / published < 0.03


@pytest.mark.parametrize(("name", "millions"), [("segformer_b0", 3.7), ("segformer_b2", 27.4)])
def test_two_class_params(name: str, millions: float) -> None:
    assert abs(build_model(name).num_params() / 1e6 - millions) / millions < 0.03


@pytest.mark.parametrize(("height", "width"), [(512, 512), (256, 384), (224, 96)])
def test_logits_at_quarter_resolution_for_any_multiple_of_32(height: int, width: int) -> None:
    model = build_model("segformer_b0").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 2, height // 4, width // 4)
    assert torch.isfinite(logits).all()


def test_any_class_count() -> None:
    model = build_model("segformer_b0", num_classes=5).eval()
    assert model.info.classes == [f"class_{i}" for i in range(5)]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 16, 16)


def test_batch_items_are_independent() -> None:
    model = build_model("segformer_b0").eval()
    batch = torch.randn(3, 3, 128, 160)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(batch[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    model = build_model("segformer_b0").train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_unknown_option_is_named() -> None:
    from peopleseg.errors import ModelError

    with pytest.raises(ModelError, match="unknown option 'depthz'"):
        build_model("segformer_b0", depthz=3)


def test_drop_path_rate_option_recorded_in_info() -> None:
    model = build_model("segformer_b1", drop_path_rate=0.0)
    assert model.info.arch_options == {"drop_path_rate": 0.0}
    assert all(block.drop_path.drop_prob == 0.0 for block in model.backbone.block4)


def test_no_spatial_state_and_sdpa_attention() -> None:
    # Export-friendly: no module stores H or W, and attention goes through SDPA.
    for module in (layers, mit):
        tree = ast.parse(inspect.getsource(module))
        stores = [
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr in {"H", "W"}
        ]
        assert not stores
    assert "scaled_dot_product_attention" in inspect.getsource(layers.EfficientSelfAttention.forward)


def test_batchnorm_not_syncbn() -> None:
    model = build_model("segformer_b0")
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
