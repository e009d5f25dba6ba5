"""The all-MLP SegFormer decoder.

Each encoder map is projected to one width by a linear layer, upsampled to the stride-4 map's size, concatenated
(deepest first, as NVlabs, TAO and HF do), fused by a 1x1 conv + BN + ReLU, and classified by a 1x1 conv.
Names follow NVlabs/TAO (`linear_c1…4`, `linear_fuse.conv/bn`, `linear_pred`) so their checkpoints load by prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LinearProjection(nn.Module):
    """A per-pixel linear layer (equal to a 1x1 conv) kept as `nn.Linear` so checkpoint shapes match."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        x = self.proj(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(batch, -1, height, width)


class ConvBNReLU(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SegFormerHead(nn.Module):
    def __init__(self, in_channels: Sequence[int], embed_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"the SegFormer head takes 4 feature maps, got {len(in_channels)} channel counts")
        self.in_channels = tuple(in_channels)
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        for index, channels in enumerate(in_channels, start=1):
            setattr(self, f"linear_c{index}", LinearProjection(channels, embed_dim))
        self.linear_fuse = ConvBNReLU(4 * embed_dim, embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        projected = []
        for index in (4, 3, 2, 1):
            x = getattr(self, f"linear_c{index}")(features[index - 1])
            if index > 1:  # decided by position, not by comparing shapes, so tracing bakes in no branch
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            projected.append(x)
        x = self.linear_fuse(torch.cat(projected, dim=1))
        return self.linear_pred(self.dropout(x))
