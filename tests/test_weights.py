"""Our weights format, and loading NVlabs, TAO and mmseg checkpoints by key remapping, with clear reports."""

import argparse
import json
import re

import pytest
import torch
from conftest import randomise_batchnorm

from peopleseg.errors import ModelError
from peopleseg.models import ModelInfo, build_model, load_model, load_model_with_report, read_info, save_model
from peopleseg.models.info import HALF_MEAN, HALF_STD


@pytest.fixture
def b0() -> torch.nn.Module:
    model = build_model("segformer_b0").eval()
    randomise_batchnorm(model)
    return model


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    pixels = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(pixels), b.eval()(pixels), atol=atol, rtol=0 if atol == 0 else 1e-3)


def test_round_trip_is_exact(b0, tmp_path) -> None:
    info = ModelInfo(arch="segformer_b0", mean=HALF_MEAN, std=HALF_STD, input_size=(480, 640), description="test")
    b0.info = info
    path = save_model(b0, tmp_path / "m.safetensors")
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["arch"] == "segformer_b0" and sidecar["mean"] == [127.5] * 3 and sidecar["input_size"] == [480, 640]
    assert read_info(path) == info
    loaded = load_model(path)
    assert loaded.info == info
    for key, value in b0.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    _same_outputs(b0, loaded)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp files


def test_fp16_file_is_half_size_and_close(b0, tmp_path) -> None:
    full = save_model(b0, tmp_path / "full.safetensors")
    half = save_model(b0, tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    _same_outputs(b0, load_model(half), atol=0.05)


def test_arch_options_survive(tmp_path) -> None:
    model = build_model("segformer_b0", num_classes=3, decoder_dim=128)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.decode_head.embed_dim == 128 and loaded.info.num_classes == 3


def _nvlabs_names(state: dict) -> dict:
    return {re.sub(r"\.mlp\.dwconv\.", ".mlp.dwconv.dwconv.", k): v for k, v in state.items()}


@pytest.mark.parametrize(
    ("backbone_prefix", "head_prefix", "wrapper"),
    [
        ("backbone.", "decode_head.", "state_dict"),  # NVlabs SegFormer / TAO 4-5 .pth
        ("model.backbone.", "model.decoder.", "state_dict"),  # TAO Lightning checkpoints
        ("model.backbone.", "model.decode_head.", None),  # a bare state dict
    ],
)
def test_nvlabs_and_tao_layouts(b0, tmp_path, backbone_prefix, head_prefix, wrapper) -> None:
    state = {}
    for key, value in _nvlabs_names(b0.state_dict()).items():
        prefix = backbone_prefix if key.startswith("backbone.") else head_prefix
        state[prefix + key.split(".", 1)[1]] = value
    state[head_prefix + "conv_seg.weight"] = torch.zeros(2, 256, 1, 1)  # TAO's dead classifier
    path = tmp_path / "model.tlt"
    torch.save({wrapper: state, "epoch": 3} if wrapper else state, path)
    model, report = load_model_with_report(path)
    assert report.format == "NVlabs/TAO" and report.clean
    assert any("conv_seg" in k for k in report.ignored)
    _same_outputs(b0, model)


def test_bare_encoder_needs_backbone_only(b0, tmp_path) -> None:
    # An ImageNet `mit_b0.pth`: encoder keys with no prefix, plus a classifier head.
    state = {k.split(".", 1)[1]: v for k, v in _nvlabs_names(b0.state_dict()).items() if k.startswith("backbone.")}
    state["head.weight"] = torch.zeros(1000, 256)
    path = tmp_path / "mit_b0.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"missing key\(s\), e\.g\. decode_head"):
        load_model(path)
    model, report = load_model_with_report(path, backbone_only=True)
    assert report.clean
    for key, value in b0.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)


