"""Pictures made from a segmentation: tinted overlays, RGBA cut-outs, background blur, privacy mosaics, label colours.

Every function takes an RGB uint8 image [H, W, 3] of any size (1x1 included) and the people in it as `person`, one of:
- a bool mask [H, W] (True = person);
- an integer label mask [H, W] (0 background, 1 person; other labels count as not-person, so pass `mask == k` for a
  person class with another id);
- a float person-probability map [H, W] in 0..1. The soft renderers (overlay, cutout, blur_background) turn it into a
  per-pixel weight with `person_alpha`, so edges stay soft and confident people are fully opaque; the hard ones
  (outline, pixelate_people) threshold it at 0.5.

Each returns a new array and never modifies its inputs. They run once per video frame, so they are built on OpenCV's
SIMD primitives (LUT, copyTo, blendLinear, stackBlur, INTER_AREA resizes), work only inside the people's bounding box
where they can, and take milliseconds each at 1080p.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import cv2
import numpy as np

from peopleseg.errors import ConfigError, DataError

PERSON_COLOR = (255, 40, 40)
# Float rounding in resizes and blurs can push a probability map a hair outside 0..1; that much is clipped, not refused.
PROBA_SLACK = 1e-3
INVISIBLE_BELOW = 1 / 512
# The probability-to-alpha ramp around the 0.5 decision: a model's probability inside a person is often only 0.6-0.9,
# which used as alpha left people half-blurred and cut-outs see-through. Below the ramp is background, above it person.
ALPHA_RAMP = (0.35, 0.65)


def person_alpha(proba: np.ndarray) -> np.ndarray:
    """A person probability map [H, W] in 0..1 as compositing alpha, float32: 0 at p <= 0.35, 1 at p >= 0.65 and
    linear between, so soft edges stay soft while people's interiors are opaque. A new array."""
    low, high = ALPHA_RAMP
    alpha = np.subtract(proba, np.float32(low), dtype=np.float32)
    alpha *= np.float32(1 / (high - low))
    return np.clip(alpha, 0, 1, out=alpha)


def overlay(
    image: np.ndarray,
    person: np.ndarray,
    color: Sequence[int] = PERSON_COLOR,
    alpha: float = 0.5,
    outline: bool = True,
) -> np.ndarray:
    """Tint the people: each pixel moves `alpha * w` of the way towards `color` (w = 1 on a mask, `person_alpha` of the
    probability on a probability map). Background pixels (w = 0) keep their exact values. `outline` draws a thin line
    of `color` along the inside of each person's edge (2 px at 1080p, 1 px below 810 lines), so it never covers
    background either."""
    _check_image(image)
    rgb = _check_color(color, "color")
    alpha = _check_fraction(alpha, "alpha")
    mask, soft = _as_person(person, image.shape[:2])
    out = image.copy()
    width = _outline_width(image.shape[:2])
    # Work only on the people's bounding box (plus room for the outline's erosion): the rest stays a copy.
    box = _box(mask if soft is None else _visible(soft), margin=width)
    if box is None:
        return out
    crop, mask = image[box], mask[box]
    # Tinting is a per-channel function of the pixel value, so a 256-entry table per channel does the arithmetic.
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = np.rint(levels * (1 - alpha) + np.asarray(rgb, dtype=np.float32) * alpha).astype(np.uint8)
    tinted = cv2.LUT(crop, table.reshape(256, 1, 3))
    if soft is None:
        cv2.copyTo(tinted, mask, out[box])
    else:
        weight = soft[box]
        out[box] = cv2.blendLinear(crop, tinted, 1 - weight, weight)
    if outline:
        # The inner border: person pixels within `width` of a non-person pixel. The frame's edge is not a person's
        # edge, and cv2.erode's default border (the maximum) keeps it from being outlined.
        inner = cv2.erode(mask, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
        out[box][mask > inner] = rgb
    return out


def cutout(image: np.ndarray, person: np.ndarray) -> np.ndarray:
    """RGBA uint8 [H, W, 4]: the image with alpha 255 on the people and 0 elsewhere (round(255 * `person_alpha(p)`)
    for a probability map, so soft edges survive). Save it as PNG; JPEG has no alpha."""
    _check_image(image)
    mask, soft = _as_person(person, image.shape[:2])
    alpha = mask * np.uint8(255) if soft is None else cv2.convertScaleAbs(soft, alpha=255.0)
    out = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)
    out[..., 3] = alpha
    return out


