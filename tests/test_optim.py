"""The SegFormer recipe: parameter groups, the lr schedule, and the losses."""

import math

import pytest
import torch

from peopleseg.engine.losses import segmentation_loss, soft_dice_loss
from peopleseg.engine.optim import build_optimizer, lr_factor, param_groups
from peopleseg.engine.train_config import OptimSection
from peopleseg.models import build_model


def test_groups_split_head_lr_and_decay() -> None:
    model = build_model("segformer_fan_tiny_hybrid")
    optim = OptimSection(lr=1e-4, weight_decay=0.05, head_lr_mult=10)
    groups = {g["name"]: g for g in param_groups(model, optim)}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone_no_decay"]["weight_decay"] == 0 and groups["backbone"]["weight_decay"] == 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups["backbone_no_decay"]["params"]}
    assert "backbone.cls_token" in no_decay and any("pos_embed" in n for n in no_decay)
    assert all(p.ndim >= 2 for p in groups["backbone"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_warmup_then_poly() -> None:
    optim = OptimSection(lr=1.0, warmup_steps=10, warmup_ratio=0.0, poly_power=1.0)
    assert lr_factor(0, optim, 110) == 0.0
    assert lr_factor(5, optim, 110) == pytest.approx(0.5)
    assert lr_factor(10, optim, 110) == pytest.approx(1.0)
    assert lr_factor(60, optim, 110) == pytest.approx(0.5)
    assert lr_factor(110, optim, 110) == pytest.approx(0.0)
    model = build_model("segformer_b0")
    optimizer, scheduler = build_optimizer(model, optim, 110)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * optimizer.param_groups[0]["initial_lr"])


def test_cross_entropy_ignores_255_and_upsamples() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = 10.0  # confident "person" everywhere
    masks = torch.tensor([[[1, 1, 255, 255], [1, 1, 255, 255], [0, 0, 255, 255], [0, 0, 255, 255]]])
    loss = segmentation_loss(logits, masks)
    # half of the valid pixels are right (loss ~0), half wrong (loss ~10)
    assert loss.item() == pytest.approx(5.0, abs=1e-3)
    weighted = segmentation_loss(logits, masks, class_weights=torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx(3 * 10 / 4, abs=1e-3)


def test_dice_is_zero_for_a_perfect_prediction() -> None:
    masks = torch.tensor([[[0, 1], [1, 255]]])
    logits = torch.stack([(masks == 0).float(), (masks == 1).float()], dim=1) * 50
    assert soft_dice_loss(logits, masks).item() == pytest.approx(0.0, abs=1e-3)
    assert soft_dice_loss(-logits, masks).item() > 0.5  # all wrong (eps smoothing keeps it below 1 on 3 pixels)
    assert math.isfinite(segmentation_loss(logits, masks, dice_weight=0.5).item())
