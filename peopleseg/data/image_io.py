"""Image files in and out. At the edges images are RGB uint8 HWC numpy arrays; masks are uint8 HW label ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from peopleseg.atomic import atomic_path
from peopleseg.errors import DataError

# The file suffixes every part of peopleseg treats as images (folders, calibration sets, `peopleseg infer`).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Pillow's own guard against decompression bombs is a warning up to 2x its limit; make any excess an error.
MAX_IMAGE_PIXELS = 178_956_970


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any Pillow-readable image as RGB uint8 [H, W, 3], upright (EXIF orientation applied).

    Greyscale, palette, RGBA, CMYK and 16-bit images are converted.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image")
    return pil_to_rgb(decode_file(path))


def decode_file(path: Path, what: str = "image", header_only: bool = False) -> Image.Image:
    """Open and fully decode an image file (images and masks alike), with one-line errors that name it.
    `header_only` reads just the header (format and size), closed again: a cheap check that it is an image."""
    try:
        image = Image.open(path)
        if image.width * image.height > MAX_IMAGE_PIXELS:
            image.close()
            raise DataError(f"{path}: {image.width}x{image.height} is too many pixels")
        if header_only:
            image.close()
        else:
            image.load()  # decodes now (errors surface here) and closes the file of a single-frame image
        return image
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image, or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: corrupt or truncated {what} ({exc})") from None


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image as an upright RGB uint8 array. 16-bit and 32-bit greyscale are scaled, not clipped."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels carry arbitrary colours; show them over black, as a camera would see nothing there.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))  # a writable copy, not a read-only view


def write_image(path: str | os.PathLike[str], array: np.ndarray, *, quality: int | None = None) -> Path:
    """Write an HxW (grey/label) or HxWx3/4 uint8 array atomically; the format follows the suffix.

    `quality`: JPEG/WebP quality (1-100); None keeps Pillow's default (75)."""
    path = Path(path)
    if array.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 pixels, got {array.dtype}")
    image = Image.fromarray(array)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown image suffix '{path.suffix}'")
    if fmt == "JPEG" and image.mode == "RGBA":
        raise DataError(f"{path}: JPEG has no alpha channel; use .png for cut-outs")
    with atomic_path(path) as temp:
        options = {"quality": quality} if quality is not None and fmt in ("JPEG", "WEBP") else {}
        image.save(temp, format=fmt, **options)
    return path
