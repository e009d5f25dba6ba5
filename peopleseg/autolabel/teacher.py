"""The teacher interface: anything that turns RGB frames into person probability maps.

A teacher sees frames in order. `reset()` marks the start of a new, unrelated sequence (a new still or a new video),
so teachers with recurrent state (RVM) carry it across a video's frames and drop it between stills.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Teacher(Protocol):
    """Labels frames with person probabilities.

    `name` identifies the teacher in manifests. `label(frames)` takes RGB uint8 [H, W, 3] frames of one sequence, in
    order, and returns float32 [H, W] person probabilities in 0..1 at each frame's own size.
    """

    name: str

    def label(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class StatelessTeacher:
    """Base for teachers without recurrent state: `reset` and `close` do nothing, `label` maps `label_one`."""

    name = "teacher"

    def label(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.label_one(frame) for frame in frames]

    def label_one(self, frame: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> StatelessTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_probabilities(probs: np.ndarray, frame: np.ndarray, teacher: str) -> np.ndarray:
    """float32 [H, W] in 0..1 matching `frame`'s size, or a ModelError naming the teacher."""
    from peopleseg.errors import ModelError

    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 3 and probs.shape[-1] == 1:
        probs = probs[..., 0]
    if probs.shape != frame.shape[:2]:
        raise ModelError(f"teacher {teacher}: returned a {probs.shape} map for a {frame.shape[:2]} frame")
    return np.clip(probs, 0.0, 1.0)
