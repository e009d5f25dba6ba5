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


def test_float_tiff_in_0_to_1_is_scaled(tmp_path) -> None:
    ramp = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    image = read_image(tmp_path / "unit.tif")
    assert image[0, 0, 0] == 0 and image[2, 3, 0] == 255  # not black: 0..1 is scaled as float arrays are
    np.testing.assert_array_equal(image, to_rgb(ramp))  # and exactly as a float array of 0..1 is
    Image.fromarray(ramp * 200, mode="F").save(tmp_path / "levels.tif")
    assert read_image(tmp_path / "levels.tif")[2, 3, 0] == 200  # values above 1 are 0..255 levels, as before


def test_file_over_the_pixel_limit_is_named_and_refused_before_decoding(tmp_path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(_gradient(20, 30)).save(path)
    path.write_bytes(path.read_bytes()[:60])  # the header only: decoding would fail, the size check must not
    with pytest.raises(DataError) as info:
        to_rgb(path, max_pixels=100)
    message = str(info.value)
    assert message.startswith(f"{path}: 30x20 is over the limit of 100 pixels")
    assert "max_pixels=" in message and "--max-pixels" in message and "\n" not in message
    with pytest.raises(DataError, match=r"corrupt or truncated"):
        to_rgb(path)  # within the limit, the damage is found
    with pytest.raises(DataError, match=r"^array: 30x20 is over the limit of 100 pixels .*--max-pixels"):
        to_rgb(_gradient(20, 30), max_pixels=100)


def test_image_over_pillows_bomb_limit_is_over_the_limit_not_corrupt(tmp_path) -> None:
    import struct
    import zlib

    # A PNG whose header claims 20000x10000 pixels: Pillow refuses it on opening, as a decompression bomb.
    buffer = io.BytesIO()
    Image.fromarray(_gradient(1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", 20000, 10000) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    path = tmp_path / "huge.png"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 200000000 pixels is over the limit of 178956970 pixels"), message
    assert "corrupt" not in message
