"""MediaPipe selfie segmentation as a teacher: fast (a few ms per image) and Apache-2.0, best at close range.

It needs `pip install mediapipe==0.10.21` (the last release whose wheel still ships the selfie models; it wants
numpy<2 and protobuf<5, so keep it in its own environment: see the README's auto-label section).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peopleseg.autolabel.teacher import StatelessTeacher, check_probabilities
from peopleseg.errors import ModelError

MODELS = {"general": 0, "landscape": 1}
INSTALL_HINT = "install it with `pip install mediapipe==0.10.21` (newer releases ship no selfie model)"


def _solutions() -> Any:
    try:
        import mediapipe
    except ImportError:
        raise ModelError(f"MediaPipe teacher: mediapipe is not installed; {INSTALL_HINT}") from None
    solutions = getattr(mediapipe, "solutions", None)
    if solutions is None or not hasattr(solutions, "selfie_segmentation"):
        version = getattr(mediapipe, "__version__", "?")
        raise ModelError(f"MediaPipe teacher: mediapipe {version} has no selfie segmentation; {INSTALL_HINT}")
    return solutions


class MediaPipeTeacher(StatelessTeacher):
    """`model`: "landscape" (144x256, the better of the two here) or "general" (256x256)."""

    def __init__(self, model: str = "landscape") -> None:
        if model not in MODELS:
            raise ModelError(f"MediaPipe teacher: model must be one of {sorted(MODELS)}, got {model!r}")
        solutions = _solutions()
        self._segmenter = solutions.selfie_segmentation.SelfieSegmentation(model_selection=MODELS[model])
        self.name = f"mediapipe-{model}"

    def label_one(self, frame: np.ndarray) -> np.ndarray:
        result = self._segmenter.process(np.ascontiguousarray(frame, dtype=np.uint8))
        return check_probabilities(result.segmentation_mask, frame, self.name)

    def close(self) -> None:
        segmenter, self._segmenter = self._segmenter, None
        if segmenter is not None:
            segmenter.close()