def blur_background(image: np.ndarray, person: np.ndarray, radius: float | None = None) -> np.ndarray:
    """The video-call background blur: the background blurred, the people sharp.

    `radius` is how far, in pixels, background colours are smeared (the blur kernel's half-width). None means 2% of
    the image's shorter side: about 22 px at 1080p, 14 px at 720p. 0 returns a copy of the image.

    The people are composited with a soft alpha: `person_alpha` of a probability map, or a hard mask feathered by 1 px
    per 540 lines (min 1), so edges do not look cut out with scissors. Pixels further than that inside a mask, or of
    probability >= 0.65, keep their exact values. The blur is weighted by the background alpha (a normalised
    convolution), so people's colours do not bleed into the blurred background as a halo around them. It runs at a
    reduced resolution when the radius is large, which a blur this strong cannot show.
    """
    _check_image(image)
    mask, soft = _as_person(person, image.shape[:2])
    height, width = image.shape[:2]
    if radius is None:
        radius = 0.02 * min(height, width)
    if not _is_real(radius) or not 0 <= radius < float("inf"):
        raise ConfigError(f"radius must be a number of pixels >= 0, got {radius!r}")
    if radius < 0.5:
        return image.copy()

    # Blur at 1/scale of the size with a radius of ~4 px there: a strong blur has no detail to lose by it.
    scale = max(1, int(radius // 4))
    small_size = (max(1, round(width / scale)), max(1, round(height / scale)))
    kernel = 2 * max(1, round(radius / scale)) + 1
    if soft is None:
        feather = max(1, round(min(height, width) / 540))
        box = _box(mask, margin=feather + 1)  # the +1 keeps a zero border for the feathering blur's reflection
        cover = cv2.resize(mask * np.uint8(255), small_size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    else:
        box = _box(_visible(soft))
        cover = cv2.resize(soft, small_size, interpolation=cv2.INTER_AREA)
    # Weight each pixel by how much it is background; the floor keeps the ratio defined inside large people, where
    # it is hidden anyway.
    weight = np.float32(1 + 1e-3) - cover
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA).astype(np.float32)
    numerator = cv2.stackBlur(small * weight[..., None], (kernel, kernel))
    blurred = numerator / cv2.stackBlur(weight, (kernel, kernel))[..., None]
    background = cv2.resize(cv2.convertScaleAbs(blurred), (width, height), interpolation=cv2.INTER_LINEAR)
    if box is None:
        return background
    # Composite only on the people's bounding box; elsewhere the blurred background is the answer.
    if soft is None:
        size = 2 * feather + 1
        alpha8 = cv2.GaussianBlur(mask[box] * np.uint8(255), (size, size), 0)
        alpha = alpha8.astype(np.float32) / np.float32(255)  # a division, so 255 maps to exactly 1: interior untouched
    else:
        alpha = soft[box]
    background[box] = cv2.blendLinear(image[box], background[box], alpha, 1 - alpha)
    return background


def pixelate_people(image: np.ndarray, person: np.ndarray, block: int | None = None) -> np.ndarray:
    """Privacy masking: every person pixel is replaced by the mean colour of its `block` x `block` cell of a grid
    anchored at the top-left corner; background pixels are untouched. None means 1/48 of the shorter side (22 px at
    1080p, at least 2). A probability map is thresholded at 0.5 (blending would leak the original pixels).

    Cells at the right and bottom edges are completed by mirroring the image, so every cell averages `block` x `block`
    pixels and none keeps a single pixel's value (only an image smaller than one cell in both directions, such as
    1x1, has nothing else to mix in). `block=1` returns a copy of the image.
    """
    _check_image(image)
    mask, _ = _as_person(person, image.shape[:2])
    height, width = image.shape[:2]
    if block is None:
        block = max(2, round(min(height, width) / 48))
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ConfigError(f"block must be an integer number of pixels >= 1, got {block!r}")
    block = int(block)
    out = image.copy()
    box = _box(mask)
    if block == 1 or box is None:
        return out
    rows, cols = -(-height // block), -(-width // block)
    padded = cv2.copyMakeBorder(image, 0, rows * block - height, 0, cols * block - width, cv2.BORDER_REFLECT_101)
    # INTER_AREA by an integer factor is the exact cell mean; NEAREST_EXACT by an integer factor repeats each cell.
    cells = cv2.resize(padded, (cols, rows), interpolation=cv2.INTER_AREA)
    # Paint only the cells that cover the people's bounding box.
    row0, col0 = box[0].start // block, box[1].start // block
    row1, col1 = -(-box[0].stop // block), -(-box[1].stop // block)
    size = ((col1 - col0) * block, (row1 - row0) * block)
    mosaic = cv2.resize(cells[row0:row1, col0:col1], size, interpolation=cv2.INTER_NEAREST_EXACT)
    ys = slice(row0 * block, min(height, row1 * block))
    xs = slice(col0 * block, min(width, col1 * block))
    cv2.copyTo(mosaic[: ys.stop - ys.start, : xs.stop - xs.start], mask[ys, xs], out[ys, xs])
    return out


def colorize_labels(mask: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] picture of a label mask [H, W] (uint8, any integer type below 256, or bool).

    `palette` is a list of RGB triples, one per label id. The default gives 0 black, 1 the person red of `overlay`,
    and every other id up to 255 a distinct colour (the Pascal VOC colour map).
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or min(mask.shape) < 1:
        raise DataError(f"expected a label mask of shape [H, W], got {_describe(mask)}")
    if mask.dtype == bool:
        mask = mask.view(np.uint8)
    elif not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"expected an integer or bool label mask, got {mask.dtype}")
    table = default_palette() if palette is None else _check_palette(palette)
    low, high = int(mask.min()), int(mask.max())
    if low < 0 or high >= len(table):
        bad = low if low < 0 else high
        raise DataError(f"mask has label {bad} but the palette has colours for 0..{len(table) - 1} only")
    labels = np.ascontiguousarray(mask, dtype=np.uint8)
    full = np.zeros((256, 3), np.uint8)
    full[: len(table)] = table
    # One single-channel LUT per colour channel is ~4x faster than numpy's fancy indexing on a full frame.
    return cv2.merge([cv2.LUT(labels, full[:, channel]) for channel in range(3)])


def default_palette() -> np.ndarray:
    """[256, 3] uint8: 0 black, 1 the person red, 2.. the Pascal VOC colour map (all distinct)."""
    ids = np.arange(256)
    palette = np.zeros((256, 3), np.int64)
    for shift in range(8):  # VOC: spread the id's bits over the channels, most significant bits first
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    palette[1] = PERSON_COLOR
    return palette.astype(np.uint8)


def _as_person(person: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 0/1 mask, None) for a bool or label mask; (uint8 mask of p >= 0.5, float32 `person_alpha`) for a map."""
    if not isinstance(person, np.ndarray):
        raise DataError(f"expected the people as a numpy mask or probability map, got {type(person).__name__}")
    if person.shape != tuple(shape):
        hint = "; pass the person channel, proba[1]" if person.ndim == 3 else ""
        raise DataError(f"person mask shape {list(person.shape)} does not match the image's {list(shape)}{hint}")
    if person.dtype == bool:
        return np.ascontiguousarray(person).view(np.uint8), None
    if np.issubdtype(person.dtype, np.integer):
        return (person == 1).view(np.uint8), None
    if np.issubdtype(person.dtype, np.floating):
        proba = np.ascontiguousarray(person, dtype=np.float32)
        low, high = float(proba.min()), float(proba.max())
        if not (low >= -PROBA_SLACK and high <= 1 + PROBA_SLACK):  # also catches NaN
            raise DataError(f"person probabilities must lie in 0..1, got values from {low:g} to {high:g}")
        if low < 0 or high > 1:  # rounding from a resize or blur: clip rather than fail
            proba = np.clip(proba, 0, 1)
        return (proba >= 0.5).view(np.uint8), person_alpha(proba)
    raise DataError(f"expected a bool/integer mask or float probability map, got {person.dtype}")


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"expected an RGB uint8 image of shape [H, W, 3], got {_describe(image)}")
    if min(image.shape[:2]) < 1:
        raise DataError(f"empty image of shape {list(image.shape)}")


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype} {list(array.shape)}"
    return type(array).__name__


def _check_color(color: Sequence[int], name: str) -> tuple[int, int, int]:
    values = np.asarray(color)
    if (
        values.shape != (3,)
        or not np.issubdtype(values.dtype, np.number)
        or not np.all((values >= 0) & (values <= 255))
    ):
        raise ConfigError(f"{name} must be three RGB values in 0..255, got {color!r}")
    return int(values[0]), int(values[1]), int(values[2])


def _check_fraction(value: float, name: str) -> float:
    if not _is_real(value) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in 0..1, got {value!r}")
    return float(value)


def _check_palette(palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    try:
        table = np.asarray(palette)
    except ValueError:
        table = np.empty(0)  # ragged rows
    if (
        table.ndim != 2
        or table.shape[1] != 3
        or not 1 <= len(table) <= 256
        or not np.issubdtype(table.dtype, np.number)
        or not np.all((table >= 0) & (table <= 255))
    ):
        raise ConfigError("palette must be 1 to 256 RGB triples with values in 0..255")
    return table.astype(np.uint8)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _visible(proba: np.ndarray) -> np.ndarray:
    """Pixels whose weight can change a uint8 value: below 1/512, even a 255 step moves it less than half a level."""
    return (proba >= INVISIBLE_BELOW).view(np.uint8)


def _box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """The bounding box of a mask's non-zero pixels, grown by `margin` and clipped to the image; None when empty."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0:
        return None
    height, width = mask.shape
    ys = slice(max(0, y - margin), min(height, y + h + margin))
    return ys, slice(max(0, x - margin), min(width, x + w + margin))


def _outline_width(shape: tuple[int, ...]) -> int:
    return max(1, round(min(shape[:2]) / 540))
