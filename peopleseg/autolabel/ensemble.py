"""Ensembles and test-time augmentation: average person probabilities so the labels beat any single teacher.

Each augmentation gets its own teacher instance, built by a factory, so a recurrent teacher (RVM) keeps one
consistent state per view: flipped frames never feed the unflipped state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from peopleseg.autolabel.teacher import Teacher, check_probabilities
from peopleseg.errors import ConfigError

TeacherFactory = Callable[[], Teacher]


class EnsembleTeacher:
    """Weighted mean of several teachers' probabilities (weights are normalised)."""

    def __init__(self, teachers: Sequence[Teacher], weights: Sequence[float] | None = None) -> None:
        if not teachers:
            raise ConfigError("ensemble: needs at least one teacher")
        weights = [1.0] * len(teachers) if weights is None else list(weights)
        if len(weights) != len(teachers):
            raise ConfigError(f"ensemble: {len(weights)} weights for {len(teachers)} teachers")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"ensemble: weights must be >= 0 with a positive sum, got {weights}")
        total = sum(weights)
        self.teachers = list(teachers)
        self.weights = [w / total for w in weights]
        parts = [f"{t.name}*{w:.2g}" for t, w in zip(self.teachers, self.weights, strict=True)]
        self.name = teachers[0].name if len(teachers) == 1 else "ensemble(" + ",".join(parts) + ")"

    def label(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        total = [np.zeros(f.shape[:2], np.float32) for f in frames]
        for teacher, weight in zip(self.teachers, self.weights, strict=True):
            if weight == 0:
                continue
            for acc, probs, frame in zip(total, teacher.label(frames), frames, strict=True):
                acc += weight * check_probabilities(probs, frame, teacher.name)
        return total

    def reset(self) -> None:
        for teacher in self.teachers:
            teacher.reset()

    def close(self) -> None:
        for teacher in self.teachers:
            teacher.close()


def parse_tta(text: str) -> list[tuple[bool, float]]:
    """ "flip,0.75,1.25" → views (flip?, scale): the identity view, a flipped one, and rescaled ones."""
    views = [(False, 1.0)]
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item == "flip":
            views.append((True, 1.0))
            continue
        try:
            scale = float(item)
        except ValueError:
            raise ConfigError(f"tta: expected 'flip' or a scale like 0.75, got {item!r}") from None
        if not 0.1 <= scale <= 4.0:
            raise ConfigError(f"tta: scale {scale} is outside 0.1..4")
        if scale != 1.0:
            views.append((False, scale))
    return list(dict.fromkeys(views))


class TTATeacher:
    """Mean over views (flip, scales) of one teacher kind; `factory` makes one instance per view."""

    def __init__(self, factory: TeacherFactory, views: Sequence[tuple[bool, float]]) -> None:
        if not views:
            raise ConfigError("tta: no views")
        self.views = list(views)
        self.teachers = [factory() for _ in self.views]
        extra = [("flip" if flip else "") + (f"x{scale:g}" if scale != 1.0 else "") for flip, scale in self.views]
        self.name = self.teachers[0].name + ("+tta(" + ",".join(e for e in extra if e) + ")" if len(views) > 1 else "")

    def label(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        total = [np.zeros(f.shape[:2], np.float32) for f in frames]
        for teacher, (flip, scale) in zip(self.teachers, self.views, strict=True):
            views = [_view(frame, flip, scale) for frame in frames]
            for acc, probs, frame in zip(total, teacher.label(views), frames, strict=True):
                acc += _unview(np.asarray(probs, np.float32), frame.shape[:2], flip)
        return [acc / len(self.views) for acc in total]

    def reset(self) -> None:
        for teacher in self.teachers:
            teacher.reset()

    def close(self) -> None:
        for teacher in self.teachers:
            teacher.close()


def _view(frame: np.ndarray, flip: bool, scale: float) -> np.ndarray:
    if scale != 1.0:
        height, width = frame.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return np.ascontiguousarray(frame[:, ::-1]) if flip else frame


def _unview(probs: np.ndarray, shape: tuple[int, ...], flip: bool) -> np.ndarray:
    if flip:
        probs = probs[:, ::-1]
    if probs.shape != shape:
        probs = cv2.resize(np.ascontiguousarray(probs), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return probs
