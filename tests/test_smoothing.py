"""Temporal smoothing: less flicker on a still scene, motion still followed, plain thresholding as the limit case."""

import cv2
import numpy as np
import pytest

from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.smoothing import TemporalSmoother, flicker


def _blob(center_x: int, size: int = 64, radius: int = 14) -> np.ndarray:
    """A person's clean probability map: a disk with soft (blurred) edges."""
    disk = np.zeros((size, size), np.float32)
    cv2.circle(disk, (center_x, size // 2), radius, 1.0, -1)
    return cv2.GaussianBlur(disk, (0, 0), 2.5)


def _noisy(clean: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(clean + rng.normal(0, sigma, clean.shape).astype(np.float32), 0, 1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_alpha_one_equal_thresholds_is_plain_thresholding() -> None:
    rng = np.random.default_rng(0)
    smoother = TemporalSmoother(alpha=1.0, on_threshold=0.5, off_threshold=0.5)
    for _ in range(6):
        proba = rng.random((17, 23), dtype=np.float32)
        proba[::4, ::3] = 0.5  # ties go to person, as in p >= 0.5
        smoothed, mask = smoother.update(proba)
        np.testing.assert_array_equal(smoothed, proba)
        np.testing.assert_array_equal(mask, proba >= 0.5)
        assert smoothed.dtype == np.float32 and mask.dtype == bool


def test_smoothing_reduces_flicker_on_a_still_scene() -> None:
    rng = np.random.default_rng(1)
    clean = _blob(32)
    frames = [_noisy(clean, rng, 0.15) for _ in range(40)]
    raw = [frame >= 0.5 for frame in frames]
    smoother = TemporalSmoother()
    smoothed = [smoother.update(frame)[1] for frame in frames]
    raw_flicker, smooth_flicker = flicker(raw), flicker(smoothed)
    assert raw_flicker > 0.02  # the noise really flips edge pixels
    assert smooth_flicker < 0.5 * raw_flicker
    assert _iou(smoothed[-1], clean >= 0.5) > 0.9  # and the mask is still the person


def test_a_moving_person_is_followed() -> None:
    rng = np.random.default_rng(2)
    smoother = TemporalSmoother()
    for step in range(30):  # walking 1 px a frame
        clean = _blob(16 + step)
        _, mask = smoother.update(_noisy(clean, rng, 0.1))
        if step >= 3:
            assert _iou(mask, clean >= 0.5) > 0.8
    # A jump to a new place (a cut within the clip) is followed within k = 3 frames.
    jumped = _blob(20)
    ious = [_iou(smoother.update(_noisy(jumped, rng, 0.1))[1], jumped >= 0.5) for _ in range(3)]
    assert ious[-1] > 0.8 and ious[0] < ious[-1]


def _scene(blob: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The frame a camera would see: a grey background with sensor noise, the person drawn bright."""
    image = np.full((*blob.shape, 3), 90, np.float32) + rng.normal(0, 1.5, (*blob.shape, 3)).astype(np.float32)
    image += blob[..., None] * 120
    return np.clip(image, 0, 255).astype(np.uint8)


def test_with_frames_a_walking_person_leaves_no_trail() -> None:
    # 4 px a frame, as pedestrians at 10 fps: the plain average trails behind and shrinks the person; with the
    # frames the smoother sees the motion and takes each frame as it is there.
    rng = np.random.default_rng(3)
    plain, gated = TemporalSmoother(), TemporalSmoother()
    plain_ious, gated_ious = [], []
    for step in range(10):
        clean = _blob(12 + 4 * step)
        proba = _noisy(clean, rng, 0.05)
        plain_ious.append(_iou(plain.update(proba)[1], clean >= 0.5))
        gated_ious.append(_iou(gated.update(proba, _scene(clean, rng))[1], clean >= 0.5))
    assert min(gated_ious[1:]) > 0.9
    assert np.mean(plain_ious[1:]) < np.mean(gated_ious[1:]) - 0.1


def test_with_still_frames_the_flicker_is_damped_as_before() -> None:
    rng = np.random.default_rng(4)
    clean = _blob(32)
    probas = [_noisy(clean, rng, 0.15) for _ in range(40)]
    smoother = TemporalSmoother()
    gated = [smoother.update(proba, _scene(clean, rng))[1] for proba in probas]
    assert flicker(gated) < 0.5 * flicker([proba >= 0.5 for proba in probas])
    assert _iou(gated[-1], clean >= 0.5) > 0.9


def test_the_frame_for_motion_must_match_the_mask() -> None:
    smoother = TemporalSmoother()
    with pytest.raises(DataError, match=r"uint8 of the mask's size \[64, 64\], got uint8 \[32, 32, 3\]"):
        smoother.update(_blob(32), np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ConfigError, match="motion_levels must be > 0"):
        TemporalSmoother(motion_levels=0)


def test_ema_and_hysteresis_by_hand() -> None:
    smoother = TemporalSmoother(alpha=0.25)
    smoother.update(np.ones((1, 1), np.float32))
    smoothed, _ = smoother.update(np.zeros((1, 1), np.float32))
    assert smoothed[0, 0] == pytest.approx(0.75)  # 0.25 * 0 + 0.75 * 1

    hysteresis = TemporalSmoother(alpha=1.0, on_threshold=0.6, off_threshold=0.4)
    states = [bool(hysteresis.update(np.full((1, 1), p, np.float32))[1][0, 0]) for p in (0.7, 0.5, 0.4, 0.5, 0.6)]
    assert states == [True, True, False, False, True]
    first = TemporalSmoother(on_threshold=0.6, off_threshold=0.4)
    assert first.update(np.full((1, 1), 0.55, np.float32))[1][0, 0]  # first frame: the middle of the band decides


def test_outputs_are_fresh_read_only_arrays() -> None:
    smoother = TemporalSmoother()
    buffer = np.zeros((4, 4), np.float32)
    first = smoother.update(buffer)
    buffer[:] = 1.0  # the caller reuses its buffer: the smoother's state must not change with it
    second = smoother.update(buffer)
    assert first[0] is not second[0] and first[1] is not second[1]
    assert not first[1].any() and second[0][0, 0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        second[1][0, 0] = True


def test_frame_size_change_and_reset_start_afresh() -> None:
    smoother = TemporalSmoother(alpha=0.1)
    smoother.update(np.zeros((8, 8), np.float32))
    smoothed, mask = smoother.update(np.ones((6, 5), np.float32))
    assert smoothed.shape == (6, 5) and np.all(smoothed == 1) and mask.all()
    smoother.reset()
    smoothed, _ = smoother.update(np.zeros((6, 5), np.float32))
    assert np.all(smoothed == 0)
    smoothed, _ = smoother.update(np.zeros((6, 5), np.float64))  # other float types are accepted
    assert smoothed.dtype == np.float32


def test_flicker_definition() -> None:
    a = np.zeros((4, 4), bool)
    a[0, :4] = True
    b = np.zeros((4, 4), bool)
    b[0, 2:4] = True
    b[1, 0:2] = True
    assert flicker([a, a, a]) == 0.0
    assert flicker([a, b]) == pytest.approx(4 / 6)  # 4 changed of the 6 person pixels in either frame
    empty = np.zeros((4, 4), np.uint8)
    assert flicker([empty, empty, a.astype(np.uint8), a]) == pytest.approx(0.5)  # the empty pair is skipped
    assert flicker([empty, empty]) == 0.0 and flicker([a]) == 0.0 and flicker([]) == 0.0
    assert flicker(mask for mask in (a, b)) == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: TemporalSmoother(alpha=0), ConfigError, "alpha"),
        (lambda: TemporalSmoother(alpha=1.5), ConfigError, "alpha"),
        (lambda: TemporalSmoother(alpha=float("nan")), ConfigError, "alpha"),
        (lambda: TemporalSmoother(on_threshold=0.3, off_threshold=0.4), ConfigError, "off_threshold"),
        (lambda: TemporalSmoother(off_threshold=-0.1), ConfigError, "off_threshold"),
        (lambda: TemporalSmoother(on_threshold=True), ConfigError, "on_threshold"),
        (lambda: TemporalSmoother().update(np.zeros((2, 4, 4), np.float32)), DataError, r"proba\[1\]"),
        (lambda: TemporalSmoother().update(np.zeros((4, 4), np.uint8)), DataError, "float"),
        (lambda: TemporalSmoother().update(np.full((4, 4), 2.0, np.float32)), DataError, "0..1"),
        (lambda: flicker([np.zeros((4, 4), bool)] * 2 + [np.zeros((4, 5), bool)]), DataError, "frame 2"),
        (lambda: flicker([np.zeros((4, 4), np.float32)]), DataError, "frame 0"),
    ],
)
def test_bad_arguments_raise_one_line_errors(call, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match) as excinfo:
        call()
    assert "\n" not in str(excinfo.value)
