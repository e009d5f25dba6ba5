"""Training and validation transforms: albumentations for the standard steps, two small custom steps for mmseg's.

Both return `{"image": float32 tensor [3, h, w] normalised with the model's mean/std (0–255 scale),
"mask": int64 tensor [h, w]}`. Masks are only ever resized nearest-neighbour, with OpenCV's centre-aligned
INTER_NEAREST_EXACT: plain INTER_NEAREST samples half a pixel off the bilinear image and shifts labels against it.

The train pipeline follows mmseg's (and TAO's) SegFormer recipe, in its order:
1. `RandomRescale`: short side → ratio × the crop's short side, ratio ~ U(scale_range), long side at most 4× that
   target; the aspect ratio is kept. For a 512 crop this is mmseg's `RandomResize(scale=(2048, 512), ratio_range)`.
2. `CatMaxRatioCrop`: a random crop of `crop_size` (smaller when the image is), re-drawn up to 10 times while one
   class covers ≥ `cat_max_ratio` of the crop's non-ignored pixels or only one class is present (mmseg's
   `RandomCrop(cat_max_ratio)`).
3. horizontal flip; 4. photometric distortion (mmseg's `PhotoMetricDistortion`, image only), then optionally
   `degrade`: blur, noise and JPEG artefacts; 5. normalise; 6. pad bottom/right to `crop_size` with 0 after
   normalisation (the mean colour, as mmseg pads) and mask `ignore_index`.

Copy-paste (`copy_paste`) happens before all of this, in the trainer, because it needs a second image.

Randomness: albumentations keeps its own generator, which DataLoader workers would all inherit as the same copy.
`SegmentationTransform` reseeds it from `torch.initial_seed()` once per process (and again whenever that seed
changes), so workers differ from each other and between epochs, and seeding torch (e.g. Lightning's
`seed_everything`) before building the transform makes runs repeatable.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from peopleseg.errors import ConfigError

MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT


@dataclass
class AugmentConfig:
    """Training augmentation. Sizes are (height, width)."""

    crop_size: tuple[int, int] = (512, 512)
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75  # 1.0 turns the check off
    hflip: float = 0.5  # probability
    photometric: bool = True
    degrade: float = 0.0  # probability of each of blur, sensor noise and JPEG artefacts
    copy_paste: float = 0.0  # probability of pasting a person from another training image (map-style data)
    ignore_index: int = 255

    def __post_init__(self) -> None:
        self.crop_size = _size(self.crop_size, "augment.crop_size")
        low, high = _pair(self.scale_range, "augment.scale_range")
        if not 0 < low <= high:
            raise ConfigError(f"augment.scale_range: expected 0 < low <= high, got {list(self.scale_range)}")
        self.scale_range = (float(low), float(high))
        if not 0 < self.cat_max_ratio <= 1:
            raise ConfigError(f"augment.cat_max_ratio: expected a value in (0, 1], got {self.cat_max_ratio}")
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"augment.hflip: expected a probability in [0, 1], got {self.hflip}")
        for name in ("degrade", "copy_paste"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"augment.{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.ignore_index <= 255:
            raise ConfigError(f"augment.ignore_index: expected 0..255, got {self.ignore_index}")


class RandomRescale(A.DualTransform):
    """Resize so the short side is ratio × `target_short` (long side capped at `long_factor` × that), one resize."""

    def __init__(self, target_short: int, ratio_range: tuple[float, float], long_factor: float = 4.0, p: float = 1.0):
        super().__init__(p=p)
        self.target_short = target_short
        self.ratio_range = ratio_range
        self.long_factor = long_factor

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        short = self.py_random.uniform(*self.ratio_range) * self.target_short
        scale = min(short / min(height, width), self.long_factor * short / max(height, width))
        return {"size": (max(1, round(height * scale)), max(1, round(width * scale)))}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return _resize(img, size, cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return _resize(mask, size, MASK_INTERPOLATION)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("target_short", "ratio_range", "long_factor")


class CatMaxRatioCrop(A.DualTransform):
    """mmseg's RandomCrop: re-draw the crop (up to `tries` times) while one class covers ≥ `cat_max_ratio` of its
    non-ignored pixels, or only one class is present. The crop shrinks to the image when the image is smaller."""

    def __init__(
        self,
        height: int,
        width: int,
        cat_max_ratio: float = 0.75,
        ignore_index: int = 255,
        tries: int = 10,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.height, self.width = height, width
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.tries = tries

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        box = self._draw(params["shape"][:2])
        mask = data.get("mask")
        if mask is not None and self.cat_max_ratio < 1:
            for _ in range(self.tries):
                top, left, bottom, right = box
                counts = np.bincount(mask[top:bottom, left:right].ravel(), minlength=256)
                counts[self.ignore_index] = 0
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._draw(params["shape"][:2])
        return {"box": box}

    def _draw(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        height, width = min(self.height, shape[0]), min(self.width, shape[1])
        top = self.py_random.randint(0, shape[0] - height)
        left = self.py_random.randint(0, shape[1] - width)
        return top, left, top + height, left + width

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return np.ascontiguousarray(img[box[0] : box[2], box[1] : box[3]])

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return np.ascontiguousarray(mask[box[0] : box[2], box[1] : box[3]])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index", "tries")


class SegmentationTransform:
    """`transform(image=uint8 HWC RGB, mask=uint8 HW)` → `{"image": float32 [3, h, w], "mask": int64 [h, w]}`."""

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose
        self._seeded_for: tuple[int, int] | None = None

    def __call__(self, *, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        self._reseed()
        out = self.compose(image=image, mask=mask)
        pixels = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32))
        return {"image": pixels, "mask": torch.from_numpy(out["mask"].astype(np.int64))}

    def seed_sample(self, key: int | tuple[int, ...]) -> None:
        """Make the next call's randomness a function of `key` alone (the trainer passes (seed, epoch, index)), so
        a resumed run, or any worker, augments a given draw exactly as the uninterrupted run did."""
        state = int(np.random.SeedSequence(key).generate_state(1)[0])
        self.compose.set_random_state(np.random.default_rng(state), random.Random(state))
        self._seeded_for = (os.getpid(), torch.initial_seed())

    def _reseed(self) -> None:
        # Once per process (and again if torch is re-seeded): DataLoader workers give each a distinct initial seed.
        key = (os.getpid(), torch.initial_seed())
        if key != self._seeded_for:
            state = int(np.random.SeedSequence(key[1]).generate_state(1)[0])
            # One shared generator for all steps: albumentations' set_random_seed would give each step the same stream.
            self.compose.set_random_state(np.random.default_rng(state), random.Random(state))
            self._seeded_for = key


def photometric_distortion() -> A.BaseCompose:
    """mmseg's PhotoMetricDistortion: brightness ±32, contrast ×[0.5, 1.5], saturation ×[0.5, 1.5], hue ±18 (of
    OpenCV's 180, i.e. ±36°), each with probability 0.5, contrast first or last at random. Image only."""

    def contrast() -> A.BasicTransform:
        return A.RandomBrightnessContrast(brightness_limit=(0, 0), contrast_limit=(-0.5, 0.5), p=0.5)

    def colour() -> list[A.BasicTransform]:
        return [
            A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(0.5, 1.5), hue=(0, 0), p=0.5),
            A.ColorJitter(brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(-0.1, 0.1), p=0.5),
        ]

    return A.Sequential(
        [
            A.RandomBrightnessContrast(brightness_limit=(-32 / 255, 32 / 255), contrast_limit=(0, 0), p=0.5),
            A.OneOf([A.Sequential([contrast(), *colour()]), A.Sequential([*colour(), contrast()])], p=1.0),
        ]
    )


