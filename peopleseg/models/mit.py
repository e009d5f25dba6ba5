"""Mix Transformer (MiT-B0 … B5): the hierarchical SegFormer encoder.

Four stages, each an overlapping patch embedding, a stack of blocks (efficient attention + Mix-FFN) and a LayerNorm.
Module names follow NVlabs/SegFormer and TAO (`patch_embed1`, `block1.0.attn.q`, `norm1`, …) so their checkpoints load
by prefix alone; HF transformers checkpoints go through the key map in `weights.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from peopleseg.models.layers import DropPath, EfficientSelfAttention, MixFFN, OverlapPatchEmbed, tokens_to_map


@dataclass(frozen=True)
class MiTConfig:
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)
    strides: tuple[int, int, int, int] = (4, 2, 2, 2)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    # NVlabs uses 1e-6 in the block and stage norms; HF transformers uses PyTorch's default 1e-5 everywhere.
    norm_eps: float = 1e-6
    in_channels: int = 3


_WIDE = (64, 128, 320, 512)
MIT_VARIANTS: dict[str, MiTConfig] = {
    "b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": MiTConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2)),
    "b2": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3)),
    "b3": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3)),
    "b4": MiTConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3)),
    "b5": MiTConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3)),
}


class MiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, sr_ratio: int, config: MiTConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = EfficientSelfAttention(
            dim, num_heads, sr_ratio, config.qkv_bias, config.attn_drop_rate, config.drop_rate
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = MixFFN(dim, int(dim * config.mlp_ratio), config.drop_rate)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class MixVisionTransformer(nn.Module):
    """Returns four feature maps at strides 4, 8, 16 and 32."""

    def __init__(self, config: MiTConfig) -> None:
        super().__init__()
        self.config = config
        self.out_channels = tuple(config.embed_dims)
        self.out_strides = (4, 8, 16, 32)
        # Stochastic depth grows linearly over all blocks of all stages.
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        in_channels = config.in_channels
        start = 0
        for stage in range(4):
            dim = config.embed_dims[stage]
            embed = OverlapPatchEmbed(in_channels, dim, config.patch_sizes[stage], config.strides[stage])
            blocks = nn.ModuleList(
                MiTBlock(dim, config.num_heads[stage], config.sr_ratios[stage], config, rates[start + i])
                for i in range(config.depths[stage])
            )
            setattr(self, f"patch_embed{stage + 1}", embed)
            setattr(self, f"block{stage + 1}", blocks)
            setattr(self, f"norm{stage + 1}", nn.LayerNorm(dim, eps=config.norm_eps))
            in_channels = dim
            start += config.depths[stage]
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [feature_map for _, feature_map, _, _ in self.stages(x)]

    def stages(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, int]]:
        """Per stage, its normalised output twice, as [B, H*W, C] tokens and as the [B, C, H, W] map the next stage
        (and the decoder) takes, then H and W. The lean inference rewrite (`models/lean.py`) reads the tokens."""
        for stage in range(1, 5):
            x, height, width = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"block{stage}"):
                x = block(x, height, width)
            tokens = getattr(self, f"norm{stage}")(x)
            x = tokens_to_map(tokens, height, width)
            yield tokens, x, height, width


def _init_weights(module: nn.Module) -> None:
    # The NVlabs initialisation: truncated normal for linears, fan-out normal for convs.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
