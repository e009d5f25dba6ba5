"""Turn whatever the caller holds (a path, a PIL image, a numpy array in RGB or BGR) into RGB uint8 [H, W, 3]."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from peopleseg.data.image_io import pil_to_rgb, pixel_limit_error, read_image
from peopleseg.errors import ConfigError, DataError

ImageLike = np.ndarray | Image.Image | str | os.PathLike
ColorOrder = Literal["rgb", "bgr"]

# 8K UHD with room to spare; larger images should be tiled by the caller or use a raised limit.
DEFAULT_MAX_PIXELS = 8192 * 8192


def to_rgb(image: ImageLike, color: ColorOrder = "rgb", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 [H, W, 3]. `color` states the channel order of numpy input ("bgr" for OpenCV frames). An image of
    more than `max_pixels` pixels is an error; a file's size is checked from its header, before it is decoded."""
    if color not in ("rgb", "bgr"):
        raise ConfigError(f"color must be 'rgb' or 'bgr', got '{color}'")
    if isinstance(image, (str, Path, os.PathLike)):
        array = read_image(image, max_pixels=max_pixels)
        name = str(image)
    elif isinstance(image, Image.Image):
        array = pil_to_rgb(image)
        name = "PIL image"
    elif isinstance(image, np.ndarray):
        array = _array_to_rgb(image, color)
        name = "array"
    else:
        raise DataError(f"expected an image path, a PIL image or a numpy array, got {type(image).__name__}")
    height, width = array.shape[:2]
    if height < 1 or width < 1:
        raise DataError(f"{name}: empty image of shape {list(array.shape)}")
    if height * width > max_pixels:
        raise pixel_limit_error(name, f"{width}x{height}", max_pixels)
    return array


def _array_to_rgb(image: np.ndarray, color: ColorOrder) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise DataError(f"expected an image array of shape [H, W], [H, W, 3] or [H, W, 4], got {list(image.shape)}")
    image = _to_uint8(image)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    image = image[:, :, :3]  # alpha is dropped: the model sees colour only
    return np.ascontiguousarray(image[:, :, ::-1] if color == "bgr" else image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise DataError("image array holds NaN or infinite values")
        if image.min(initial=0) < 0 or image.max(initial=0) > 1:
            raise DataError(f"float image values must lie in 0..1, got {image.min():.3g}..{image.max():.3g}")
        return (image * 255 + 0.5).astype(np.uint8)
    raise DataError(f"unsupported image dtype {image.dtype}: use uint8, uint16 or float in 0..1")
