"""From person probabilities to training labels: confident pixels get a class, uncertain ones get ignore (255)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peopleseg.data.masks import IGNORE_INDEX
from peopleseg.errors import ConfigError


@dataclass(frozen=True)
class LabelPolicy:
    """p <= `background_below` → background (0); p >= `person_above` → person (1); in between → 255 (ignored
    by the loss). Equal thresholds give hard labels everywhere (a tie is person)."""

    background_below: float = 0.3
    person_above: float = 0.7

    def __post_init__(self) -> None:
        if not 0.0 <= self.background_below <= self.person_above <= 1.0:
            raise ConfigError(
                "label thresholds: need 0 <= background_below <= person_above <= 1, got "
                f"{self.background_below} and {self.person_above}"
            )

    def to_label(self, probs: np.ndarray) -> np.ndarray:
        labels = np.full(probs.shape, IGNORE_INDEX, dtype=np.uint8)
        labels[probs <= self.background_below] = 0
        labels[probs >= self.person_above] = 1  # with equal thresholds, a tie goes to person
        return labels


def with_prior(labels: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Merge a teacher label with a mask the dataset already had: keep pixels where they agree, ignore the rest.

    Pixels the teacher was unsure of take the prior's class: the prior is evidence too.
    """
    if prior.shape != labels.shape:
        raise ConfigError(f"prior mask is {prior.shape}, the teacher label {labels.shape}")
    merged = labels.copy()
    unsure = labels == IGNORE_INDEX
    merged[unsure] = prior[unsure]
    merged[(~unsure) & (prior != IGNORE_INDEX) & (prior != labels)] = IGNORE_INDEX
    return merged


@dataclass(frozen=True)
class LabelStats:
    """`confidence`: the fraction of pixels that got a class (not ignored); `person_fraction`: of all pixels."""

    confidence: float
    person_fraction: float

    @classmethod
    def of(cls, labels: np.ndarray) -> LabelStats:
        total = max(1, labels.size)
        confident = int((labels != IGNORE_INDEX).sum())
        return cls(confidence=confident / total, person_fraction=int((labels == 1).sum()) / total)


def agreement_iou(first: np.ndarray, second: np.ndarray) -> float:
    """Person IoU of two label maps over pixels neither ignores (1.0 when neither has a person)."""
    valid = (first != IGNORE_INDEX) & (second != IGNORE_INDEX)
    a = (first == 1) & valid
    b = (second == 1) & valid
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union