def degradations(probability: float) -> list[A.BasicTransform | A.BaseCompose]:
    """Camera-like damage, each with `probability`: blur (defocus or motion), sensor noise, JPEG artefacts."""
    return [
        A.OneOf([A.GaussianBlur(blur_limit=(3, 7)), A.MotionBlur(blur_limit=(3, 9))], p=probability),
        A.GaussNoise(std_range=(0.02, 0.08), p=probability),
        A.ImageCompression(quality_range=(25, 90), p=probability),
    ]


def train_transform(config: AugmentConfig, mean: Sequence[float], std: Sequence[float]) -> SegmentationTransform:
    """The training pipeline described in the module docstring."""
    crop_h, crop_w = config.crop_size
    steps: list[A.BasicTransform | A.BaseCompose] = [
        RandomRescale(min(crop_h, crop_w), config.scale_range),
        CatMaxRatioCrop(crop_h, crop_w, config.cat_max_ratio, config.ignore_index),
        A.HorizontalFlip(p=config.hflip),
    ]
    if config.photometric:
        steps.append(photometric_distortion())
    if config.degrade:
        steps += degradations(config.degrade)
    steps += [_normalize(mean, std), _pad(crop_h, crop_w, "top_left", config.ignore_index)]
    return SegmentationTransform(A.Compose(steps))


def eval_transform(
    input_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    policy: str = "resize",
    ignore_index: int = 255,
) -> SegmentationTransform:
    """Validation during training: the image goes to the network input size, bilinear, and so does the mask
    (nearest), so batches stack. The evaluator computes final metrics at each image's own resolution separately.

    `policy`: "resize" stretches (TAO's default); "letterbox" keeps the aspect ratio and pads centred, like the
    Segmenter, with the mean colour and mask `ignore_index`.
    """
    height, width = _size(input_size, "input_size")
    if policy == "resize":
        steps = [A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=MASK_INTERPOLATION)]
        steps.append(_normalize(mean, std))
    elif policy == "letterbox":
        fit = A.LongestMaxSize(
            max_size_hw=(height, width), interpolation=cv2.INTER_LINEAR, mask_interpolation=MASK_INTERPOLATION
        )
        steps = [fit, _normalize(mean, std), _pad(height, width, "center", ignore_index)]
    else:
        raise ConfigError(f"policy: '{policy}' cannot batch; eval_transform takes resize or letterbox")
    return SegmentationTransform(A.Compose(steps))


def _normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(f"mean/std: expected 3 values each (std > 0) on the 0–255 scale, got {mean} / {std}")
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=1.0)  # 0–255 scale, as the model's info


def _pad(height: int, width: int, position: str, ignore_index: int) -> A.PadIfNeeded:
    return A.PadIfNeeded(
        min_height=height,
        min_width=width,
        position=position,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=ignore_index,
    )


def _resize(array: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    if array.shape[:2] == size:
        return array
    return cv2.resize(array, (size[1], size[0]), interpolation=interpolation)


def _pair(value: Any, field: str) -> tuple[Any, Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"{field}: expected two values, got {value!r}")
    return value[0], value[1]


def _size(value: int | Sequence[int], field: str) -> tuple[int, int]:
    height, width = (value, value) if isinstance(value, int) else _pair(value, field)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (height, width)):
        raise ConfigError(f"{field}: expected positive integers (height, width), got {value!r}")
    return height, width
