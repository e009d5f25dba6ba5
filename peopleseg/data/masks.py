"""Label masks on disk → uint8 [H, W] label ids: 0 background, 1 person, …, 255 ignore.

Three ways a mask file can encode labels:
- single-channel PNG (L, P, I;16, 1) whose values *are* the label ids (P-mode masks, as VOC writes them, store ids as
  palette indices; the indices are used, the colours are not);
- with a `Palette` (TAO's `palette:` list), colours map to ids. Greyscale masks are read as (v, v, v), so TAO's
  `rgb: [255, 255, 255]` entries work for 0/255 masks;
- `binary_255=True`: 0/255 foreground masks (255 → 1). It is an explicit switch because 255 otherwise means ignore.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from peopleseg.data.image_io import decode_file
from peopleseg.errors import ConfigError, DataError

IGNORE_INDEX = 255
BINARY_WITH_PALETTE = "binary_255 and a palette cannot be combined: give the palette an rgb [255, 255, 255] entry"
_PALETTE_KEYS = {"seg_class", "label_id", "rgb", "mapping_class"}


@dataclass(frozen=True)
class PaletteEntry:
    """One colour of a colour-coded mask and the label id it stands for."""

    name: str
    label_id: int
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    """Colour → label id, as TAO's `palette: [{seg_class: person, label_id: 1, rgb: [255, 0, 0]}, …]`.

    Several colours may share a label id (TAO's `mapping_class`); one colour may not have two ids.
    """

    entries: tuple[PaletteEntry, ...]

    def __post_init__(self) -> None:
        seen: dict[tuple[int, int, int], str] = {}
        for entry in self.entries:
            if entry.rgb in seen:
                first = seen[entry.rgb]
                raise ConfigError(f"palette: rgb {list(entry.rgb)} is given to both '{first}' and '{entry.name}'")
            seen[entry.rgb] = entry.name

    @classmethod
    def from_config(cls, items: Sequence[Mapping[str, Any]], field: str = "palette") -> Palette:
        """Build from TAO-style dicts (`seg_class`, `label_id`, `rgb`, optional `mapping_class`), checking each."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
            raise ConfigError(f"{field}: expected a non-empty list of {{seg_class, label_id, rgb}} entries")
        entries = []
        for index, item in enumerate(items):
            where = f"{field}[{index}]"
            if not isinstance(item, Mapping):
                raise ConfigError(f"{where}: expected a mapping with seg_class, label_id and rgb, got {item!r}")
            unknown = sorted(set(item) - _PALETTE_KEYS)
            if unknown:
                raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_PALETTE_KEYS))})")
            for key in ("seg_class", "label_id", "rgb"):
                if key not in item:
                    raise ConfigError(f"{where}.{key}: missing")
            name = item["seg_class"]
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{where}.seg_class: expected a class name, got {name!r}")
            label = item["label_id"]
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= IGNORE_INDEX:
                raise ConfigError(f"{where}.label_id: expected an integer 0..255, got {label!r}")
            rgb = item["rgb"]
            if (
                isinstance(rgb, (str, bytes))
                or not isinstance(rgb, Sequence)
                or len(rgb) != 3
                or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255 for v in rgb)
            ):
                raise ConfigError(f"{where}.rgb: expected 3 integers 0..255, got {rgb!r}")
            entries.append(PaletteEntry(name, label, (rgb[0], rgb[1], rgb[2])))
        return cls(tuple(entries))

    @property
    def label_ids(self) -> list[int]:
        return sorted({entry.label_id for entry in self.entries})

    def to_labels(self, rgb: np.ndarray, path: str | os.PathLike[str]) -> np.ndarray:
        """Map an RGB uint8 [H, W, 3] mask to label ids; a colour not in the palette is an error naming it."""
        codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        lookup = {(e.rgb[0] << 16) | (e.rgb[1] << 8) | e.rgb[2]: e.label_id for e in self.entries}
        # Map the few distinct colours, not every pixel.
        colours, inverse = np.unique(codes, return_inverse=True)
        ids = np.empty(len(colours), dtype=np.uint8)
        for index, code in enumerate(colours.tolist()):
            if code not in lookup:
                count = int((codes == code).sum())
                colour = [(code >> 16) & 255, (code >> 8) & 255, code & 255]
                raise DataError(f"{path}: colour {colour} ({count} pixels) is not in the palette")
            ids[index] = lookup[code]
        return ids[inverse.reshape(codes.shape)]


