"""What `POST /v1/segment?format=…` answers: the result drawn or described, encoded as bytes with a media type.

| format | body |
|---|---|
| `mask` | PNG, 8-bit label ids (0 background, 1 person), or 0/255 with `binary_255=true` |
| `overlay` | JPEG (or PNG with `encoding=png`): people tinted red with an outline |
| `cutout` | RGBA PNG: alpha is the person probability |
| `blur` | JPEG (or PNG): background blurred, people sharp |

JPEG holds at most 65,500 pixels a side: overlay and blur of a wider or taller image are PNG, whatever `encoding` asks.
| `json` | size, person fraction, people count, boxes, each person's area, centroid and score; mask as COCO RLE |
"""

from __future__ import annotations

import json
from typing import Any, Literal

import cv2
import numpy as np

from peopleseg.infer import render
from peopleseg.infer.segmenter import SegmentationResult
from peopleseg.serve.rle import encode_rle

Format = Literal["mask", "overlay", "cutout", "blur", "json"]
Encoding = Literal["jpeg", "png"]
FORMATS: tuple[str, ...] = ("mask", "overlay", "cutout", "blur", "json")
JPEG_QUALITY = 90
PNG_COMPRESSION = 3  # OpenCV's default: most of the size gain of 9 at a fraction of the time
JPEG_MAX_SIDE = 65_500  # the most pixels a side that a JPEG (OpenCV's encoder) can hold
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "json": "application/json"}


def describe(result: SegmentationResult) -> dict[str, Any]:
    """The JSON answer: `SegmentationResult.to_dict()` plus `boxes` ([x0, y0, x1, y1], x1 and y1 exclusive, one per
    person, largest first) and `mask`, the person mask as compressed COCO RLE (`pycocotools.mask.decode` reads it)."""
    data = result.to_dict()
    data["boxes"] = [person["bbox"] for person in data["people"]]
    data["mask"] = encode_rle(result.person_mask)
    return data


def render_result(
    image: np.ndarray, result: SegmentationResult, fmt: str, encoding: str = "jpeg", binary_255: bool = False
) -> tuple[bytes, str]:
    """(body, media type) of `result` in format `fmt` for the RGB `image` it was computed from."""
    if fmt == "json":
        return json.dumps(describe(result), separators=(",", ":")).encode(), MEDIA_TYPES["json"]
    if fmt == "mask":
        labels = result.mask if not binary_255 else result.person_mask.view(np.uint8) * np.uint8(255)
        return encode_png(labels), MEDIA_TYPES["png"]
    if fmt == "cutout":
        return encode_png(render.cutout(image, result.person)), MEDIA_TYPES["png"]
    if fmt == "overlay":
        picture = render.overlay(image, result.person)
    elif fmt == "blur":
        picture = render.blur_background(image, result.person)
    else:
        raise ValueError(f"unknown format '{fmt}'")
    if encoding == "png" or max(picture.shape[:2]) > JPEG_MAX_SIDE:  # PNG holds any size the pixel limit admits
        return encode_png(picture), MEDIA_TYPES["png"]
    return encode_jpeg(picture), MEDIA_TYPES["jpeg"]


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG of grey [H, W], RGB [H, W, 3] or RGBA [H, W, 4] uint8 pixels."""
    ok, data = cv2.imencode(".png", _to_opencv_order(pixels), (cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", _to_opencv_order(rgb), (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def _to_opencv_order(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA)
    return pixels
