"""An inference-time rewrite of a SegFormer that computes the same logits with less memory traffic.

Measured with onnxruntime on a 2-core CPU (B0, 512x512), most of the time left after folding the decoder
(`models/fold.py`) was not arithmetic but layout: every Mix-FFN turned its 4x-wide hidden tokens [N, HW, 4C] into a
map and back for the depth-wise conv, and single-head attention reshaped and transposed for heads it did not have.
`lean_network` rewrites a copy of the model so that:

- the decoder is folded (`fold_decoder`);
- the Mix-FFNs of the high-resolution stages (1 and 2 by default) run channel-first: the narrow input [N, HW, C]
  becomes a map once, then 1x1 conv, depth-wise conv, GELU, 1x1 conv, and back to tokens once (4x less data
  moved, and onnxruntime chains the convs). The low-resolution stages keep token-major matrix products, which
  onnxruntime's dynamic INT8 kernels cover (its integer convolution is far slower); that split measured fastest;
- attention with one head is three matrix products with no head axis.

The arithmetic is the same, so outputs match the original up to float rounding; a test proves it. Encoders other
than MiT (FAN-Hybrid) keep their own blocks; only exact MiT modules are rewritten.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from peopleseg.models.fold import FoldedSegFormer, fold_decoder
from peopleseg.models.layers import EfficientSelfAttention, MixFFN, map_to_tokens, tokens_to_map
from peopleseg.models.mit import MixVisionTransformer
from peopleseg.models.segformer import SegFormer


def _linear_as_conv(linear: nn.Linear) -> nn.Conv2d:
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1, bias=linear.bias is not None)
    conv.weight.data = linear.weight.detach()[:, :, None, None].clone()
    if linear.bias is not None:
        conv.bias.data = linear.bias.detach().clone()  # type: ignore[union-attr]
    return conv


class ChannelFirstMixFFN(nn.Module):
    """MixFFN on a [N, C, H, W] map: the wide hidden activations never change layout."""

    def __init__(self, ffn: MixFFN) -> None:
        super().__init__()
        self.fc1 = _linear_as_conv(ffn.fc1)
        self.dwconv = ffn.dwconv
        self.act = ffn.act
        self.fc2 = _linear_as_conv(ffn.fc2)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden = self.act(self.dwconv(self.fc1(tokens_to_map(x, height, width))))
        return map_to_tokens(self.fc2(hidden))


class SingleHeadAttention(nn.Module):
    """EfficientSelfAttention with `num_heads == 1`, written without the head axis."""

    def __init__(self, attention: EfficientSelfAttention) -> None:
        super().__init__()
        if attention.num_heads != 1:
            raise ValueError("SingleHeadAttention rewrites one-head attention only")
        self.q, self.kv, self.proj = attention.q, attention.kv, attention.proj
        self.sr_ratio = attention.sr_ratio
        if self.sr_ratio > 1:
            self.sr, self.norm = attention.sr, attention.norm
        self.scale = float(attention.q.out_features) ** -0.5

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        dim = x.shape[-1]
        query = self.q(x) * self.scale
        if self.sr_ratio > 1:
            x = self.norm(map_to_tokens(self.sr(tokens_to_map(x, height, width))))
        key, value = self.kv(x).split(dim, dim=-1)
        weights = torch.softmax(query @ key.transpose(1, 2), dim=-1)
        return self.proj(weights @ value)


def lean_network(model: SegFormer, channel_first_stages: tuple[int, ...] = (1, 2)) -> FoldedSegFormer:
    """A rewritten copy of `model` (in eval mode) for inference; `model` itself is left as it is.

    `channel_first_stages`: the MiT stages (1-4) whose Mix-FFNs run channel-first.
    """
    folded = fold_decoder(model.eval())
    lean = copy.deepcopy(folded)  # the fold shares the encoder: copy before swapping its modules
    if not isinstance(lean.backbone, MixVisionTransformer):
        return lean.eval()
    for stage in range(1, 5):
        for block in getattr(lean.backbone, f"block{stage}"):
            if type(block.mlp) is MixFFN and stage in channel_first_stages:
                block.mlp = ChannelFirstMixFFN(block.mlp)
            if type(block.attn) is EfficientSelfAttention and block.attn.num_heads == 1:
                block.attn = SingleHeadAttention(block.attn)
    return lean.eval()
