"""The lean rewrite (models/lean.py) is exact: same logits as the model, whatever the encoder and stage choice;
its one approximate option, the cascaded decoder sum, stays close."""

import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_batchnorm

from peopleseg.models import build_model
from peopleseg.models.lean import ChannelFirstMixFFN, FusedAttention, lean_network


@pytest.mark.parametrize("name", ["segformer_b0", "segformer_b1"])
@pytest.mark.parametrize("stages", [(), (1, 2), (1, 2, 3, 4)])
def test_lean_logits_equal_the_model(name: str, stages: tuple[int, ...]) -> None:
    model = build_model(name, num_classes=3).eval()
    randomise_batchnorm(model)
    lean = lean_network(model, channel_first_stages=stages)
    pixels = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(lean(pixels), model(pixels), atol=1e-4, rtol=1e-4)
    rewritten = [m for m in lean.modules() if isinstance(m, ChannelFirstMixFFN)]
    assert len(rewritten) == 2 * len(stages)  # B0 and B1 have two blocks per stage
    assert len([m for m in lean.modules() if isinstance(m, FusedAttention)]) == 8  # every block, 1 to 8 heads


def test_lean_leaves_the_model_alone() -> None:
    model = build_model("segformer_b0").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lean_network(model)
    assert not any(isinstance(m, (ChannelFirstMixFFN, FusedAttention)) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lean_keeps_other_encoders_exact() -> None:
    model = build_model("segformer_fan_tiny_hybrid").eval()
    lean = lean_network(model)
    assert not any(isinstance(m, (ChannelFirstMixFFN, FusedAttention)) for m in lean.modules())
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(lean(pixels), model(pixels), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["segformer_b0", "segformer_b1"])
def test_cascaded_upsampling_is_close_to_the_model_but_not_equal(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).eval()
    randomise_batchnorm(model)
    pixels = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        exact, cascaded = model(pixels), lean_network(model, cascade_upsampling=True)(pixels)
    assert not torch.allclose(cascaded, exact, atol=1e-3)  # the option is on: bilinear does not compose exactly
    assert (cascaded - exact).abs().max() < 0.5 * exact.std()
    assert (cascaded.argmax(1) == exact.argmax(1)).float().mean() >= 0.98


def test_cascaded_upsampling_sums_coarse_to_fine() -> None:
    model = build_model("segformer_b0", num_classes=3).eval()
    randomise_batchnorm(model)
    lean = lean_network(model, cascade_upsampling=True)
    head = lean.decode_head
    pixels = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        stages = lean.backbone.stages(pixels)
        maps = [  # [N, C, H, W] per stage, 1/4 to 1/32
            stage(tokens).transpose(1, 2).reshape(1, -1, height, width)
            for stage, (tokens, _, height, width) in zip(head.stages, stages, strict=True)
        ]
        total = maps[3]
        for finer in (maps[2], maps[1], maps[0]):
            total = finer + F.interpolate(total, size=finer.shape[2:], mode="bilinear", align_corners=False)
        expected = head.classifier(torch.relu(total).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(lean(pixels), expected, atol=1e-5, rtol=1e-5)
