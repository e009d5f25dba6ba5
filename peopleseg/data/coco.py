"""COCO instance annotations (`instances_*.json`) turned into person/background semantic masks.

Polygons and RLE of the chosen categories are rasterised with pycocotools (the same steps as `COCO.annToMask`) and
merged into one label map: 1 where a person is, 0 elsewhere. `iscrowd=1` regions ("a crowd of people somewhere in
here") are outlined too loosely to call any pixel person or not, so they become 255 (ignore); a person annotated
on their own still wins over a crowd region that covers them.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from peopleseg.data.folder import apply_transform
from peopleseg.data.image_io import read_image
from peopleseg.data.masks import IGNORE_INDEX
from peopleseg.errors import DataError

Transform = Callable[..., Mapping[str, Any]]


@dataclass
class CocoImage:
    """One image entry and the annotations of the chosen categories on it."""

    path: Path
    width: int
    height: int
    annotations: list[dict[str, Any]] = field(default_factory=list)


class CocoPersonDataset(Dataset):
    """Samples `{"image", "mask", "path", "subset": ""}` from a COCO JSON and its image folder.

    `categories`: category names rasterised as label 1 (default person). Images with none of them get all-0 masks
    (they teach the model what is not a person) unless `only_with_people=True`, which keeps only images that hold
    at least one annotation of those categories, crowd or not.
    """

    def __init__(
        self,
        annotations: str | os.PathLike[str],
        images: str | os.PathLike[str],
        *,
        categories: Sequence[str] = ("person",),
        only_with_people: bool = False,
        transform: Transform | None = None,
    ) -> None:
        self.annotations = Path(annotations)
        self.images = Path(images)
        self.transform = transform
        self.class_count = 2
        self.subsets: list[str] = []
        self.entries = _load_entries(self.annotations, self.images, list(categories), only_with_people)
        missing = [entry for entry in self.entries if not entry.path.is_file()]
        if missing:
            raise DataError(f"{missing[0].path}: no such image ({len(missing)} of {len(self.entries)} images missing)")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return apply_transform(self.transform, self.load(index))

    def load(self, index: int) -> dict[str, Any]:
        """The sample before any transform."""
        entry = self.entries[index]
        image = read_image(entry.path)
        if image.shape[:2] != (entry.height, entry.width):
            raise DataError(
                f"{entry.path}: image is {image.shape[1]}x{image.shape[0]} but {self.annotations.name} "
                f"says {entry.width}x{entry.height}"
            )
        mask = self.mask(index)
        return {"image": image, "mask": mask, "path": str(entry.path), "subset": ""}

    def mask(self, index: int) -> np.ndarray:
        """The uint8 [H, W] label map of image `index`: 0 background, 1 person, 255 crowd (ignore)."""
        entry = self.entries[index]
        mask = np.zeros((entry.height, entry.width), dtype=np.uint8)
        crowd = [a for a in entry.annotations if a.get("iscrowd", 0)]
        single = [a for a in entry.annotations if not a.get("iscrowd", 0)]
        for annotation in crowd:
            mask[self._rasterise(annotation, entry)] = IGNORE_INDEX
        for annotation in single:
            mask[self._rasterise(annotation, entry)] = 1
        return mask

    def _rasterise(self, annotation: Mapping[str, Any], entry: CocoImage) -> np.ndarray:
        segmentation = annotation.get("segmentation")
        try:
            if isinstance(segmentation, list):  # polygons: a list of flat [x0, y0, x1, y1, …] lists
                polygons = [p for p in segmentation if len(p) >= 6]
                if not polygons:
                    return np.zeros((entry.height, entry.width), dtype=bool)
                rle = mask_utils.merge(mask_utils.frPyObjects(polygons, entry.height, entry.width))
            elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
                rle = mask_utils.frPyObjects(segmentation, entry.height, entry.width)  # uncompressed RLE
            elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
                rle = dict(segmentation)
            else:
                raise ValueError("expected polygons or RLE")
            with warnings.catch_warnings():  # pycocotools 2.0.x's Cython trips numpy 2's copy=False deprecation
                warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
                decoded = mask_utils.decode(rle)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            where = f"{self.annotations}: annotation {annotation.get('id')}"
            raise DataError(f"{where} has a bad segmentation ({exc})") from None
        if decoded.shape != (entry.height, entry.width):
            raise DataError(
                f"{self.annotations}: annotation {annotation.get('id')} is {decoded.shape[1]}x{decoded.shape[0]} "
                f"on a {entry.width}x{entry.height} image"
            )
        return decoded.astype(bool)


def _load_entries(path: Path, images: Path, categories: list[str], only_with_people: bool) -> list[CocoImage]:
    if not path.is_file():
        raise DataError(f"{path}: no such annotation file")
    if not images.is_dir():
        raise DataError(f"{images}: no such image folder")
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or malformed '{key}' list")
    try:
        names = {c["name"]: c["id"] for c in data["categories"]}
        unknown = [name for name in categories if name not in names]
        if unknown:
            raise DataError(f"{path}: no category named '{unknown[0]}' (found: {', '.join(sorted(names)) or 'none'})")
        wanted = {names[name] for name in categories}
        by_id: dict[Any, CocoImage] = {}
        order = []
        for image in data["images"]:
            entry = CocoImage(images / image["file_name"], int(image["width"]), int(image["height"]))
            by_id[image["id"]] = entry
            order.append(entry)
        for annotation in data["annotations"]:
            if annotation["category_id"] not in wanted:
                continue
            if annotation["image_id"] not in by_id:
                where = f"{path}: annotation {annotation.get('id')}"
                raise DataError(f"{where} refers to unknown image {annotation['image_id']}")
            by_id[annotation["image_id"]].annotations.append(annotation)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed COCO entry (missing or bad {exc})") from None
    if only_with_people:
        order = [entry for entry in order if entry.annotations]
    if not order:
        raise DataError(f"{path}: no images" + (" with people" if only_with_people else ""))
    return order
