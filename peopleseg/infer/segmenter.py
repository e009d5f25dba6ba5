"""Segmenter: image in, person mask out, at the image's own size.

Preprocessing (resize to the network input, normalise with the model's own statistics) and postprocessing (resize
the logits back, then argmax — never a resized label map) live here, so every caller gets the same answer.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from peopleseg.assets import FALLBACK_ARCH, default_weights_path
from peopleseg.data.image_io import read_image
from peopleseg.errors import DataError
from peopleseg.models.registry import build_model
from peopleseg.models.segformer import SegFormer
from peopleseg.models.weights import load_model

RANDOM_INIT_WARNING = (
    "no trained weights are bundled in this version: using a randomly initialised "
    f"{FALLBACK_ARCH}, so its masks are meaningless"
)


class Segmenter:
    """Load a model once, then `predict(image)` for a label mask (0 background, 1 person) at the image's size.

    `model` is a registry name (random weights), a weights path (see `load_model`), a ready `SegFormer`, or
    "default" for the bundled model.
    """

    def __init__(self, model: str | os.PathLike[str] | SegFormer = "default", device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.is_random_init = False
        if isinstance(model, SegFormer):
            network = model
        elif str(model) == "default":
            weights = default_weights_path()
            if weights is None:
                warnings.warn(RANDOM_INIT_WARNING, stacklevel=2)
                torch.manual_seed(0)
                network = build_model(FALLBACK_ARCH)
                self.is_random_init = True
            else:
                network = load_model(weights)
        else:
            network = load_model(model)
            self.is_random_init = str(model) == network.info.arch  # a bare name builds random weights
        self.model = network.to(self.device).eval()
        self.info = network.info
        scale = torch.tensor(self.info.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        shift = torch.tensor(self.info.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._mean, self._std = shift, scale

    @classmethod
    def from_pretrained(cls, device: str = "cpu") -> Segmenter:
        """The bundled default model."""
        return cls("default", device=device)

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 [H, W, 3] to a normalised float [1, 3, h, w] at the network input size."""
        _check_image(image)
        pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        height, width = self.info.input_size
        if pixels.shape[2:] != (height, width):
            pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return (pixels - self._mean) / self._std

    @torch.inference_mode()
    def predict_logits(self, image: np.ndarray) -> torch.Tensor:
        """Logits [C, H, W] resized to the image's own size."""
        logits = self.model(self.preprocess(image))
        return F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0]

    def predict_proba(self, image: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
        """Per-class probabilities float32 [C, H, W] at the image's size."""
        image = _as_array(image)
        return torch.softmax(self.predict_logits(image), dim=0).cpu().numpy()

    def predict(self, image: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
        """Label ids uint8 [H, W] at the image's size (0 background, 1 person for the default classes)."""
        image = _as_array(image)
        return self.predict_logits(image).argmax(dim=0).to(torch.uint8).cpu().numpy()


def _as_array(image: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
    if isinstance(image, (str, Path, os.PathLike)):
        return read_image(image)
    return image


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise DataError(f"expected an RGB uint8 numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"expected an RGB uint8 array of shape [H, W, 3], got {image.dtype} {list(image.shape)}")
    if min(image.shape[:2]) < 1:
        raise DataError(f"empty image of shape {list(image.shape)}")
