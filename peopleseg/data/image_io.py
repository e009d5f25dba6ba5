"""Image files in and out. At the edges images are RGB uint8 HWC numpy arrays; masks are uint8 HW label ids."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from peopleseg.atomic import atomic_path
from peopleseg.errors import DataError

# The file suffixes every part of peopleseg treats as images (folders, calibration sets, `peopleseg infer`).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# Pillow's own guard against decompression bombs is a warning up to 2x its limit; make any excess an error.
MAX_IMAGE_PIXELS = 178_956_970


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Read any Pillow-readable image as RGB uint8 [H, W, 3], upright (EXIF orientation applied).

    Greyscale, palette, RGBA, CMYK, 16-bit and float images are converted; of an animated image (GIF, WebP, ...) only
    the first frame is read. An image of more than `max_pixels` pixels is refused from its header, before it is
    decoded (never more than MAX_IMAGE_PIXELS, Pillow's decompression-bomb limit).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image")
    return pil_to_rgb(decode_file(path, max_pixels=max_pixels))


def decode_file(
    path: Path, what: str = "image", header_only: bool = False, max_pixels: int | None = None
) -> Image.Image:
    """Open and fully decode an image file (images and masks alike), with one-line errors that name it.
    `header_only` reads just the header (format and size), closed again: a cheap check that it is an image.
    `max_pixels` (at most, and by default, MAX_IMAGE_PIXELS) refuses larger images before they are decoded."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else min(max_pixels, MAX_IMAGE_PIXELS)
    try:
        image = Image.open(path)
        if image.width * image.height > limit:
            image.close()
            raise pixel_limit_error(str(path), f"{image.width}x{image.height}", limit, limit < MAX_IMAGE_PIXELS)
        if header_only:
            image.close()
        else:
            image.load()  # decodes now (errors surface here) and closes the file of a single-frame image
        return image
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as exc:
        # Pillow refuses these inside open(), so the size is only in its message: "Image size (N pixels) exceeds ..."
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found[1]} pixels" if found else "the image"
        raise pixel_limit_error(str(path), size, MAX_IMAGE_PIXELS, raisable=False) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated {what} ({exc})") from None


def pixel_limit_error(name: str, size: str, limit: int, raisable: bool = True) -> DataError:
    """The one-line error for an image over a pixel limit: how to raise the limit, or (for the most any image file
    may have, MAX_IMAGE_PIXELS) that it cannot be."""
    if raisable:
        how = "raise it with max_pixels=N in the API, or --max-pixels N on the command line"
    else:
        how = "the most an image file may have; shrink or tile the image"
    return DataError(f"{name}: {size} is over the limit of {limit} pixels ({how})")


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image as an upright RGB uint8 array. 16-bit and 32-bit greyscale are scaled, not clipped; float images
    with values in 0..1 are scaled by 255."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = values.max(initial=0)
        if image.mode.startswith("I;16") or peak > 255:
            top = 65535.0
        else:
            top = 1.0 if image.mode == "F" and peak <= 1 else 255.0  # a float image in 0..1, as arrays are taken
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
