"""FAN-Hybrid encoder (Fully Attentional Networks, Zhou et al. 2022) as used by NVIDIA TAO's SegFormer.

A two-stage ConvNeXt stem (stride 4 and 8) feeds a stride-2 patch projection (stride 16), a stack of FAN blocks
(token-mixing self-attention + channel-processing attention), then CaiT-style class-attention blocks.

Module and parameter names deliberately mirror TAO's `FANFPN` (`nvidia_tao_pytorch/cv/segformer/model/backbones/
fan.py`), so the `backbone.*` tensors of a TAO SegFormer checkpoint load here once that prefix is stripped. The
numerics reproduce TAO's, quirks included (see the comments in `ChannelProcessing` and `ClassAttentionBlock`).

Nothing here stores H or W as module state: every block receives the token-grid size from its caller, which reads it
from a tensor shape, so the encoder runs at any batch size and any input size divisible by 32 and traces for ONNX.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from peopleseg.models.layers import DropPath, EfficientSelfAttention, map_to_tokens, tokens_to_map

# TAO builds its transformer LayerNorms with eps=1e-6, except ChannelProcessing.norm_v, which keeps nn.LayerNorm's
# default 1e-5 because FANBlock never passes its norm_layer down. Weights trained with those eps values expect them.
_LN_EPS = 1e-6
_NORM_V_EPS = 1e-5


@dataclass(frozen=True)
class FANHybridConfig:
    """Every hyper-parameter of a FAN-Hybrid encoder; the defaults are the ones all four TAO variants share."""

    embed_dim: int
    depth: int
    num_heads: int
    out_index: int  # FAN block whose output is the third feature map
    convnext_depths: tuple[int, ...] = (3, 3)
    convnext_dims: tuple[int, ...] = (128, 256)
    convnext_patch_size: int = 4
    convnext_layer_scale_init: float = 1e-6
    convnext_drop_path_rate: float = 0.0
    hybrid_patch_size: int = 2  # stride of patch_embed.proj on the last ConvNeXt stage
    in_channels: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    cls_attn_layers: int = 2
    tokens_norm: bool = True
    eta: float = 1.0  # layer-scale init of the FAN and class-attention blocks
    use_pos_embed: bool = True
    pos_hidden_dim: int = 32
    pos_temperature: float = 10000.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    # TAO gives every FAN block the same rate (no linear decay). Its current SegFormer recipe trains with 0.3, the
    # older mmseg-based one with 0.0; it only matters for training.
    drop_path_rate: float = 0.0
    activation_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not 0 <= self.out_index < self.depth:
            raise ValueError(f"out_index {self.out_index} is outside 0..{self.depth - 1}")
        if len(self.convnext_depths) != len(self.convnext_dims):
            raise ValueError("convnext_depths and convnext_dims must have the same length")

    @property
    def stride(self) -> int:
        """Stride of the token grid relative to the input image."""
        return self.convnext_patch_size * 2 ** (len(self.convnext_depths) - 1) * self.hybrid_patch_size


# TAO's fan_{tiny_8,small_12,base_16,large_16}_p4_hybrid. "small_12" really has 10 FAN blocks, and "large_16" 22.
FAN_HYBRID_VARIANTS: dict[str, FANHybridConfig] = {
    "tiny": FANHybridConfig(embed_dim=192, depth=8, num_heads=8, out_index=7),
    "small": FANHybridConfig(embed_dim=384, depth=10, num_heads=8, out_index=9),
    "base": FANHybridConfig(embed_dim=448, depth=16, num_heads=8, out_index=15),
    "large": FANHybridConfig(embed_dim=480, depth=22, num_heads=10, out_index=18, convnext_depths=(3, 5)),
}


# ----------------------------------------------------------------------------------------------------------------
# ConvNeXt stem (TAO: patch_embed.backbone)
# ----------------------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map (parameters named like nn.LayerNorm's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvMlp(nn.Module):
    """Point-wise MLP written with 1x1 convolutions so the map never leaves [B, C, H, W]."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """7x7 depth-wise conv, LayerNorm, point-wise MLP, layer scale `gamma`, residual."""

    def __init__(self, dim: int, layer_scale_init: float, drop_path: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=_LN_EPS)
        self.mlp = ConvMlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x)))
        return x + self.drop_path(y * self.gamma.reshape(1, -1, 1, 1))


class ConvNeXtStage(nn.Module):
    """Optional LayerNorm + strided-conv downsample, then ConvNeXt blocks."""

    def __init__(
        self, in_dim: int, out_dim: int, stride: int, depth: int, layer_scale_init: float, drop_paths: list[float]
    ) -> None:
        super().__init__()
        if in_dim != out_dim or stride > 1:
            self.downsample: nn.Module = nn.Sequential(
                LayerNorm2d(in_dim, eps=_LN_EPS), nn.Conv2d(in_dim, out_dim, stride, stride=stride)
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*(ConvNeXtBlock(out_dim, layer_scale_init, p) for p in drop_paths[:depth]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtStem(nn.Module):
    """The first ConvNeXt stages (TAO's ConvNeXtFANBackbone with use_head=False); returns every stage's map."""

    def __init__(self, config: FANHybridConfig) -> None:
        super().__init__()
        dims, depths = config.convnext_dims, config.convnext_depths
        patch = config.convnext_patch_size
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, dims[0], patch, stride=patch), LayerNorm2d(dims[0], eps=_LN_EPS)
        )
        total = sum(depths)  # drop-path rate rising linearly from 0 over all ConvNeXt blocks, as in timm
        rates = [config.convnext_drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, start, prev = [], 0, dims[0]
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            stride = 2 if i > 0 else 1
            stages.append(
                ConvNeXtStage(prev, dim, stride, depth, config.convnext_layer_scale_init, rates[start : start + depth])
            )
            start, prev = start + depth, dim
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class HybridEmbed(nn.Module):
    """ConvNeXt stem, then a strided conv that turns its last map into transformer tokens."""

    def __init__(self, config: FANHybridConfig) -> None:
        super().__init__()
        self.backbone = ConvNeXtStem(config)
        patch = config.hybrid_patch_size
        self.proj = nn.Conv2d(config.convnext_dims[-1], config.embed_dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, list[torch.Tensor]]:
        feats = self.backbone(x)
        grid = self.proj(feats[-1])
        return map_to_tokens(grid), grid.shape[2], grid.shape[3], feats


# ----------------------------------------------------------------------------------------------------------------
# Transformer part
# ----------------------------------------------------------------------------------------------------------------


class PositionalEncodingFourier(nn.Module):
    """DETR-style sine/cosine features of the normalised (y, x) grid position, mixed by a 1x1 conv.

    Computed from the runtime grid size, so there is no learned table to interpolate when the input size changes.
    """

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(hidden_dim * 2, dim, 1)
        self.hidden_dim = hidden_dim
        self.temperature = temperature

    def forward(self, height: int, width: int) -> torch.Tensor:
        """[1, dim, height, width] encoding; it broadcasts over the batch."""
        weight = self.token_projection.weight
        # The angles reach 2*pi: build them in at least float32 even for a half-precision model (TAO: fp32=True).
        dtype, device = torch.promote_types(weight.dtype, torch.float32), weight.device
        eps, scale = 1e-6, 2 * math.pi
        # Positions 1..n scaled so the last one sits (just under) 2*pi, as in TAO.
        y = torch.arange(1, height + 1, dtype=dtype, device=device)
        x = torch.arange(1, width + 1, dtype=dtype, device=device)
        y = y / (y[-1:] + eps) * scale
        x = x / (x[-1:] + eps) * scale
        i = torch.arange(self.hidden_dim, dtype=dtype, device=device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.hidden_dim)
        pos_y = self._sin_cos(y[:, None] / dim_t)  # [H, hidden]
        pos_x = self._sin_cos(x[:, None] / dim_t)  # [W, hidden]
        pos = torch.cat(
            (pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)), dim=-1
        )
        return self.token_projection(pos.permute(2, 0, 1).unsqueeze(0).to(weight.dtype))

    @staticmethod
    def _sin_cos(angles: torch.Tensor) -> torch.Tensor:
        # sin of the even channels and cos of the odd ones, interleaved back in channel order.
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1).flatten(1)


class TokenMixing(EfficientSelfAttention):
    """Plain multi-head self-attention over all tokens: SegFormer's attention with no spatial reduction, and the
    same `q`, fused `kv` and `proj` names that TAO uses."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__(dim, num_heads, sr_ratio=1, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, 0, 0)  # the grid size only matters for spatial reduction


class DWConv(nn.Module):
    """Depth-wise 3x3 conv, GELU, BatchNorm, depth-wise 3x3 conv on the token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = tokens_to_map(x, height, width)
        return map_to_tokens(self.conv2(self.bn(self.act(self.conv1(x)))))


class Mlp(nn.Module):
    """FAN's MLP: fc1, a gated depth-wise-conv residual, fc2.

    TAO defines `act` but never calls it: the only non-linearity is the GELU inside `dwconv`. Kept that way (the
    module exists only so its name matches; GELU has no parameters).
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.gamma = nn.Parameter(torch.ones(hidden_dim))
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        x = self.drop(self.gamma * self.dwconv(x, height, width)) + x
        return self.drop(self.fc2(x))


class ChannelProcessing(nn.Module):
    """FAN's channel attention: a per-channel sigmoid gate, computed from token statistics, scales an MLP output.

    Per head h and channel c: gate[h, c] = temperature[h] * sigmoid(sum_n softmax_n(q)[n, c] * mean_c'(softmax_n(x))
    [n]), where softmax_n runs over the tokens and mean_c' over the head's channels (TAO's adaptive_avg_pool2d to
    (N, 1)). The output is gate * norm_v(mlp_v(x)), broadcast over the tokens.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, mlp_hidden_dim: int, attn_drop: float, drop: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp_v = Mlp(dim, mlp_hidden_dim, drop)
        self.norm_v = nn.LayerNorm(dim, eps=_NORM_V_EPS)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        # [B, heads, head_dim, N]: tokens last, so both softmaxes run over the last axis.
        q = self.q(x).reshape(batch, tokens, self.num_heads, head_dim).permute(0, 2, 3, 1).softmax(-1)
        k = x.reshape(batch, tokens, self.num_heads, head_dim).permute(0, 2, 3, 1).softmax(-1)
        k = k.mean(dim=2, keepdim=True)  # [B, heads, 1, N]
        gate = torch.sigmoid((q * k).sum(-1)) * self.temperature.reshape(1, self.num_heads, 1)  # [B, heads, hd]
        gate = self.attn_drop(gate).reshape(batch, 1, dim)  # channel index = head * head_dim + c, as in TAO
        return gate * self.norm_v(self.mlp_v(x, height, width))


class FANBlock(nn.Module):
    """Pre-norm token mixing and channel processing, each with a layer-scaled residual."""

    def __init__(self, config: FANHybridConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = TokenMixing(dim, config.num_heads, config.qkv_bias, config.attn_drop_rate, config.drop_rate)
        self.drop_path = DropPath(config.drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = ChannelProcessing(
            dim, config.num_heads, config.qkv_bias, int(dim * config.mlp_ratio), config.attn_drop_rate, config.drop_rate
        )
        self.gamma1 = nn.Parameter(torch.full((dim,), config.eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), config.eta))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), height, width))


class ClassAttn(nn.Module):
    """Attention where only the class token (token 0) queries; keys and values come from every token."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, dim] update of the class token."""
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q(x[:, :1]).reshape(batch, 1, self.num_heads, head_dim).transpose(1, 2)
        k = self.k(x).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        v = self.v(x).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, 1, dim)))


