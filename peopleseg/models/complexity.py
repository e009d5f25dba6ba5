"""Parameter and compute counts, measured on the meta device so no memory or time goes into real tensors."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from peopleseg.models.registry import build_model


def count_macs(name: str, height: int = 512, width: int = 512, num_classes: int = 2) -> int:
    """Multiply-accumulates of one forward pass at height x width (FLOPs are twice this)."""
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes).eval()
        pixels = torch.empty(1, 3, height, width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(pixels)
    return counter.get_total_flops() // 2


def count_params(name: str, num_classes: int = 2) -> int:
    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes)
    return sum(p.numel() for p in model.parameters())
