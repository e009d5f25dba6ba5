"""The SegFormer optimiser recipe: AdamW with the decode head at 10x lr, no weight decay on norms, biases and
position parameters, and a linear warm-up followed by polynomial decay (stepped per optimiser step)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from peopleseg.engine.train_config import OptimSection

# Parameters that are not weights to shrink: position embeddings, class tokens, layer scales, attention temperature.
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "gamma", "temperature")


def param_groups(model: nn.Module, optim: OptimSection) -> list[dict]:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = name.startswith("decode_head.")
        # Split by rank (nanoGPT): matrices and kernels decay; vectors (biases, norm scales) do not.
        decay = param.ndim >= 2 and not any(key in name for key in _NO_DECAY_NAMES)
        groups.setdefault((is_head, decay), []).append(param)
    result = []
    for (is_head, decay), params in sorted(groups.items()):
        result.append(
            {
                "params": params,
                "lr": optim.lr * (optim.head_lr_mult if is_head else 1.0),
                "weight_decay": optim.weight_decay if decay else 0.0,
                "name": f"{'head' if is_head else 'backbone'}{'' if decay else '_no_decay'}",
            }
        )
    return result


def lr_factor(step: int, optim: OptimSection, max_steps: int) -> float:
    """Multiplier of each group's base lr at optimiser step `step`."""
    if step < optim.warmup_steps:
        return optim.warmup_ratio + (1 - optim.warmup_ratio) * step / max(optim.warmup_steps, 1)
    span = max(max_steps - optim.warmup_steps, 1)
    progress = min((step - optim.warmup_steps) / span, 1.0)
    floor = optim.min_lr / optim.lr if optim.lr else 0.0
    return floor + (1 - floor) * (1 - progress) ** optim.poly_power


def build_optimizer(
    model: nn.Module, optim: OptimSection, max_steps: int | Callable[[], int]
) -> tuple[torch.optim.Optimizer, object]:
    """`max_steps` may be a function, read at every step: a time-budgeted run fits its step count while training."""
    total = max_steps if callable(max_steps) else lambda: max_steps
    optimizer = torch.optim.AdamW(param_groups(model, optim), lr=optim.lr, betas=optim.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim, total()))
    return optimizer, scheduler