class ClassAttnMlp(nn.Module):
    """Standard two-layer GELU MLP (timm's Mlp) used on the class token."""

    def __init__(self, dim: int, hidden_dim: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ClassAttentionBlock(nn.Module):
    """CaiT class-attention block as written in FAN/TAO.

    Reproduced exactly, although it is unusual for the patch tokens: the attention residual adds their own
    normalised value (x + gamma1 * norm1(x)), and with tokens_norm the final residual adds norm2(x) to itself, i.e.
    the patch tokens leave the block as 2 * norm2(x). Pretrained weights (and the decode head) expect that.
    """

    def __init__(self, config: FANHybridConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = ClassAttn(dim, config.num_heads, config.qkv_bias, config.attn_drop_rate, config.drop_rate)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = ClassAttnMlp(dim, int(dim * config.mlp_ratio), config.drop_rate)
        self.gamma1 = nn.Parameter(torch.full((dim,), config.eta))
        self.gamma2 = nn.Parameter(torch.full((dim,), config.eta))
        self.tokens_norm = config.tokens_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        x = x + self.gamma1 * torch.cat((self.attn(x_norm), x_norm[:, 1:]), dim=1)
        # tokens_norm (every TAO variant) normalises all tokens, otherwise only the class token.
        x = self.norm2(x) if self.tokens_norm else torch.cat((self.norm2(x[:, :1]), x[:, 1:]), dim=1)
        cls = self.gamma2 * self.mlp(x[:, :1])
        return x + torch.cat((cls, x[:, 1:]), dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------


class FANHybridEncoder(nn.Module):
    """FAN-Hybrid feature pyramid: [stage-1 ConvNeXt, stage-2 ConvNeXt, FAN block `out_index`, class-attn tokens].

    State-dict keys equal TAO's FANFPN keys (without its `backbone.` prefix), e.g. `patch_embed.backbone.stem.0.weight`,
    `patch_embed.proj.weight`, `pos_embed.token_projection.weight`, `cls_token`, `blocks.0.mlp.mlp_v.dwconv.bn.
    running_mean`, `cls_attn_blocks.1.attn.q.weight`. There is no final `norm` / `head` (FANFPN deletes them) and no
    `learnable_downsample` (TAO's feat_downsample=False).
    """

    out_strides: tuple[int, ...] = (4, 8, 16, 16)

    def __init__(self, config: FANHybridConfig) -> None:
        super().__init__()
        if len(config.convnext_dims) != 2 or config.stride != 16:
            raise ValueError("FANHybridEncoder expects two ConvNeXt stages and a total stride of 16")
        self.config = config
        dim = config.embed_dim
        self.patch_embed = HybridEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = (
            PositionalEncodingFourier(dim, config.pos_hidden_dim, config.pos_temperature)
            if config.use_pos_embed
            else None
        )
        self.pos_drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(FANBlock(config) for _ in range(config.depth))
        self.cls_attn_blocks = nn.ModuleList(ClassAttentionBlock(config) for _ in range(config.cls_attn_layers))
        self.out_channels: tuple[int, ...] = (*config.convnext_dims, dim, dim)
        self._init_weights()

    @classmethod
    def from_variant(cls, name: str, **overrides: object) -> FANHybridEncoder:
        """Build one of FAN_HYBRID_VARIANTS ("tiny", "small", "base", "large"), optionally overriding fields."""
        return cls(replace(FAN_HYBRID_VARIANTS[name], **overrides))

    def _init_weights(self) -> None:
        # Mirrors TAO's initialisation: truncated normal for linear layers and the ConvNeXt convs, He-style normal for
        # the depth-wise convs of the FAN MLPs, PyTorch defaults elsewhere. Layer-scale vectors were set at build time.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, DWConv):
                for conv in (module.conv1, module.conv2):
                    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
                    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
                    nn.init.zeros_(conv.bias)
        for module in self.patch_embed.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def num_params_as_classifier(self, num_classes: int = 1000) -> int:
        """Parameter count of the published ImageNet classifier: this encoder + final LayerNorm + linear head."""
        dim = self.config.embed_dim
        return sum(p.numel() for p in self.parameters()) + 2 * dim + dim * num_classes + num_classes

    def _run_block(self, block: FANBlock, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.config.activation_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, height, width, use_reentrant=False)
        return block(x, height, width)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] image (H, W divisible by 32 for the SegFormer decoder; 16 suffices here) to four maps."""
        tokens, height, width, outs = self.patch_embed(x)
        if self.pos_embed is not None:
            tokens = tokens + map_to_tokens(self.pos_embed(height, width)).to(tokens.dtype)
        tokens = self.pos_drop(tokens)

        for index, block in enumerate(self.blocks):
            tokens = self._run_block(block, tokens, height, width)
            if index == self.config.out_index:
                outs.append(tokens_to_map(tokens, height, width))

        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        for block in self.cls_attn_blocks:
            tokens = block(tokens)
        outs.append(tokens_to_map(tokens[:, 1:], height, width))
        return outs
