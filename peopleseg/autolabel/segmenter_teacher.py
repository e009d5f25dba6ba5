"""Any model peopleseg can run as a teacher: our checkpoints and registry names (self-training, a big FAN-Hybrid
teaching a small student), our ONNX exports, and NVIDIA's deployable PeopleSemSegFormer ONNX."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from peopleseg.autolabel.teacher import StatelessTeacher, check_probabilities


class SegmenterTeacher(StatelessTeacher):
    """Person probabilities from `Segmenter.predict_proba`; keyword arguments go to `Segmenter` (backend, device,
    resize policy, normalisation for foreign ONNX files)."""

    def __init__(self, model: str | os.PathLike[str], **segmenter_kwargs: Any) -> None:
        from peopleseg.infer.segmenter import Segmenter

        self._segmenter = Segmenter(model, **segmenter_kwargs)
        self.name = f"peopleseg:{Path(str(model)).name}"
        if self._segmenter.uses_tta:  # the manifest records how each label was made
            self.name += "+views(" + ",".join(view.name for view in self._segmenter.views) + ")"

    def label_one(self, frame: np.ndarray) -> np.ndarray:
        return check_probabilities(self._segmenter.predict_proba(frame), frame, self.name)
