"""Per-pixel cross-entropy (ignore 255, optional class weights) plus an optional soft Dice term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    ignore_index: int = 255,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 0.0,
) -> torch.Tensor:
    """`logits` [N, C, h, w] at any resolution are upsampled to the masks' [N, H, W] first (as mmseg does)."""
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits.float(), masks, weight=class_weights, ignore_index=ignore_index)
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, masks, ignore_index)
    return loss


def soft_dice_loss(
    logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = 255, eps: float = 1.0
) -> torch.Tensor:
    """1 - mean over classes of the soft Dice coefficient, over valid pixels of the whole batch."""
    probs = logits.float().softmax(dim=1)
    valid = (masks != ignore_index).unsqueeze(1)
    target = F.one_hot(masks.clamp(0, logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float()
    probs, target = probs * valid, target * valid
    dims = (0, 2, 3)
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()
