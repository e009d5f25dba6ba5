"""Rendering: overlays, cut-outs, background blur, privacy mosaics and label colours, checked pixel by pixel."""

import cv2
import numpy as np
import pytest

from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.render import (
    PERSON_COLOR,
    blur_background,
    colorize_labels,
    cutout,
    default_palette,
    overlay,
    person_alpha,
    pixelate_people,
)


def _image(height: int = 60, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _disk_mask(height: int = 60, width: int = 80, radius: int = 18) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (width // 2, height // 2), radius, 1, -1)
    return mask


def _soft(mask: np.ndarray) -> np.ndarray:
    return np.clip(cv2.GaussianBlur(mask.astype(np.float32), (9, 9), 0), 0, 1)


def _one_line(excinfo: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(excinfo.value) and str(excinfo.value)


def test_overlay_hard_mask_tints_people_and_leaves_background_exact() -> None:
    image, mask = _image(), _disk_mask()
    out = overlay(image, mask, outline=False)
    person = mask == 1
    np.testing.assert_array_equal(out[~person], image[~person])
    expected = np.rint(0.5 * image[person].astype(np.float32) + 0.5 * np.float32(PERSON_COLOR)).astype(np.uint8)
    np.testing.assert_array_equal(out[person], expected)
    assert out.dtype == np.uint8 and out.shape == image.shape


def test_overlay_outline_stays_inside_the_people() -> None:
    image, mask = _image(), _disk_mask()
    out = overlay(image, mask.astype(bool), color=(0, 255, 0), alpha=0.0, outline=True)
    person = mask == 1
    np.testing.assert_array_equal(out[~person], image[~person])
    edge = person & (cv2.erode(mask, np.ones((3, 3), np.uint8)) == 0)
    assert np.all(out[edge] == (0, 255, 0))
    interior = cv2.erode(mask, np.ones((5, 5), np.uint8)) == 1
    np.testing.assert_array_equal(out[interior], image[interior])  # alpha 0: only the outline is drawn


def test_overlay_probability_blends_in_proportion() -> None:
    image, mask = _image(), _disk_mask()
    proba = _soft(mask)
    out = overlay(image, proba, alpha=0.8, outline=False)
    zero = proba <= 0.35
    np.testing.assert_array_equal(out[zero], image[zero])
    weight = 0.8 * person_alpha(proba)[..., None]
    expected = image.astype(np.float32) * (1 - weight) + np.float32(PERSON_COLOR) * weight
    assert np.abs(out.astype(np.float32) - expected).max() <= 1.0
    assert np.any((proba > 0.2) & (proba < 0.8))  # the test really has soft edges


def test_overlay_label_mask_tints_only_label_one() -> None:
    image = _image(10, 10)
    labels = np.zeros((10, 10), np.uint8)
    labels[:5] = 2
    labels[5:, :5] = 1
    out = overlay(image, labels, outline=False)
    np.testing.assert_array_equal(out[labels != 1], image[labels != 1])
    assert np.any(out[labels == 1] != image[labels == 1])


def test_cutout_alpha_is_the_rounded_person_alpha() -> None:
    image = _image()
    proba = np.random.default_rng(1).random((60, 80), dtype=np.float32)
    out = cutout(image, proba)
    assert out.shape == (60, 80, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :3], image)
    np.testing.assert_array_equal(out[..., 3], np.rint(person_alpha(proba) * 255).astype(np.uint8))
    hard = cutout(image, _disk_mask().astype(bool))
    np.testing.assert_array_equal(hard[..., 3], _disk_mask() * 255)


def test_person_alpha_ramps_around_the_decision() -> None:
    proba = np.array([0.0, 0.2, 0.35, 0.425, 0.5, 0.575, 0.65, 0.8, 1.0], np.float32)
    expected = [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    np.testing.assert_allclose(person_alpha(proba), expected, atol=1e-6)
    assert person_alpha(proba).dtype == np.float32


def test_a_confident_person_is_opaque_and_sharp() -> None:
    # Inside people the model is often only 0.6-0.9 sure: that must still be a whole person, not a translucent one.
    image, mask = _image(120, 160), _disk_mask(120, 160, 35)
    person = mask == 1
    proba = np.where(person, np.float32(0.8), np.float32(0.2))
    blurred = blur_background(image, proba)
    np.testing.assert_array_equal(blurred[person], image[person])  # the person untouched
    far = cv2.dilate(mask, np.ones((5, 5), np.uint8)) == 0  # beyond a hard mask's 1 px feather
    assert np.abs(blurred[far].astype(int) - blur_background(image, mask)[far]).max() <= 1  # the background blurred
    alpha = cutout(image, proba)[..., 3]
    assert np.all(alpha[person] == 255) and np.all(alpha[~person] == 0)
    unsure = np.full(mask.shape, 0.2, np.float32)  # below the ramp: all background
    assert not cutout(image, unsure)[..., 3].any()
    np.testing.assert_array_equal(blur_background(image, unsure), blur_background(image, np.zeros_like(mask)))


def test_blur_background_keeps_people_sharp_and_blurs_the_rest() -> None:
    image, mask = _image(120, 160), _disk_mask(120, 160, 35)
    out = blur_background(image, mask)
    interior = cv2.erode(mask, np.ones((5, 5), np.uint8)) == 1  # beyond the 1 px feather
    np.testing.assert_array_equal(out[interior], image[interior])
    far = cv2.dilate(mask, np.ones((9, 9), np.uint8)) == 0
    changed = np.abs(out[far].astype(int) - image[far].astype(int)).mean()
    assert changed > 30  # random noise averaged towards its mean
    assert out[far].std() < image[far].std() / 3
    proba_out = blur_background(image, _soft(mask), radius=6)
    certain = _soft(mask) == 1
    np.testing.assert_array_equal(proba_out[certain], image[certain])


def test_blur_background_has_no_halo() -> None:
    # A white person on a black background: the blur must not smear white into the background around them.
    image = np.zeros((100, 100, 3), np.uint8)
    mask = _disk_mask(100, 100, 20)
    image[mask == 1] = 255
    out = blur_background(image, mask, radius=12)
    ring = (cv2.dilate(mask, np.ones((7, 7), np.uint8)) == 0) & (cv2.dilate(mask, np.ones((25, 25), np.uint8)) == 1)
    assert out[ring].max() <= 12  # what leaks is the edge pixels' share at the reduced blur resolution
    assert cv2.stackBlur(image, (25, 25))[ring].max() > 40  # a plain blur glows there


def test_blur_background_radius_zero_is_identity() -> None:
    image = _image()
    np.testing.assert_array_equal(blur_background(image, _disk_mask(), radius=0), image)


def test_pixelate_makes_each_person_block_constant() -> None:
    image = _image(64, 96)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 1  # aligned to the 8 px grid
    out = pixelate_people(image, mask, block=8)
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    for y in range(16, 48, 8):
        for x in range(24, 72, 8):
            cell = out[y : y + 8, x : x + 8].reshape(-1, 3)
            assert np.all(cell == cell[0])
            mean = image[y : y + 8, x : x + 8].reshape(-1, 3).mean(axis=0)
            assert np.abs(cell[0] - mean).max() <= 1
    person = mask == 1
    assert np.all(np.any(out[person] != image[person], axis=1))  # no person pixel keeps its colour


def test_pixelate_edges_and_defaults() -> None:
    image = _image(37, 53, seed=3)
    mask = np.ones((37, 53), bool)
    out = pixelate_people(image, mask, block=5)
    # The last row and column of cells are partial (37 = 7*5 + 2, 53 = 10*5 + 3) but still constant.
    for y in range(0, 37, 5):
        for x in range(0, 53, 5):
            cell = out[y : y + 5, x : x + 5].reshape(-1, 3)
            assert np.all(cell == cell[0])
    corner = out[35:, 50:]
    assert np.all(corner == corner[0, 0]) and not np.array_equal(corner, image[35:, 50:])
    np.testing.assert_array_equal(pixelate_people(image, mask, block=1), image)
    big = pixelate_people(_image(480, 640), np.ones((480, 640), bool))  # default block: 480 / 48 = 10 px
    assert np.all(big[:10, :10] == big[0, 0]) and np.any(big[:10, :20] != big[0, 0])


def test_colorize_labels_default_and_custom_palette() -> None:
    labels = np.arange(21, dtype=np.uint8).reshape(3, 7)
    out = colorize_labels(labels)
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == PERSON_COLOR
    assert len({tuple(c) for c in out.reshape(-1, 3)}) == 21
    assert len({tuple(c) for c in default_palette()}) == 256
    custom = colorize_labels(np.array([[0, 1], [2, 1]], np.int64), palette=[(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    np.testing.assert_array_equal(custom, [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [4, 5, 6]]])
    np.testing.assert_array_equal(colorize_labels(np.array([[True, False]])), [[PERSON_COLOR, (0, 0, 0)]])
    with pytest.raises(DataError, match="label 3") as excinfo:
        colorize_labels(np.array([[3]], np.uint8), palette=[(0, 0, 0), (1, 1, 1)])
    _one_line(excinfo)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (33, 17), (2, 3)])
def test_every_renderer_takes_any_size(shape: tuple[int, int]) -> None:
    image = _image(*shape, seed=5)
    mask = np.zeros(shape, bool)
    mask[: max(1, shape[0] // 2)] = True
    proba = np.linspace(0, 1, mask.size, dtype=np.float32).reshape(shape)
    for person in (mask, mask.astype(np.uint8), proba):
        assert overlay(image, person).shape == image.shape
        assert cutout(image, person).shape == (*shape, 4)
        assert blur_background(image, person).shape == image.shape
        assert blur_background(image, person, radius=40).shape == image.shape
        assert pixelate_people(image, person).shape == image.shape
        assert pixelate_people(image, person, block=64).shape == image.shape
    assert colorize_labels(mask).shape == image.shape


def test_renderers_never_modify_their_inputs() -> None:
    image, mask = _image(), _disk_mask()
    proba = _soft(mask)
    before = image.copy(), mask.copy(), proba.copy()
    for function in (overlay, cutout, blur_background, pixelate_people):
        function(image, mask)
        function(image, proba)
    for now, then in zip((image, mask, proba), before, strict=True):
        np.testing.assert_array_equal(now, then)


def test_empty_mask_changes_nothing_and_full_mask_blurs_nothing() -> None:
    image = _image()
    empty = np.zeros((60, 80), bool)
    np.testing.assert_array_equal(overlay(image, empty), image)
    np.testing.assert_array_equal(pixelate_people(image, empty), image)
    np.testing.assert_array_equal(blur_background(image, ~empty), image)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: overlay(_image(), np.zeros((60, 81), bool)), DataError, "does not match"),
        (lambda: overlay(_image(), np.zeros((2, 60, 80), np.float32)), DataError, r"proba\[1\]"),
        (lambda: overlay(_image().astype(np.float32), _disk_mask()), DataError, "RGB uint8"),
        (lambda: overlay(_image()[..., :2], np.zeros((60, 80), bool)), DataError, "RGB uint8"),
        (lambda: overlay(_image(), _disk_mask(), alpha=1.5), ConfigError, "alpha"),
        (lambda: overlay(_image(), _disk_mask(), color=(0, 300, 0)), ConfigError, "color"),
        (lambda: overlay(_image(), _disk_mask(), color=(0, 0)), ConfigError, "color"),
        (lambda: cutout(_image(), np.full((60, 80), 1.5, np.float32)), DataError, "0..1"),
        (lambda: cutout(_image(), np.full((60, 80), np.nan, np.float32)), DataError, "0..1"),
        (lambda: cutout(_image(), "mask"), DataError, "numpy"),
        (lambda: blur_background(_image(), _disk_mask(), radius=-1), ConfigError, "radius"),
        (lambda: pixelate_people(_image(), _disk_mask(), block=0), ConfigError, "block"),
        (lambda: pixelate_people(_image(), _disk_mask(), block=2.5), ConfigError, "block"),
        (lambda: colorize_labels(np.zeros((2, 2), np.float32)), DataError, "integer"),
        (lambda: colorize_labels(np.zeros((2, 2), np.uint8), palette=[(0, 0)]), ConfigError, "palette"),
    ],
)
def test_bad_arguments_raise_one_line_errors(call, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match) as excinfo:
        call()
    _one_line(excinfo)


def test_probability_a_hair_outside_range_is_clipped() -> None:
    proba = np.full((4, 4), 1.0004, np.float32)
    assert np.all(cutout(_image(4, 4), proba)[..., 3] == 255)
