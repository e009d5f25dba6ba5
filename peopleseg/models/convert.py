"""Load other projects' SegFormer checkpoints by key remapping: HF transformers, NVlabs/mmseg and TAO.

Each converter turns a foreign state dict into ours (module names of `mit.py`, `fan.py`, `head.py`); the architecture
is then inferred from the tensor shapes, so no config file is required.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from peopleseg.errors import ModelError

StateDict = dict[str, torch.Tensor]


@dataclass
class LoadReport:
    """What a checkpoint load found: the format, and keys that did not line up."""

    source: str
    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # Keys known to be unused by inference (e.g. TAO's dead `conv_seg`, classifier heads): dropped silently.
    ignored: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        parts = [f"{self.source}: {self.format} checkpoint"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s), e.g. {', '.join(self.missing[:3])}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s), e.g. {', '.join(self.unexpected[:3])}")
        if self.ignored:
            parts.append(f"{len(self.ignored)} unused key(s) ignored")
        return "; ".join(parts)


def _rename(state: StateDict, rules: list[tuple[str, str]]) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _fuse_kv(state: StateDict, key_name: str, value_name: str) -> StateDict:
    """Concatenate separate key and value projections into our fused `kv` (keys first, as NVlabs stores them)."""
    out: StateDict = {}
    for key, value in state.items():
        if f".{key_name}." in key:
            partner = key.replace(f".{key_name}.", f".{value_name}.")
            out[key.replace(f".{key_name}.", ".kv.")] = torch.cat([value, state[partner]], dim=0)
        elif f".{value_name}." not in key:
            out[key] = value
    return out


# --- HF transformers -------------------------------------------------------------------------------------------

# transformers 5 renamed the SegFormer modules; bring those names back to the 4.x ones first, then map 4.x to ours.
_HF_V5_TO_V4 = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.", r"segformer.encoder.block.\1."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
]

_HF_V4_TO_OURS = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d+)\.proj\.", lambda m: f"backbone.patch_embed{int(m[1]) + 1}.proj."),
    (
        r"^segformer\.encoder\.patch_embeddings\.(\d+)\.layer_norm\.",
        lambda m: f"backbone.patch_embed{int(m[1]) + 1}.norm.",
    ),
    (r"^segformer\.encoder\.block\.(\d+)\.", lambda m: f"backbone.block{int(m[1]) + 1}."),
    (r"^segformer\.encoder\.layer_norm\.(\d+)\.", lambda m: f"backbone.norm{int(m[1]) + 1}."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.key\.", ".attn.key."),
    (r"\.attention\.self\.value\.", ".attn.value."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"^decode_head\.linear_c\.(\d+)\.", lambda m: f"decode_head.linear_c{int(m[1]) + 1}."),
    (r"^decode_head\.linear_fuse\.", "decode_head.linear_fuse.conv."),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
]


def _is_hf(state: StateDict) -> bool:
    return any(k.startswith("segformer.") for k in state)


def convert_hf(state: StateDict) -> tuple[StateDict, list[str]]:
    state = {(k[len("model.") :] if k.startswith("model.segformer.") else k): v for k, v in state.items()}
    ignored = [k for k in state if k.startswith("classifier.")]  # SegformerForImageClassification's head
    state = {k: v for k, v in state.items() if k not in ignored}
    state = _rename(state, _HF_V5_TO_V4)
    out: StateDict = {}
    for key, value in state.items():
        for pattern, replacement in _HF_V4_TO_OURS:
            key = re.sub(pattern, replacement, key)  # type: ignore[arg-type]
        out[key] = value
    return _fuse_kv(out, "key", "value"), ignored


# --- NVlabs SegFormer, TAO -------------------------------------------------------------------------------------

# Prefixes under which NVlabs, mmseg 0.x, TAO 4/5 and Lightning wrappers store the encoder and the decoder.
_BACKBONE_PREFIXES = ("model.backbone.", "module.backbone.", "backbone.", "model.encoder.", "encoder.")
_HEAD_PREFIXES = ("model.decode_head.", "model.decoder.", "module.decode_head.", "decode_head.", "decoder.")
_NVLABS_RULES = [
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    # TAO's pure-PyTorch head (TAO 5.5+) keeps the fuse as Sequential(conv, BN, ReLU).
    (r"^decode_head\.linear_fuse\.0\.", "decode_head.linear_fuse.conv."),
    (r"^decode_head\.linear_fuse\.1\.", "decode_head.linear_fuse.bn."),
]


def _strip_prefixes(state: StateDict) -> StateDict:
    out: StateDict = {}
    leftovers: list[str] = []
    for key, value in state.items():
        for prefix in _BACKBONE_PREFIXES:
            if key.startswith(prefix):
                out["backbone." + key[len(prefix) :]] = value
                break
        else:
            for prefix in _HEAD_PREFIXES:
                if key.startswith(prefix):
                    out["decode_head." + key[len(prefix) :]] = value
                    break
            else:
                leftovers.append(key)
    # A bare encoder checkpoint (NVlabs `mit_b2.pth`, an ImageNet FAN): its keys carry no prefix at all.
    if not out:
        return {"backbone." + k: v for k, v in state.items()}
    for key in leftovers:
        out[key] = state[key]
    return out


_UNUSED_PATTERNS = (
    r"^decode_head\.conv_seg\.",  # TAO/mmseg keep a dead conv_seg beside linear_pred
    r"^backbone\.head\.",  # ImageNet classifier of a pretrained encoder
    r"^backbone\.norm\.",  # FAN's classifier norm (TAO's FANFPN deletes it)
    r"\.num_batches_tracked$",
    r"^auxiliary_head\.",
    r"^backbone\.learnable_downsample\.",  # FAN feat_downsample variant, unused by the SegFormer head
)


def convert_nvlabs_tao(state: StateDict) -> tuple[StateDict, list[str]]:
    state = _strip_prefixes(state)
    state = _rename(state, _NVLABS_RULES)
    state = _fold_fuse_bias(state)
    ignored = [k for k in state if any(re.search(p, k) for p in _UNUSED_PATTERNS)]
    return {k: v for k, v in state.items() if k not in ignored}, ignored


def _fold_fuse_bias(state: StateDict) -> StateDict:
    """A fuse conv with a bias feeds BN: BN(conv(x) + b) equals BN'(conv(x)) with running_mean' = running_mean - b."""
    bias = state.get("decode_head.linear_fuse.conv.bias")
    mean = state.get("decode_head.linear_fuse.bn.running_mean")
    if bias is None or mean is None:
        return state
    state = {k: v for k, v in state.items() if k != "decode_head.linear_fuse.conv.bias"}
    state["decode_head.linear_fuse.bn.running_mean"] = mean - bias
    return state


# --- mmseg 1.x native MiT (`layers.N.…`, nn.MultiheadAttention) --------------------------------------------------


def _is_mmseg_native(state: StateDict) -> bool:
    return any(re.search(r"(^|\.)layers\.\d+\.0\.projection\.", k) for k in state)


def convert_mmseg_native(state: StateDict) -> tuple[StateDict, list[str]]:
    if any(k.startswith(("decode_head.convs.", "decode_head.fusion_conv.")) for k in state):
        raise ModelError(
            "mmseg 1.x SegformerHead (convs.N with BN+ReLU per stage) is not the all-MLP head; "
            "load the encoder alone with backbone_only=True and fine-tune the head"
        )
    state = _strip_prefixes(state)
    out: StateDict = {}
    ignored: list[str] = []
    for key, value in state.items():
        m = re.match(r"backbone\.layers\.(\d+)\.(\d+)\.(.*)$", key)
        if not m:
            if any(re.search(p, key) for p in _UNUSED_PATTERNS):
                ignored.append(key)
            else:
                out[key] = value  # left for the load report to name
            continue
        stage, part, rest = int(m[1]) + 1, int(m[2]), m[3]
        if part == 0:  # patch embedding
            out[f"backbone.patch_embed{stage}.{rest.replace('projection.', 'proj.')}"] = value
        elif part == 2:  # stage norm
            out[f"backbone.norm{stage}.{rest}"] = value
        else:
            out.update(_mmseg_block_entry(f"backbone.block{stage}.", rest, value))
    return out, ignored


def _mmseg_block_entry(prefix: str, rest: str, value: torch.Tensor) -> StateDict:
    block, _, name = rest.partition(".")
    prefix = f"{prefix}{block}."
    if name.startswith("attn.attn.in_proj_"):
        kind = name.rsplit("_", 1)[1]  # weight or bias
        dim = value.shape[0] // 3
        return {prefix + f"attn.q.{kind}": value[:dim], prefix + f"attn.kv.{kind}": value[dim:]}
    if name.startswith("attn.attn.out_proj."):
        return {prefix + "attn.proj." + name.rsplit(".", 1)[1]: value}
    if name.startswith("ffn.layers."):
        index, _, kind = name[len("ffn.layers.") :].partition(".")
        target = {"0": "fc1", "1": "dwconv", "4": "fc2"}.get(index, f"ffn_layer_{index}")
        if target in ("fc1", "fc2") and value.ndim == 4:
            value = value.flatten(1)  # mmseg's 1x1 conv weights become linear weights
        return {prefix + f"mlp.{target}.{kind}": value}
    return {prefix + name: value}  # attn.sr, attn.norm, norm1, norm2


# --- detection -------------------------------------------------------------------------------------------------


def detect_and_convert(state: StateDict, backbone_only: bool = False) -> tuple[str, StateDict, list[str]]:
    """Return (format name, our state dict, ignored keys).

    `backbone_only`: an mmseg 1.x checkpoint's heads are dropped before conversion, so that a head this model
    cannot take (mmseg 1.x's SegformerHead) does not stop its encoder from loading.
    """
    if _is_hf(state):
        converted, ignored = convert_hf(state)
        return "HF transformers", converted, ignored
    if _is_mmseg_native(state):
        dropped: list[str] = []
        if backbone_only:
            dropped = [k for k in state if re.search(r"(^|\.)(decode_head|auxiliary_head)\.", k)]
            state = {k: v for k, v in state.items() if k not in dropped}
        converted, ignored = convert_mmseg_native(state)
        return "mmseg 1.x", converted, dropped + ignored
    converted, ignored = convert_nvlabs_tao(state)
    return "NVlabs/TAO", converted, ignored


def unwrap_checkpoint(obj: object, source: str) -> StateDict:
    """Find the state dict inside a checkpoint object (`state_dict`, `model`, `module`, or the dict itself)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ModelError(f"{source}: no state dict of tensors found in the checkpoint")
