"""Tests for the FAN-Hybrid encoder: sizes, TAO key names, reference math, batch independence, ONNX export."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F

from peopleseg.models.fan import FAN_HYBRID_VARIANTS, FANHybridConfig, FANHybridEncoder

# NVlabs/FAN README, "FAN-Hybrid ImageNet-1K trained models" (#Params of the classifier).
PUBLISHED_PARAMS = {"tiny": 7.4e6, "small": 26.3e6, "base": 50.4e6, "large": 76.8e6}


@pytest.fixture(scope="module")
def tiny() -> FANHybridEncoder:
    torch.manual_seed(0)
    return FANHybridEncoder.from_variant("tiny").eval()


# ----------------------------------------------------------------------------------------------------------------
# A straightforward re-implementation in TAO's style, reading the weights from a state dict: explicit
# softmax(q k^T * scale) v attention, TAO's softmax / adaptive_avg_pool2d / repeat_interleave channel attention,
# H and W as plain arguments, positional encoding built with arange/repeat as TAO does.
# ----------------------------------------------------------------------------------------------------------------


def _linear(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def _ln(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _ln2d(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-6)
    return x * sd[f"{name}.weight"][:, None, None] + sd[f"{name}.bias"][:, None, None]


def _conv(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor, **kwargs: int) -> torch.Tensor:
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], **kwargs)


def ref_convnext(sd: dict[str, torch.Tensor], x: torch.Tensor, depths: tuple[int, ...]) -> list[torch.Tensor]:
    p = "patch_embed.backbone"
    x = _ln2d(sd, f"{p}.stem.1", _conv(sd, f"{p}.stem.0", x, stride=4))
    outs = []
    for s, depth in enumerate(depths):
        if s > 0:
            x = _conv(sd, f"{p}.stages.{s}.downsample.1", _ln2d(sd, f"{p}.stages.{s}.downsample.0", x), stride=2)
        for b in range(depth):
            q = f"{p}.stages.{s}.blocks.{b}"
            y = _conv(sd, f"{q}.conv_dw", x, padding=3, groups=x.shape[1])
            y = _conv(sd, f"{q}.mlp.fc2", F.gelu(_conv(sd, f"{q}.mlp.fc1", _ln2d(sd, f"{q}.norm", y))))
            x = x + y * sd[f"{q}.gamma"].reshape(1, -1, 1, 1)
        outs.append(x)
    return outs


def ref_pos_embed(sd: dict[str, torch.Tensor], batch: int, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    hidden, temperature, eps, scale = 32, 10000, 1e-6, 2 * math.pi
    y_embed = torch.arange(1, h + 1, dtype=dtype).unsqueeze(1).repeat(1, 1, w)
    x_embed = torch.arange(1, w + 1, dtype=dtype).repeat(1, h, 1)
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(hidden, dtype=dtype)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / hidden)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack([pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()], dim=4).flatten(3)
    pos_y = torch.stack([pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()], dim=4).flatten(3)
    pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
    pos = _conv(sd, "pos_embed.token_projection", pos)
    return pos.repeat(batch, 1, 1, 1)


def ref_token_mixing(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    q = _linear(sd, f"{p}.q", x).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    kv = _linear(sd, f"{p}.kv", x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    k, v = kv[0], kv[1]
    attn = (q * (c // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)
    return _linear(sd, f"{p}.proj", (attn @ v).transpose(1, 2).reshape(b, n, c))


def ref_channel_processing(
    sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, h: int, w: int, heads: int
) -> torch.Tensor:
    b, n, c = x.shape
    v = x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    q = _linear(sd, f"{p}.q", x).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    k = x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    q = q.softmax(-2).transpose(-1, -2)
    k = F.adaptive_avg_pool2d(k.softmax(-2), (n, 1))
    attn = torch.sigmoid(q @ k) * sd[f"{p}.temperature"]
    # mlp_v: fc1 -> x + gamma * dwconv(x) -> fc2 (no activation between), then norm_v (eps 1e-5)
    m = f"{p}.mlp_v"
    y = _linear(sd, f"{m}.fc1", v.transpose(1, 2).reshape(b, n, c))
    hidden = y.shape[-1]
    z = y.permute(0, 2, 1).reshape(b, hidden, h, w)
    z = F.gelu(_conv(sd, f"{m}.dwconv.conv1", z, padding=1, groups=hidden))
    z = F.batch_norm(
        z,
        sd[f"{m}.dwconv.bn.running_mean"],
        sd[f"{m}.dwconv.bn.running_var"],
        sd[f"{m}.dwconv.bn.weight"],
        sd[f"{m}.dwconv.bn.bias"],
        training=False,
        eps=1e-5,
    )
    z = _conv(sd, f"{m}.dwconv.conv2", z, padding=1, groups=hidden).reshape(b, hidden, n).permute(0, 2, 1)
    y = _linear(sd, f"{m}.fc2", sd[f"{m}.gamma"] * z + y)
    v = _ln(sd, f"{p}.norm_v", y, 1e-5).reshape(b, n, heads, c // heads).transpose(1, 2)
    repeat_time = n // attn.shape[-1]
    attn = attn.repeat_interleave(repeat_time, dim=-1) if attn.shape[-1] > 1 else attn
    return (attn * v.transpose(-1, -2)).permute(0, 3, 1, 2).reshape(b, n, c)


def ref_class_attention_block(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    x_norm1 = _ln(sd, f"{p}.norm1", x, 1e-6)
    q = _linear(sd, f"{p}.attn.q", x_norm1[:, 0]).unsqueeze(1).reshape(b, 1, heads, c // heads).permute(0, 2, 1, 3)
    k = _linear(sd, f"{p}.attn.k", x_norm1).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    v = _linear(sd, f"{p}.attn.v", x_norm1).reshape(b, n, heads, c // heads).permute(0, 2, 1, 3)
    attn = (q * (c // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(dim=-1)
    x1 = _linear(sd, f"{p}.attn.proj", (attn @ v).transpose(1, 2).reshape(b, 1, c))
    x = x + sd[f"{p}.gamma1"] * torch.cat([x1, x_norm1[:, 1:]], dim=1)
    x = _ln(sd, f"{p}.norm2", x, 1e-6)  # tokens_norm=True
    x_res = x
    cls_token = sd[f"{p}.gamma2"] * _linear(sd, f"{p}.mlp.fc2", F.gelu(_linear(sd, f"{p}.mlp.fc1", x[:, 0:1])))
    return x_res + torch.cat([cls_token, x[:, 1:]], dim=1)


def ref_encoder(sd: dict[str, torch.Tensor], cfg: FANHybridConfig, img: torch.Tensor) -> list[torch.Tensor]:
    outs = ref_convnext(sd, img, cfg.convnext_depths)
    grid = _conv(sd, "patch_embed.proj", outs[-1], stride=2)
    b, _, h, w = grid.shape
    x = grid.flatten(2).transpose(1, 2)
    x = x + ref_pos_embed(sd, b, h, w, img.dtype).reshape(b, -1, x.shape[1]).permute(0, 2, 1)
    for i in range(cfg.depth):
        p = f"blocks.{i}"
        x = x + sd[f"{p}.gamma1"] * ref_token_mixing(sd, f"{p}.attn", _ln(sd, f"{p}.norm1", x, 1e-6), cfg.num_heads)
        x_new = ref_channel_processing(sd, f"{p}.mlp", _ln(sd, f"{p}.norm2", x, 1e-6), h, w, cfg.num_heads)
        x = x + sd[f"{p}.gamma2"] * x_new
        if i == cfg.out_index:
            outs.append(x.reshape(b, h, w, -1).permute(0, 3, 1, 2))
    x = torch.cat((sd["cls_token"].expand(b, -1, -1), x), dim=1)
    for i in range(cfg.cls_attn_layers):
        x = ref_class_attention_block(sd, f"cls_attn_blocks.{i}", x, cfg.num_heads)
    outs.append(x[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2))
    return outs


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb every tensor (layer scales, BN statistics, temperatures included) so no term is trivially 0 or 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
            elif name.endswith(("gamma", "gamma1", "gamma2", "temperature")) or (t.ndim == 1 and "norm" in name):
                t.copy_(1.0 + 0.2 * noise if not name.endswith("bias") else 0.1 * noise)
            else:
                t.add_(0.05 * noise)


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny", "small", "base", "large"])
def test_param_count_matches_published_classifier(variant: str) -> None:
    with torch.device("meta"):  # only shapes matter here; skips allocating and initialising the weights
        model = FANHybridEncoder.from_variant(variant)
    count = model.num_params_as_classifier(1000)
    published = PUBLISHED_PARAMS[variant]
    assert abs(count - published) / published < 0.03, (variant, count, published)
    dim = FAN_HYBRID_VARIANTS[variant].embed_dim
    assert model.out_channels == (128, 256, dim, dim)


# A narrow config keeps float64 fast (CPU float64 depth-wise convs fall back to one small conv per group); the real
# tiny config runs in float32, where the tolerance is looser but every module still has to be right.
_SMALL = FANHybridConfig(
    embed_dim=32, depth=3, num_heads=4, out_index=1, convnext_dims=(16, 24), convnext_depths=(1, 2), cls_attn_layers=2
)


@pytest.mark.parametrize(
    ("config", "dtype", "tol"),
    [(_SMALL, torch.float64, 1e-9), (FAN_HYBRID_VARIANTS["tiny"], torch.float32, 1e-4)],
    ids=["narrow-float64", "tiny-float32"],
)
def test_matches_tao_style_reference(config: FANHybridConfig, dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    model = FANHybridEncoder(config).to(dtype).eval()
    _randomize(model)
    sd = model.state_dict()
    img = torch.randn(2, 3, 64, 96, dtype=dtype)
    with torch.no_grad():
        got = model(img)
        want = ref_encoder(sd, model.config, img)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def test_positional_encoding_matches_tao_formula(tiny: FANHybridEncoder) -> None:
    pos = tiny.pos_embed(5, 7)
    want = ref_pos_embed(tiny.state_dict(), 1, 5, 7, torch.float32)
    torch.testing.assert_close(pos, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 256, 256), (1, 3, 224, 320)])
def test_output_shapes(tiny: FANHybridEncoder, shape: tuple[int, int, int, int]) -> None:
    b, _, h, w = shape
    with torch.no_grad():
        outs = tiny(torch.randn(shape))
    expected = [(b, c, h // s, w // s) for c, s in zip(tiny.out_channels, tiny.out_strides, strict=True)]
    assert [tuple(o.shape) for o in outs] == expected
    assert all(torch.isfinite(o).all() for o in outs)


def test_batch_independence(tiny: FANHybridEncoder) -> None:
    x = torch.randn(3, 3, 128, 160)
    with torch.no_grad():
        batched = tiny(x)
        for i in range(3):
            alone = tiny(x[i : i + 1])
            for b, a in zip(batched, alone, strict=True):
                torch.testing.assert_close(b[i : i + 1], a, rtol=1e-5, atol=1e-5)


def test_no_spatial_size_stored_as_state(tiny: FANHybridEncoder) -> None:
    with torch.no_grad():
        tiny(torch.randn(1, 3, 64, 64))
    for module in tiny.modules():
        assert not {"H", "W", "height", "width"} & set(vars(module)), type(module).__name__


def test_tao_state_dict_key_names(tiny: FANHybridEncoder) -> None:
    keys = set(tiny.state_dict())
    expected = {
        "cls_token",
        "patch_embed.backbone.stem.0.weight",
        "patch_embed.backbone.stem.1.bias",
        "patch_embed.backbone.stages.0.blocks.2.conv_dw.weight",
        "patch_embed.backbone.stages.0.blocks.0.norm.weight",
        "patch_embed.backbone.stages.0.blocks.0.mlp.fc1.weight",
        "patch_embed.backbone.stages.0.blocks.0.mlp.fc2.bias",
        "patch_embed.backbone.stages.0.blocks.0.gamma",
        "patch_embed.backbone.stages.1.downsample.0.weight",
        "patch_embed.backbone.stages.1.downsample.1.weight",
        "patch_embed.proj.weight",
        "pos_embed.token_projection.weight",
        "blocks.0.norm1.weight",
        "blocks.0.attn.q.weight",
        "blocks.0.attn.kv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.gamma1",
        "blocks.0.gamma2",
        "blocks.7.norm2.bias",
        "blocks.7.mlp.temperature",
        "blocks.7.mlp.q.weight",
        "blocks.7.mlp.norm_v.weight",
        "blocks.7.mlp.mlp_v.fc1.weight",
        "blocks.7.mlp.mlp_v.gamma",
        "blocks.7.mlp.mlp_v.dwconv.conv1.weight",
        "blocks.7.mlp.mlp_v.dwconv.bn.running_var",
        "blocks.7.mlp.mlp_v.dwconv.bn.num_batches_tracked",
        "blocks.7.mlp.mlp_v.dwconv.conv2.bias",
        "blocks.7.mlp.mlp_v.fc2.weight",
        "cls_attn_blocks.0.attn.q.weight",
        "cls_attn_blocks.0.attn.k.bias",
        "cls_attn_blocks.1.attn.v.weight",
        "cls_attn_blocks.1.attn.proj.bias",
        "cls_attn_blocks.1.mlp.fc1.weight",
        "cls_attn_blocks.1.mlp.fc2.bias",
        "cls_attn_blocks.1.norm2.weight",
        "cls_attn_blocks.1.gamma2",
    }
    assert expected <= keys, sorted(expected - keys)
    # FANFPN deletes norm/head and, with feat_downsample=False, has no learnable_downsample; stage 0 of the ConvNeXt
    # stem keeps stride 1 and the same width, so it has no downsample layer either.
    forbidden = ("norm.", "head.", "learnable_downsample", "stages.0.downsample", "blocks.8.")
    assert not [k for k in keys if k.startswith(forbidden)]
    assert tiny.state_dict()["pos_embed.token_projection.weight"].shape == (192, 64, 1, 1)
    assert tiny.state_dict()["blocks.0.mlp.temperature"].shape == (8, 1, 1)
    assert tiny.state_dict()["patch_embed.proj.weight"].shape == (192, 256, 2, 2)


def test_loads_prefixed_checkpoint_by_stripping(tiny: FANHybridEncoder) -> None:
    checkpoint = {f"model.backbone.{k}": v.clone() for k, v in tiny.state_dict().items()}
    fresh = FANHybridEncoder.from_variant("tiny")
    prefix = "model.backbone."
    fresh.load_state_dict({k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}, strict=True)


def test_activation_checkpoint_gives_same_gradients() -> None:
    torch.manual_seed(0)
    plain = FANHybridEncoder(_SMALL).train()
    ckpt = FANHybridEncoder(dataclasses.replace(_SMALL, activation_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_onnx_export_matches_torch(tiny: FANHybridEncoder) -> None:
    pytest.importorskip("onnx")
    names = [f"feat{i}" for i in range(4)]
    # Batch and spatial axes are dynamic: the grid size must flow from tensor shapes, not from Python constants.
    dynamic = {"image": {0: "n", 2: "h", 3: "w"}, **{k: {0: "n", 2: f"{k}_h", 3: f"{k}_w"} for k in names}}
    buffer = io.BytesIO()
    torch.onnx.export(
        tiny,
        (torch.randn(1, 3, 256, 256),),
        buffer,
        input_names=["image"],
        output_names=names,
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 256, 256), (2, 3, 224, 320)]:
        x = torch.randn(shape)
        got = session.run(names, {"image": x.numpy()})
        with torch.no_grad():
            want = tiny(x)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_large_forward_shapes() -> None:
    model = FANHybridEncoder.from_variant("large").eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 224, 224))
    assert [o.shape[1] for o in outs] == [128, 256, 480, 480]