def _mmseg_native_state(b0: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder of `b0` under mmseg 1.x's native MiT key names (`layers.N.…`, nn.MultiheadAttention)."""
    state = {}
    for key, value in b0.backbone.state_dict().items():
        if m := re.match(r"patch_embed(\d)\.(proj|norm)\.(.*)", key):
            name = {"proj": "projection", "norm": "norm"}[m[2]]
            state[f"backbone.layers.{int(m[1]) - 1}.0.{name}.{m[3]}"] = value
        elif m := re.match(r"norm(\d)\.(.*)", key):
            state[f"backbone.layers.{int(m[1]) - 1}.2.{m[2]}"] = value
        elif m := re.match(r"block(\d)\.(\d+)\.(.*)", key):
            base, rest = f"backbone.layers.{int(m[1]) - 1}.1.{m[2]}.", m[3]
            if rest.startswith("attn.q."):
                kind = rest.rsplit(".", 1)[1]
                kv = b0.backbone.state_dict()[key.replace(".q.", ".kv.")]
                state[base + f"attn.attn.in_proj_{kind}"] = torch.cat([value, kv])
            elif rest.startswith("attn.kv."):
                continue
            elif rest.startswith("attn.proj."):
                state[base + "attn.attn.out_proj." + rest.rsplit(".", 1)[1]] = value
            elif rest.startswith("mlp."):
                layer, kind = rest[4:].split(".")
                index = {"fc1": 0, "dwconv": 1, "fc2": 4}[layer]
                state[base + f"ffn.layers.{index}.{kind}"] = (
                    value[..., None, None] if layer != "dwconv" and kind == "weight" else value
                )
            else:
                state[base + rest] = value
    return state


def test_mmseg_native_encoder(b0, tmp_path) -> None:
    state = _mmseg_native_state(b0)
    path = tmp_path / "mmseg.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 1}}, path)
    model, report = load_model_with_report(path, backbone_only=True)
    assert report.format == "mmseg 1.x" and report.clean
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(model.backbone(pixels), b0.backbone(pixels), strict=True):
            torch.testing.assert_close(ours, theirs)


def test_pickled_objects_need_trust(b0, tmp_path) -> None:
    path = tmp_path / "trainer.ckpt"
    torch.save({"state_dict": b0.state_dict(), "hyper_parameters": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ModelError, match="pickled Python objects"):
        load_model(path)
    _same_outputs(b0, load_model(path, allow_pickle=True))


def test_cli_converts_a_pickled_checkpoint_once_for_every_command(b0, tmp_path, capsys) -> None:
    from peopleseg.cli import main

    path = tmp_path / "trainer.ckpt"
    torch.save({"state_dict": b0.state_dict(), "hyper_parameters": argparse.Namespace(lr=0.1)}, path)
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(path), "-o", str(out)]) == 1
    assert f"peopleseg convert {path} -o model.safetensors --allow-pickle" in capsys.readouterr().err
    assert main(["convert", str(path), "-o", str(out), "--allow-pickle", "--mean", "127.5", "127.5", "127.5"]) == 1
    assert "--mean and --std go together" in capsys.readouterr().err
    argv = ["convert", str(path), "-o", str(out), "--allow-pickle", "--mean", *["127.5"] * 3, "--std", *["127.5"] * 3]
    assert main(argv) == 0
    assert "mean [127.5, 127.5, 127.5]" in capsys.readouterr().out
    converted = load_model(out)
    assert converted.info.mean == (127.5, 127.5, 127.5)
    _same_outputs(b0, converted)


def test_encrypted_tlt_is_named(tmp_path) -> None:
    path = tmp_path / "peoplesemsegformer.tlt"
    path.write_bytes(b"\x13\x37" + bytes(range(256)) * 8)
    with pytest.raises(ModelError, match="encrypted"):
        load_model(path)


def test_strict_reports_missing_and_unexpected(b0, tmp_path) -> None:
    state = dict(b0.state_dict())
    state.pop("decode_head.linear_pred.bias")
    state["decode_head.extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ModelError) as error:
        load_model(path)
    assert "1 missing key(s), e.g. decode_head.linear_pred.bias" in str(error.value)
    assert "1 unexpected key(s), e.g. decode_head.extra.weight" in str(error.value)
    with pytest.warns(UserWarning, match="1 missing key"):
        _, report = load_model_with_report(path, strict=False)
    assert report.missing == ["decode_head.linear_pred.bias"] and report.unexpected == ["decode_head.extra.weight"]


def test_shape_mismatch_names_the_key(b0, tmp_path) -> None:
    state = dict(b0.state_dict())
    state["backbone.block1.0.attn.q.weight"] = torch.zeros(32, 31)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"'backbone.block1.0.attn.q.weight' has shape \(32, 31\)"):
        load_model(path)


def test_num_classes_and_decoder_width_read_from_shapes(tmp_path) -> None:
    model = build_model("segformer_b1", num_classes=4, decoder_dim=64)
    path = tmp_path / "c.pth"
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = load_model(path)
    assert loaded.info.arch == "segformer_b1" and loaded.info.num_classes == 4
    assert loaded.decode_head.embed_dim == 64


