"""The folded decoder is an exact rewrite: same logits as the SegFormer head, for much less compute."""

import pytest
import torch
from conftest import randomise_batchnorm
from torch.utils.flop_counter import FlopCounterMode

from peopleseg.models import build_model
from peopleseg.models.fold import fold_decoder


def _macs(model: torch.nn.Module, pixels: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pixels)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", ["segformer_b0", "segformer_b2", "segformer_fan_tiny_hybrid"])
def test_folded_logits_equal_the_head(name: str) -> None:
    model = build_model(name, num_classes=3).eval()
    randomise_batchnorm(model)
    folded = fold_decoder(model)
    pixels = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        torch.testing.assert_close(folded(pixels), model(pixels), atol=1e-4, rtol=1e-4)
    assert folded.backbone is model.backbone  # shared, not copied


def test_fold_halves_b0_compute() -> None:
    model = build_model("segformer_b0").eval()
    pixels = torch.randn(1, 3, 512, 512)
    before, after = _macs(model, pixels), _macs(fold_decoder(model), pixels)
    assert after < 0.5 * before, (before, after)


def test_fold_needs_eval_mode() -> None:
    from peopleseg.models.fold import FoldedHead

    with pytest.raises(ValueError, match="eval mode"):
        FoldedHead(build_model("segformer_b0").train().decode_head)
