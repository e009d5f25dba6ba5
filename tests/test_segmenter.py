"""Segmenter: masks at the image's own size, the model's own normalisation, and clear errors on bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peopleseg import DataError, Segmenter, build_model
from peopleseg.models import ModelInfo
from peopleseg.models.info import HALF_MEAN, HALF_STD


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(build_model("segformer_b0"))


def test_mask_at_original_size_for_real_photos(segmenter, data_dir) -> None:
    for name, (height, width) in {"messi5.jpg": (342, 548), "grace_hopper.jpg": (600, 512)}.items():
        mask = segmenter.predict(data_dir / name)
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        proba = segmenter.predict_proba(data_dir / name)
        assert proba.shape == (2, height, width)
        np.testing.assert_allclose(proba.sum(0), 1.0, atol=1e-5)
        assert np.array_equal(proba.argmax(0), mask)


def test_matches_a_by_hand_pipeline() -> None:
    # Normalisation comes from the model's info, logits are resized before argmax.
    model = build_model(
        "segformer_b0", info=ModelInfo(arch="segformer_b0", mean=HALF_MEAN, std=HALF_STD, input_size=(256, 320))
    ).eval()
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    pixels = F.interpolate(pixels, size=(256, 320), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        logits = model((pixels - 127.5) / 127.5)
    expected = F.interpolate(logits, size=(100, 150), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    assert np.array_equal(Segmenter(model).predict(image), expected)


def test_default_without_bundled_weights_says_so() -> None:
    from peopleseg.assets import default_weights_path

    if default_weights_path() is not None:
        pytest.skip("this build bundles trained weights")
    with pytest.warns(UserWarning, match="randomly initialised"):
        segmenter = Segmenter.from_pretrained()
    assert segmenter.is_random_init


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((10, 10), np.uint8), "shape"),
        (np.zeros((10, 10, 4), np.uint8), "shape"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_arrays(segmenter, bad, message) -> None:
    with pytest.raises(DataError, match=message):
        segmenter.predict(bad)


def test_bad_files(segmenter, tmp_path) -> None:
    with pytest.raises(DataError, match="no such file"):
        segmenter.predict(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(DataError, match=r"corrupt\.jpg"):
        segmenter.predict(corrupt)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.png: not an image"):
        segmenter.predict(text)


def test_truncated_jpeg_is_an_error(segmenter, data_dir, tmp_path) -> None:
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((data_dir / "messi5.jpg").read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cut\.jpg: corrupt or truncated"):
        segmenter.predict(cut)
