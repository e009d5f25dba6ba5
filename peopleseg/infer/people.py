"""People as separate results: the blobs of a person mask, and ids that stay stable across the frames of a video.

Semantic segmentation labels pixels, not individuals. Two people who touch or overlap in the image form one blob, and
one person cut in two by something in front of them forms two. `find_people` therefore counts blobs, which is the
number of people only when they stand apart; counting a crowd needs an instance model.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from peopleseg.errors import ConfigError, DataError


@dataclass
class Person:
    """One blob of person pixels. `id` is None until a `PeopleTracker` assigns one."""

    id: int | None
    area: int  # pixels
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1 and y1 exclusive)
    centroid: tuple[float, float]  # x, y: the mean pixel position
    score: float | None = None  # mean person probability inside the blob, when a probability map was given

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready values (lists for the tuples)."""
        return {
            "id": self.id,
            "area": self.area,
            "bbox": list(self.bbox),
            "centroid": [round(v, 2) for v in self.centroid],  # sub-pixel digits beyond this are noise
            "score": None if self.score is None else round(self.score, 4),
        }


def find_people(
    person_mask: np.ndarray,
    min_area: int | float = 0.0005,
    proba: np.ndarray | None = None,
    connectivity: int = 8,
) -> list[Person]:
    """The connected blobs of a person mask, largest first, each as a `Person` with `id=None`.

    `person_mask` is bool [H, W] or integer label ids [H, W] (person = 1). Blobs smaller than `min_area` are dropped as
    speckle: an int is pixels, a float below 1 a fraction of the image (the default 0.0005 is ~1000 px at 1080p, a
    32x32 patch), a float from 1 up is pixels. With `proba` (person probability [H, W]) each person gets a `score`, the
    mean probability over its pixels. `connectivity` is 8 (diagonal neighbours join) or 4.
    """
    mask = person_pixels(person_mask, "person_mask")
    height, width = mask.shape
    if not _is_real(min_area) or not 0 <= min_area < float("inf"):
        raise ConfigError(f"min_area must be pixels or a fraction of the image >= 0, got {min_area!r}")
    fraction = not isinstance(min_area, numbers.Integral) and min_area < 1
    threshold = min_area * height * width if fraction else min_area
    if isinstance(connectivity, bool) or connectivity not in (4, 8):
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if proba is not None:
        proba = _check_proba(proba, mask.shape)

    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        mask, connectivity=connectivity, ltype=cv2.CV_32S
    )
    people = []
    for label in range(1, count):  # 0 is the background
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < threshold:
            continue
        score = None
        if proba is not None:
            # Only the blob's bounding box is read, so scoring costs what the people cover, not the whole frame.
            inside = (labels[y : y + h, x : x + w] == label).view(np.uint8)
            score = float(cv2.mean(proba[y : y + h, x : x + w], mask=inside)[0])
        centroid = (float(centroids[label][0]), float(centroids[label][1]))
        people.append(Person(id=None, area=area, bbox=(x, y, x + w, y + h), centroid=centroid, score=score))
    people.sort(key=lambda person: (-person.area, person.bbox[1], person.bbox[0]))
    return people


def occupancy(person_mask: np.ndarray) -> float:
    """The fraction of the image's pixels that are person (bool mask, or label ids with person = 1)."""
    mask = person_pixels(person_mask, "person_mask")
    return cv2.countNonZero(mask) / mask.size


@dataclass
class _Track:
    bbox: tuple[int, int, int, int]
    missed: int = 0  # consecutive frames without a match


class PeopleTracker:
    """Stable ids for the people of a video, frame after frame.

    Each `update` matches this frame's people to the tracks by the IoU of their bounding boxes, greedily from the
    highest IoU down; a pair matches when its IoU is at least `iou_threshold`. A track keeps the last box it was seen
    with, so a person missing for up to `max_missed` consecutive frames gets their id back; on the next missed frame
    the id is retired and never reused. Unmatched people get new ids, counting up from 1. Tracking boxes frame to frame
    assumes people move less than about their own size per frame, as they do at video frame rates.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5) -> None:
        if not _is_real(iou_threshold) or not 0 < iou_threshold <= 1:
            raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
        if isinstance(max_missed, bool) or not isinstance(max_missed, numbers.Integral) or max_missed < 0:
            raise ConfigError(f"max_missed must be an integer number of frames >= 0, got {max_missed!r}")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.reset()

    def reset(self) -> None:
        """Forget every track and start the ids again from 1 (a new video)."""
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1

    @property
    def total_seen(self) -> int:
        """How many different people (ids) have appeared so far: the people count of a video."""
        return self._next_id - 1

    @property
    def active_ids(self) -> list[int]:
        """The ids still tracked: seen in the last `max_missed + 1` frames."""
        return list(self._tracks)

    def update(self, people: Sequence[Person]) -> list[Person]:
        """This frame's people, in the same order, as copies with `id` set."""
        for person in people:
            if not isinstance(person, Person):
                raise DataError(f"PeopleTracker.update expects Person objects, got {type(person).__name__}")
        ids = list(self._tracks)
        assigned: list[int | None] = [None] * len(people)
        if ids and people:
            iou = _iou(
                np.array([self._tracks[i].bbox for i in ids], dtype=np.float64),
                np.array([person.bbox for person in people], dtype=np.float64),
            )
            used: set[int] = set()
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                track, index = divmod(int(flat), len(people))
                if iou[track, index] < self.iou_threshold:
                    break
                if ids[track] in used or assigned[index] is not None:
                    continue
                used.add(ids[track])
                assigned[index] = ids[track]
        matched = {i for i in assigned if i is not None}
        for track_id in ids:
            if track_id not in matched:
                self._tracks[track_id].missed += 1
                if self._tracks[track_id].missed > self.max_missed:
                    del self._tracks[track_id]
        out = []
        for person, track_id in zip(people, assigned, strict=True):
            if track_id is None:
                track_id = self._next_id
                self._next_id += 1
            self._tracks[track_id] = _Track(bbox=person.bbox)
            out.append(replace(person, id=track_id))
        return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4] (x0, y0, x1, y1 exclusive): [N, M]."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def person_pixels(mask: np.ndarray, name: str) -> np.ndarray:
    """A bool or label mask as contiguous uint8 0/1 (person = True or label 1)."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or min(mask.shape) < 1:
        shape = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise DataError(f"{name} must be a mask of shape [H, W], got {shape}")
    if mask.dtype == bool:
        return np.ascontiguousarray(mask).view(np.uint8)
    if np.issubdtype(mask.dtype, np.integer):
        return (mask == 1).view(np.uint8)
    raise DataError(f"{name} must be bool or integer label ids (person = 1), got {mask.dtype}; threshold a map first")


def _check_proba(proba: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(proba, np.ndarray) or not np.issubdtype(proba.dtype, np.floating):
        raise DataError(f"proba must be a float person-probability map, got {getattr(proba, 'dtype', type(proba))}")
    if proba.shape != tuple(shape):
        raise DataError(f"proba shape {list(proba.shape)} does not match the mask's {list(shape)}")
    return np.ascontiguousarray(proba, dtype=np.float32)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
