"""Every kind of image a caller may hold becomes upright RGB uint8, or a one-line error."""

import io

import numpy as np
import pytest
from PIL import Image

from peopleseg.data.image_io import read_image
from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.image_input import to_rgb


def _gradient(height: int = 6, width: int = 8) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgb_and_bgr_arrays() -> None:
    rgb = _gradient()
    assert np.array_equal(to_rgb(rgb), rgb)
    assert np.array_equal(to_rgb(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr"), rgb)
    with pytest.raises(ConfigError, match="color must be"):
        to_rgb(rgb, color="hsv")  # type: ignore[arg-type]


def test_grey_rgba_16bit_and_float_arrays() -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    assert np.array_equal(to_rgb(grey), np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.dstack([_gradient(), np.zeros((6, 8), np.uint8)])
    assert np.array_equal(to_rgb(rgba), rgba[:, :, :3])
    deep = np.full((2, 2, 3), 65535, np.uint16)
    deep[0, 0] = 0
    out = to_rgb(deep)
    assert out.dtype == np.uint8 and out[1, 1, 0] == 255 and out[0, 0, 0] == 0
    assert to_rgb(np.full((2, 2, 3), 0.5, np.float32))[0, 0, 0] == 128


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (np.full((4, 4, 3), 2.0), "0..1"),
        (np.full((4, 4, 3), np.nan), "NaN"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
    ],
)
def test_bad_arrays(array, message) -> None:
    with pytest.raises(DataError, match=message):
        to_rgb(array)


def test_pixel_limit() -> None:
    with pytest.raises(DataError, match="over the limit of 100 pixels"):
        to_rgb(np.zeros((20, 20, 3), np.uint8), max_pixels=100)


def test_pil_modes(tmp_path) -> None:
    rgb = _gradient()
    assert np.array_equal(to_rgb(Image.fromarray(rgb)), rgb)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert to_rgb(cmyk).shape == (6, 8, 3)
    sixteen = Image.fromarray(np.full((3, 5), 65535, np.uint16))
    assert to_rgb(sixteen).min() == 255  # scaled, not clipped to garbage
    palette = Image.fromarray(rgb).convert("P")
    assert to_rgb(palette).shape == (6, 8, 3)


def test_exif_orientation_is_honoured(tmp_path) -> None:
    # A 8x6 landscape photo stored with "rotate 90" (orientation 6) is shown upright as 6x8 portrait.
    image = Image.fromarray(_gradient(6, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    assert read_image(path).shape == (8, 6, 3)
    assert to_rgb(Image.open(path)).shape == (8, 6, 3)


def test_sixteen_bit_png_file(tmp_path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(path)
    assert abs(int(read_image(path)[0, 0, 0]) - 128) <= 1


def test_unsupported_type() -> None:
    with pytest.raises(DataError, match="got bytes"):
        to_rgb(io.BytesIO(b"x").getvalue())  # type: ignore[arg-type]