def load_mask_labels(
    path: str | os.PathLike[str], palette: Palette | None = None, *, binary_255: bool = False
) -> np.ndarray:
    """Decode a mask file to uint8 [H, W] label ids without checking them against a class count."""
    path = Path(path)
    if palette is not None and binary_255:
        raise ConfigError(BINARY_WITH_PALETTE)
    if not path.is_file():
        raise DataError(f"{path}: no such mask file")
    image = ImageOps.exif_transpose(decode_file(path, "mask"))  # the image is read upright, so its mask must be too
    if palette is not None:
        labels = palette.to_labels(np.asarray(image.convert("RGB")), path)
    else:
        labels = _single_channel(image, path)
    if binary_255:
        values = np.unique(labels)
        if not set(values.tolist()) <= {0, 255}:
            bad = [v for v in values.tolist() if v not in (0, 255)][:5]
            raise DataError(f"{path}: binary_255 masks hold only 0 and 255, found {bad}")
        labels = (labels == 255).astype(np.uint8)
    return labels


def mask_size_mismatch(
    mask: str | os.PathLike[str],
    mask_shape: tuple[int, ...],
    image: str | os.PathLike[str],
    image_shape: tuple[int, ...],
) -> str | None:
    """The one-line problem when a mask's [H, W] differs from its image's, else None.

    A mask that is the image turned on its side is most often drawn on a photo's stored pixels while the photo
    carries an EXIF rotation (images are read upright), so that case says so."""
    if tuple(mask_shape[:2]) == tuple(image_shape[:2]):
        return None
    problem = f"{mask}: mask is {mask_shape[1]}x{mask_shape[0]} but image {image} is {image_shape[1]}x{image_shape[0]}"
    if tuple(mask_shape[:2]) == tuple(image_shape[:2])[::-1]:
        problem += " (turned on its side: images are read upright by their EXIF orientation, so draw masks upright)"
    return problem


def check_labels(labels: np.ndarray, num_classes: int, path: str | os.PathLike[str]) -> np.ndarray:
    """Raise if any value is neither a class id (< num_classes) nor 255; return `labels` unchanged."""
    bad = bad_label_values(labels, num_classes)
    if bad:
        shown = ", ".join(str(v) for v in bad[:5]) + (", …" if len(bad) > 5 else "")
        raise DataError(f"{path}: label value {shown} outside 0..{num_classes - 1} (and 255 for ignore)")
    return labels


def bad_label_values(labels: np.ndarray, num_classes: int) -> list[int]:
    """The distinct values of `labels` that are neither class ids nor 255."""
    counts = np.bincount(labels.ravel(), minlength=256)
    return [v for v in np.flatnonzero(counts).tolist() if v >= num_classes and v != IGNORE_INDEX]


def read_mask(
    path: str | os.PathLike[str], palette: Palette | None = None, num_classes: int = 2, *, binary_255: bool = False
) -> np.ndarray:
    """Read a mask as uint8 [H, W] label ids, each < num_classes or 255 (ignore); anything else is a DataError."""
    return check_labels(load_mask_labels(path, palette, binary_255=binary_255), num_classes, path)


def _single_channel(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode in ("L", "P", "1"):
        return np.asarray(image, dtype=np.uint8).copy()  # P: the palette indices are the ids
    if image.mode == "LA":
        return np.asarray(image.getchannel("L"), dtype=np.uint8).copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DataError(f"{path}: 16/32-bit mask with values up to {values.max()}; label ids must fit in 0..255")
        return values.astype(np.uint8)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image)[..., :3]
        # A grey mask saved as RGB is common; a truly coloured one needs a palette.
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].copy()
        raise DataError(f"{path}: colour mask needs a palette (RGB colour → label id)")
    raise DataError(f"{path}: unsupported mask mode {image.mode}; use an 8-bit PNG of label ids")