def test_info_overrides_set_normalisation(b0, tmp_path) -> None:
    path = tmp_path / "m.pth"
    torch.save(b0.state_dict(), path)
    model = load_model(path, info_overrides={"mean": [127.5] * 3, "std": [127.5] * 3})
    assert model.info.mean == HALF_MEAN


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nothing.safetensors", None, "no such file"),
        ("garbage.safetensors", b"\x00" * 64, "not a"),
        ("truncated.pth", b"PK\x03\x04garbage", "cannot read the checkpoint"),
        ("weights.h5", b"x", "unknown weights format"),
    ],
)
def test_bad_files_get_one_line_errors(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as error:
        load_model(path)
    assert "\n" not in str(error.value) and name in str(error.value)


def test_bad_metadata_is_named(b0, tmp_path) -> None:
    b0.info = ModelInfo(arch="segformer_b0")
    path = save_model(b0, tmp_path / "m.safetensors")
    data = b0.info.to_dict() | {"colour": "red"}
    from safetensors.torch import load_file, save_file

    save_file(load_file(path), str(path), metadata={"peopleseg": json.dumps(data)})
    with pytest.raises(ModelError, match="unknown metadata key 'colour'"):
        load_model(path)
    save_file(load_file(path), str(path), metadata={"peopleseg": json.dumps(b0.info.to_dict() | {"std": [0, 1, 1]})})
    with pytest.raises(ModelError, match="'std' must be positive"):
        load_model(path)
    save_file(load_file(path), str(path), metadata={"peopleseg": json.dumps(b0.info.to_dict() | {"resize": "crop"})})
    with pytest.raises(ModelError, match="'resize' must be one of resize, letterbox, sliding, got 'crop'"):
        load_model(path)


def test_the_resize_policy_travels_with_the_weights(b0, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    b0.info = ModelInfo(arch="segformer_b0", resize="letterbox")
    path = save_model(b0, tmp_path / "m.safetensors")
    assert read_info(path).resize == "letterbox"
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["resize"] == "letterbox" and sidecar["format_version"] == 2  # older peopleseg: "newer format"
    # A stretching model is written as before (format 1, no key), so older peopleseg still reads it.
    b0.info = ModelInfo(arch="segformer_b0")
    save_model(b0, tmp_path / "s.safetensors")
    sidecar = json.loads((tmp_path / "s.json").read_text())
    assert "resize" not in sidecar and sidecar["format_version"] == 1
    # Files written before the key existed are read as stretched ("resize"), as they were used then.
    older = {key: value for key, value in b0.info.to_dict().items() if key != "resize"}
    save_file(load_file(path), str(path), metadata={"peopleseg": json.dumps(older)})
    assert read_info(path).resize == "resize"


def test_unknown_name() -> None:
    with pytest.raises(ModelError, match="not a model name"):
        load_model("segformer_b9")


def test_tao_pytorch_head_with_fuse_bias(b0, tmp_path) -> None:
    # TAO 5.5+ writes `model.decoder.linear_fuse.{0,1}` with a conv bias; it folds exactly into the BN mean.
    bias = torch.randn(256) * 0.1
    state = {}
    for key, value in _nvlabs_names(b0.state_dict()).items():
        key = key.replace("linear_fuse.conv.", "linear_fuse.0.").replace("linear_fuse.bn.", "linear_fuse.1.")
        if key == "decode_head.linear_fuse.1.running_mean":
            value = value + bias
        state[("model.backbone." if key.startswith("backbone.") else "model.decoder.") + key.split(".", 1)[1]] = value
    state["model.decoder.linear_fuse.0.bias"] = bias
    path = tmp_path / "tao55.pth"
    torch.save({"state_dict": state}, path)
    model, report = load_model_with_report(path)
    assert report.clean
    _same_outputs(b0, model, atol=1e-5)


def test_tao_fan_hybrid_checkpoint(tmp_path) -> None:
    # PeopleSemSegFormer is FAN-Hybrid: TAO's backbone keys are ours under `backbone.` (see fan.py).
    fan = build_model("segformer_fan_tiny_hybrid").eval()
    randomise_batchnorm(fan)
    state = {
        ("model.backbone." if k.startswith("backbone.") else "model.decoder.") + k.split(".", 1)[1]: v
        for k, v in fan.state_dict().items()
    }
    state["model.backbone.learnable_downsample.weight"] = torch.zeros(768, 192, 3, 3)  # feat_downsample variant
    path = tmp_path / "fan_tiny.pth"
    torch.save({"state_dict": state}, path)
    model, report = load_model_with_report(path)
    assert model.info.arch == "segformer_fan_tiny_hybrid" and report.clean
    _same_outputs(fan, model)


def test_saved_weights_get_the_permissions_of_a_plain_file(tmp_path) -> None:
    # The atomic write's temp file is private, and safetensors writes its own private file: the saved weights
    # must still be readable by the group and others, as the umask says (a server running as another user).
    import os

    old = os.umask(0o022)
    try:
        save_model(build_model("segformer_b0", num_classes=2), tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "model.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_an_imagenet_encoder_with_its_classifiers_labels_loads_backbone_only(tmp_path) -> None:
    # NVIDIA's HF mit-b* files: an encoder, an ImageNet classifier head, and an id2label that names "crane" twice.
    folder = tmp_path / "mit-b0"
    folder.mkdir()
    encoder = build_model("segformer_b0")
    state = {
        re.sub(r"\.mlp\.dwconv\.", ".mlp.dwconv.dwconv.", name).split(".", 1)[1]: tensor
        for name, tensor in encoder.state_dict().items()
        if name.startswith("backbone.")
    }
    state["head.weight"] = torch.zeros(1000, 256)
    torch.save(state, folder / "pytorch_model.bin")
    labels = {str(i): f"class{i}" for i in range(1000)} | {"134": "crane", "517": "crane"}
    (folder / "config.json").write_text(json.dumps({"id2label": labels}))
    for source in (folder, folder / "pytorch_model.bin"):
        model = load_model(source, backbone_only=True)
        assert model.info.classes == ["background", "person"]  # the classifier's labels name no segmentation head
        assert torch.equal(model.backbone.patch_embed1.proj.weight, encoder.backbone.patch_embed1.proj.weight)
    (folder / "config.json").write_text("[1, 2]")  # not an HF config at all: ignored, not a crash
    assert load_model(folder / "pytorch_model.bin", backbone_only=True).info.arch == "segformer_b0"
