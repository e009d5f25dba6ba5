"""Image files in and out. At the edges images are RGB uint8 HWC numpy arrays; masks are uint8 HW label ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from peopleseg.atomic import atomic_path
from peopleseg.errors import DataError

# Pillow's own guard against decompression bombs is a warning up to 2x its limit; make any excess an error.
MAX_IMAGE_PIXELS = 178_956_970


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any Pillow-readable image as RGB uint8 [H, W, 3] (greyscale, palette and RGBA are converted)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: {image.width}x{image.height} is too many pixels")
            image.load()
            return np.array(image.convert("RGB"))  # a writable copy, not a read-only view
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image, or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None


def write_image(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write an HxW (grey/label) or HxWx3/4 uint8 array atomically; the format follows the suffix."""
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
        image.save(temp, format=fmt)
    return path
