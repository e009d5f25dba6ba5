"""Our MiT SegFormer against HF transformers: random HF models, saved and loaded by our loader, same logits."""

import re

import pytest
import torch
from conftest import randomise_batchnorm
from safetensors.torch import load_file, save_file

from peopleseg.models import load_model

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "segformer_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "segformer_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}


def make_hf(arch: str, num_labels: int = 2):
    # Written by hand: no config or weights come from a hub.
    config = transformers.SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_attention_heads=[1, 2, 5, 8],
        mlp_ratios=[4, 4, 4, 4],
        num_labels=num_labels,
        **VARIANTS[arch],
    )
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    randomise_batchnorm(model)
    return model


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_hf_logits_match(arch: str, tmp_path) -> None:
    hf = make_hf(arch)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.info.arch == arch
    pixels = torch.randn(2, 3, 256, 320)
    with torch.no_grad():
        expected = hf(pixel_values=pixels).logits
        actual = ours(pixels)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


# transformers 4.x wrote these names; files on disk in the wild still carry them.
_V5_TO_V4 = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.", r"segformer.encoder.patch_embeddings.\1."),
    (r"segformer\.stages\.(\d+)\.blocks\.", r"segformer.encoder.block.\1."),
    (r"segformer\.stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\1."),
    (r"attention\.q_proj", "attention.self.query"),
    (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"layernorm_before", "layer_norm_1"),
    (r"layernorm_after", "layer_norm_2"),
    (r"mlp\.fc1", "mlp.dense1"),
    (r"mlp\.fc2", "mlp.dense2"),
    (r"decode_head\.linear_projections", "decode_head.linear_c"),
]


def test_transformers4_key_names_and_label_names(tmp_path) -> None:
    hf = make_hf("segformer_b0", num_labels=3)
    hf.config.id2label = {0: "background", 1: "person", 2: "bag"}
    state = hf.state_dict()
    old = {}
    for key, value in state.items():
        for pattern, replacement in _V5_TO_V4:
            key = re.sub(pattern, replacement, key)
        old[key] = value.contiguous()
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in old
    save_file(old, tmp_path / "model.safetensors")
    hf.config.to_json_file(tmp_path / "config.json")
    ours = load_model(tmp_path)
    assert ours.info.classes == ["background", "person", "bag"]
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), hf(pixel_values=pixels).logits, atol=1e-4, rtol=0)


def test_hf_single_file(tmp_path) -> None:
    hf = make_hf("segformer_b0")
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path / "model.safetensors")
    assert ours.info.arch == "segformer_b0"
    assert load_file(tmp_path / "model.safetensors")  # the file itself stays untouched
