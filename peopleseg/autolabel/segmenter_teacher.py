"""Any model peopleseg can run as a teacher: our checkpoints and registry names (self-training, a big FAN-Hybrid
teaching a small student), our ONNX exports, and NVIDIA's deployable PeopleSemSegFormer ONNX."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from peopleseg.autolabel.teacher import StatelessTeacher, check_probabilities


class SegmenterTeacher(StatelessTeacher):
    """Person probabilities from `Segmenter.predict_proba`; keyword arguments go to `Segmenter` (backend, device,
    resize policy, normalisation for foreign ONNX files)."""

    def __init__(self, model: str | os.PathLike[str], *, kind: str = "peopleseg", **segmenter_kwargs: Any) -> None:
        from peopleseg.infer.segmenter import Segmenter

        self._segmenter = Segmenter(model, **segmenter_kwargs)
        # The manifest records how each label was made, and a resume is refused when it changes: so the name holds
        # what the labels depend on (the weights' content, not only their file name; the resize policy; the views).
        self.name = f"{kind}:{Path(str(model)).name}{_fingerprint(model)},{self._segmenter.resize}"
        if self._segmenter.uses_tta:
            self.name += "+views(" + ",".join(view.name for view in self._segmenter.views) + ")"

    def label_one(self, frame: np.ndarray) -> np.ndarray:
        return check_probabilities(self._segmenter.predict_proba(frame), frame, self.name)


def _fingerprint(model: str | os.PathLike[str]) -> str:
    """ "@" and the first 12 hex digits of the SHA-256 of the model's file (or folder's files); "" for a registry
    name, whose weights are random and have no content to tell apart."""
    from peopleseg.assets import default_weights_path

    path = default_weights_path() if str(model) == "default" else Path(model)
    if not path.exists():
        return ""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        with open(file, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return "@" + digest.hexdigest()[:12]
