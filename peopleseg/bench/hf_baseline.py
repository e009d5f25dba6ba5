"""The baseline users would otherwise run: HF transformers' `SegformerForSemanticSegmentation`, eager fp32.

Its config is written by hand from our MiT model's own settings (nothing comes from a hub), and our weights are
copied in, so its masks can be compared with ours. The copy reuses our HF loader's key map backwards: each HF
tensor is tagged with its index, pushed through `convert_hf`, and the tags then say which of our tensors (or which
rows of our fused key/value projection) each HF tensor is. Every key and shape must line up; if one does not, the
model keeps random weights and its agreement is reported as n/a.
"""

from __future__ import annotations

import torch
from torch import nn

from peopleseg.errors import ModelError
from peopleseg.models.convert import convert_hf
from peopleseg.models.info import ModelInfo
from peopleseg.models.mit import MixVisionTransformer
from peopleseg.models.segformer import SegFormer


def hf_unavailable_reason(model: SegFormer) -> str | None:
    """Why an HF mirror of `model` cannot be built here, or None when it can."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed (pip install transformers)"
    if not isinstance(model.backbone, MixVisionTransformer):
        return f"HF transformers has no SegFormer with the {model.info.arch} encoder (only MiT)"
    return None


def build_hf_segformer(model: SegFormer) -> tuple[nn.Module, bool]:
    """An HF SegFormer with `model`'s architecture, in eval mode; the flag says whether our weights were copied in.

    HF's LayerNorms use eps 1e-5 where NVlabs (and our default) use 1e-6, so the two differ by float rounding even
    with the same weights: that is part of what the agreement column shows.
    """
    reason = hf_unavailable_reason(model)
    if reason is not None:
        raise ModelError(reason)
    import transformers

    mit = model.backbone.config
    config = transformers.SegformerConfig(
        num_channels=mit.in_channels,
        num_encoder_blocks=4,
        depths=list(mit.depths),
        sr_ratios=list(mit.sr_ratios),
        hidden_sizes=list(mit.embed_dims),
        patch_sizes=list(mit.patch_sizes),
        strides=list(mit.strides),
        num_attention_heads=list(mit.num_heads),
        mlp_ratios=[int(mit.mlp_ratio)] * 4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=0.0,
        decoder_hidden_size=model.decode_head.embed_dim,
        num_labels=model.info.num_classes,
    )
    torch.manual_seed(0)  # the random weights, should the copy not fit, are the same on every run
    hf = transformers.SegformerForSemanticSegmentation(config).eval()
    copied = mit.qkv_bias and mit.mlp_ratio == int(mit.mlp_ratio) and copy_weights_into_hf(model, hf)
    return hf, bool(copied)


def copy_weights_into_hf(model: SegFormer, hf: nn.Module) -> bool:
    """Copy `model`'s weights into `hf` when every key and shape lines up; False (and `hf` untouched) otherwise."""
    hf_state = hf.state_dict()
    names = list(hf_state)
    tags = {}
    for index, name in enumerate(names):
        rows = hf_state[name].shape[0] if hf_state[name].ndim else 1
        tags[name] = torch.full((rows,), float(index), dtype=torch.float64)  # float64: exact up to 2**53 tensors
    try:
        mapped, ignored = convert_hf(tags)
    except (KeyError, ModelError):
        return False
    ours = model.state_dict()
    if ignored or set(mapped) != set(ours):
        return False
    plan: list[tuple[str, torch.Tensor]] = []
    used: set[str] = set()
    for key, tag in mapped.items():
        start = 0
        for index in dict.fromkeys(int(v) for v in tag.tolist()):  # the HF sources, in concatenation order
            name = names[index]
            target = hf_state[name]
            rows = target.shape[0] if target.ndim else 1
            source = ours[key][start : start + rows] if target.ndim else ours[key]
            start += rows
            if source.shape != target.shape or name in used:
                return False
            plan.append((name, source))
            used.add(name)
        if start != (ours[key].shape[0] if ours[key].ndim else 1):
            return False
    if used != set(names):
        return False
    with torch.no_grad():
        for name, source in plan:
            hf_state[name].copy_(source)
    return True


class HFBackend:
    """A Segmenter backend around the HF model: normalised pixels in, logits at 1/4 resolution out."""

    name = "hf"
    output_kind = "logits"

    def __init__(self, hf: nn.Module, info: ModelInfo, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.hf = hf.to(self.device).eval()
        self.info = info

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=pixels.to(self.device)).logits
