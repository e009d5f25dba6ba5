"""SegFormer: a hierarchical encoder and the all-MLP decoder. The forward pass returns logits at 1/4 resolution."""

from __future__ import annotations

import torch
from torch import nn

from peopleseg.models.head import SegFormerHead
from peopleseg.models.info import ModelInfo


class SegFormer(nn.Module):
    """`backbone` is any encoder that returns four maps and declares `out_channels`; `info` travels with the weights.

    Input: float [N, 3, H, W], already normalised with `info.mean`/`info.std`, H and W multiples of 32.
    Output: logits [N, num_classes, H/4, W/4].
    """

    def __init__(self, backbone: nn.Module, decoder_dim: int, info: ModelInfo, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = SegFormerHead(backbone.out_channels, decoder_dim, info.num_classes, dropout)
        self.info = info

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(pixels))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
