"""Segmenter: images in, person masks out, at each image's own size.

Preprocessing (to RGB, resize or letterbox or tile to the network input, normalise with the model's own statistics),
the backend (torch, onnxruntime or TensorRT), and postprocessing (scores resized back, then argmax — never a resized
label map, except for backends that only give labels) all live here, so every caller gets the same answer.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from peopleseg.assets import FALLBACK_ARCH, default_weights_path
from peopleseg.errors import ConfigError
from peopleseg.infer.backends import Backend, make_backend
from peopleseg.infer.image_input import DEFAULT_MAX_PIXELS, ColorOrder, ImageLike, to_rgb
from peopleseg.infer.resolution import Plan, check_policy, letterbox_box, merge, prepare
from peopleseg.infer.tta import View, parse_views, scores_over_views
from peopleseg.models.info import ModelInfo
from peopleseg.models.registry import REGISTRY, build_model
from peopleseg.models.segformer import SegFormer
from peopleseg.resize_policy import CHOICES

RANDOM_INIT_WARNING = (
    "no trained weights are bundled in this version: using a randomly initialised "
    f"{FALLBACK_ARCH}, so its masks are meaningless"
)


@dataclass
class SegmentationResult:
    """One image's answer. `mask` holds label ids; `person` is the person probability (or 0/1 for label-only
    backends); `people` lists connected person regions (with stable ids when they come from `stream`)."""

    mask: np.ndarray
    person: np.ndarray
    people: list[Any] = field(default_factory=list)
    person_index: int = 1

    @property
    def person_mask(self) -> np.ndarray:
        return self.mask == self.person_index

    @property
    def person_fraction(self) -> float:
        return float(np.mean(self.person_mask))

    def to_dict(self) -> dict[str, Any]:
        height, width = self.mask.shape
        return {
            "width": width,
            "height": height,
            "person_fraction": round(self.person_fraction, 6),
            "people_count": len(self.people),
            "people": [p.to_dict() for p in self.people],
        }


class Segmenter:
    """Load a model once, then segment images, batches and video frames.

    `model`: "default" (the bundled model), a registry name (random weights), a weights path (.safetensors, HF, TAO,
    …), an exported `.onnx`, a TensorRT `.engine`, or a ready `SegFormer`.
    `resize`: "auto" (default: the model's own, `info.resize`), "resize" (stretch, like TAO), "letterbox" (keep the
    aspect ratio and pad) or "sliding" (windows at the image's own scale, for large images).
    `min_person_area`: connected regions smaller than this (pixels, or a fraction of the image if < 1) are not people.
    `tta`: test-time augmentation, e.g. "flip" or "flip,1.5,sliding" (`infer/tta.py`): the person probability is
    averaged over those views, for a little more accuracy at several times the compute. Two-class models only.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | SegFormer = "default",
        *,
        backend: str | Backend = "auto",
        device: str = "cpu",
        resize: str = "auto",
        threads: int | None = None,
        precision: str = "auto",
        compile: bool = False,
        info: ModelInfo | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_person_area: float = 0.0005,
        batch_size: int = 8,
        tta: str | Sequence[View] = "",
    ) -> None:
        if resize not in CHOICES:  # before the model loads: a typo costs nothing
            raise ConfigError(f"unknown resolution policy '{resize}'; choose from {', '.join(CHOICES)}")
        if not _is_real(min_person_area) or not 0 <= min_person_area < float("inf"):
            raise ConfigError(f"min_person_area must be pixels or an image fraction >= 0, got {min_person_area!r}")
        if not isinstance(max_pixels, (int, np.integer)) or isinstance(max_pixels, bool) or max_pixels < 1:
            raise ConfigError(f"max_pixels must be a whole number of pixels >= 1, got {max_pixels!r}")
        self.views = parse_views(tta)
        self.uses_tta = self.views != [View()]
        self.is_random_init = False
        if not isinstance(model, SegFormer) and str(model) == "default":
            weights = default_weights_path()
            if weights is None:
                warnings.warn(RANDOM_INIT_WARNING, stacklevel=2)
                torch.manual_seed(0)
                model = build_model(FALLBACK_ARCH)
                self.is_random_init = True
            else:
                model = weights
        elif not isinstance(model, SegFormer) and str(model) in REGISTRY and not os.path.exists(str(model)):
            self.is_random_init = True  # a bare name builds random weights
        self.backend: Backend = make_backend(
            model, backend=backend, device=device, threads=threads, precision=precision, compile=compile, info=info
        )
        self.info = self.backend.info
        self.resize = self.info.resize if resize == "auto" else resize
        check_policy(self.resize)
        self.max_pixels = max_pixels
        self.min_person_area = min_person_area
        self.batch_size = max(1, batch_size)
        self.person_index = self.info.classes.index("person") if "person" in self.info.classes else 1
        if self.uses_tta and self.info.num_classes != 2:
            raise ConfigError(f"tta averages the person probability: it needs a two-class model, not {self.classes}")
        in_graph = getattr(self.backend, "normalized_in_graph", False)  # the graph normalises 0-255 RGB itself
        self._mean = torch.tensor((0.0,) * 3 if in_graph else self.info.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor((1.0,) * 3 if in_graph else self.info.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._pad = torch.tensor(self.info.mean, dtype=torch.float32).view(3, 1, 1)  # added pixels, on 0-255

    @classmethod
    def from_pretrained(cls, **kwargs: Any) -> Segmenter:
        """The bundled default model; keyword arguments as for `Segmenter(...)`."""
        return cls("default", **kwargs)

    @property
    def model(self) -> SegFormer | None:
        """The PyTorch model, for the torch backend."""
        return getattr(self.backend, "model", None)

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    # --- the public calls ---------------------------------------------------------------------------------------

    def predict(self, image: ImageLike, color: ColorOrder = "rgb") -> np.ndarray:
        """Label ids uint8 [H, W] at the image's size (0 background, 1 person for the default classes)."""
        return self.segment(image, color=color, people=False).mask

    def predict_proba(self, image: ImageLike, color: ColorOrder = "rgb") -> np.ndarray:
        """Person probability float32 [H, W] at the image's size."""
        return self.segment(image, color=color, people=False).person

    def predict_batch(self, images: Sequence[ImageLike], color: ColorOrder = "rgb") -> list[np.ndarray]:
        """Label masks for several images (of any sizes), run through the network in batches."""
        return [r.mask for r in self.segment_batch(images, color=color, people=False)]

    def segment(self, image: ImageLike, color: ColorOrder = "rgb", people: bool = True) -> SegmentationResult:
        """Mask, person probability and (with `people`) the connected person regions of one image."""
        return self.segment_batch([image], color=color, people=people)[0]

    def segment_batch(
        self, images: Sequence[ImageLike], color: ColorOrder = "rgb", people: bool = True
    ) -> list[SegmentationResult]:
        arrays = [to_rgb(image, color, self.max_pixels) for image in images]
        scores = self._scores(arrays)
        return [self._result(s, people) for s in scores]

    def stream(
        self,
        frames: Iterable[ImageLike],
        color: ColorOrder = "rgb",
        smoothing: bool = True,
        alpha: float = 0.5,
        track: bool = True,
    ) -> Iterator[SegmentationResult]:
        """Results for an iterator of video frames, in order, with temporal smoothing (an EMA of probabilities
        with hysteresis) against flicker, and people ids kept stable across frames by an IoU tracker."""
        from peopleseg.infer.people import PeopleTracker
        from peopleseg.infer.smoothing import TemporalSmoother

        smoother = TemporalSmoother(alpha=alpha) if smoothing else None
        tracker = PeopleTracker() if track else None
        for frame in frames:
            array = to_rgb(frame, color, self.max_pixels)
            result = self.segment(array, people=False)
            yield self.follow(result, smoother, tracker, image=array)

    def follow(
        self,
        result: SegmentationResult,
        smoother: Any = None,
        tracker: Any = None,
        people: bool = True,
        image: np.ndarray | None = None,
    ) -> SegmentationResult:
        """Apply a video's smoother and tracker to one frame's result (what `stream` does per frame). Without
        `people` the connected regions are not looked for (`result.people` stays empty): renders do not need them.
        `image` (the frame, RGB uint8) lets the smoother average only where the picture stands still."""
        from peopleseg.infer.people import find_people

        if smoother is not None:
            smoothed, stable = smoother.update(result.person, image)
            result.person = smoothed
            # Only the person/background decision is smoothed; other classes keep their per-frame labels. With two
            # classes the mask is the stable map itself (boolean-index assignment cost 4 ms a 768x576 frame).
            if self.info.num_classes == 2:
                result.mask = (stable if self.person_index == 1 else ~stable).view(np.uint8).copy()
            else:
                person = np.uint8(self.person_index)
                unstable = np.where(result.mask == person, np.uint8(0), result.mask)
                result.mask = np.where(stable, person, unstable)
        if not people:
            return result
        found = find_people(result.person_mask, self.min_person_area, proba=result.person)
        result.people = tracker.update(found) if tracker is not None else found
        return result

    # --- internals ----------------------------------------------------------------------------------------------

    def _scores(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per image: (label ids uint8 [H, W], person probability float32 [H, W]) at the image's own size."""
        with torch_threads_beside(self.backend):
            if not self.uses_tta:
                return self._scores_of(arrays, self.resize)
            return scores_over_views(
                self._scores_of,
                arrays,
                self.views,
                self.resize,
                self.info.input_size,
                self.person_index,
                self.max_pixels,
            )

    def _scores_of(self, arrays: list[np.ndarray], policy: str) -> list[tuple[np.ndarray, np.ndarray]]:
        batch, counts, plans = self._inputs(arrays, policy)
        size = self.batch_size
        parts = [self.backend(batch[i : i + size]) for i in range(0, len(batch), size)]
        outputs = (parts[0] if len(parts) == 1 else torch.cat(parts)).cpu()
        results, start = [], 0
        for count, plan in zip(counts, plans, strict=True):
            out = outputs[start : start + count]
            start += count
            mask, person = self._postprocess(out, plan)
            results.append((mask.to(torch.uint8).numpy(), person.numpy().astype(np.float32, copy=False)))
        return results

    def _inputs(self, arrays: list[np.ndarray], policy: str) -> tuple[torch.Tensor, list[int], list[Any]]:
        """The normalised network inputs of every image in one batch, how many each image has, and their plans."""
        height, width = self.info.input_size
        if policy in ("resize", "letterbox"):
            # One input per image, resized as uint8 and written straight into the batch, then normalised in place
            # once: no per-image float copies and no concatenation (those cost 2 ms a 768x576 frame).
            batch = torch.empty(len(arrays), 3, height, width)
            plans = []
            for index, array in enumerate(arrays):
                image_size = (array.shape[0], array.shape[1])
                if policy == "resize":
                    batch[index] = self._resized(array, (height, width))[0]  # uint8 -> float happens in this copy
                    plans.append(Plan("resize", image_size, (height, width)))
                    continue
                top, left, inner_height, inner_width = box = letterbox_box(image_size, (height, width))
                batch[index] = self._pad  # the mean colour, raw: zero once normalised (by us or the graph)
                inner = batch[index, :, top : top + inner_height, left : left + inner_width]
                inner.copy_(self._resized(array, (inner_height, inner_width))[0])
                plans.append(Plan("letterbox", image_size, (height, width), content=box))
            return batch.sub_(self._mean).div_(self._std), [1] * len(arrays), plans
        inputs, plans = [], []
        for array in arrays:
            pixels = self._resized(array, None).float()
            pad = (self._pad.view(3) - self._mean.view(3)) / self._std.view(3)
            crops, plan = prepare((pixels - self._mean) / self._std, policy, self.info.input_size, pad=pad)
            inputs.append(crops)
            plans.append(plan)
        return torch.cat(inputs), [len(crops) for crops in inputs], plans

    def _resized(self, array: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
        """uint8 [1, 3, h, w], contiguous: the image at `size` (None: at its own)."""
        pixels = torch.from_numpy(array).permute(2, 0, 1)[None]  # a view
        if size is not None and tuple(pixels.shape[2:]) != tuple(size):
            # Resize the uint8 image first, then normalise the small one: torch's uint8 antialiased kernel took a
            # 1080p frame to 512x512 in 1.7 ms against 12.5 ms for normalise-then-resize in float.
            pixels = F.interpolate(pixels, size, mode="bilinear", antialias=True)
        # Channel-first in memory before the float maths: a strided float copy is 2.5x slower.
        return pixels.contiguous()

    def _postprocess(self, out: torch.Tensor, plan: Any) -> tuple[torch.Tensor, torch.Tensor]:
        kind = self.backend.output_kind
        if kind == "logits" and out.shape[1] == 2:
            # Two classes: softmax is the sigmoid of the logit difference, so one channel is resized, not two,
            # and the argmax is its sign (ties go to background, as argmax's first-maximum rule gives).
            difference = merge(out[:, 1:] - out[:, :1], plan)[0]
            person = torch.sigmoid(difference)
            # `difference > 0` is "label 1 won": the label map, whichever label is the person.
            return difference > 0, (person if self.person_index == 1 else 1 - person)
        if kind == "labels":
            # Label-only models (an in-graph argmax) can only be resized as votes, nearest-neighbour.
            scores = merge(F.one_hot(out.long(), self.info.num_classes).permute(0, 3, 1, 2).float(), plan, "nearest")
        elif kind == "probs":
            scores = merge(out, plan)
        else:
            scores = torch.softmax(merge(out, plan), dim=0)
        return _argmax_channels(scores), scores[self.person_index]

    def _result(self, scores: tuple[np.ndarray, np.ndarray], people: bool) -> SegmentationResult:
        mask, person = scores
        result = SegmentationResult(mask=mask, person=person, person_index=self.person_index)
        if people:
            from peopleseg.infer.people import find_people

            result.people = find_people(result.person_mask, self.min_person_area, proba=person)
        return result


@contextlib.contextmanager
def torch_threads_beside(backend: Backend) -> Iterator[None]:
    """torch at one thread while it only pre- and post-processes for another backend (onnxruntime, TensorRT).

    Its idle OpenMP workers otherwise spin beside onnxruntime's threads, and each slows the other: a photo went
    from 98 to 66 ms through `predict` on 2 cores here (paired rounds). Every call through the Segmenter, video
    frames included, gets it. The torch backend keeps the threads it was given.
    """
    if backend.name == "torch":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _argmax_channels(scores: torch.Tensor) -> torch.Tensor:
    """argmax over the (few) channels of [C, H, W] as element-wise steps: much faster than a strided reduction."""
    best, index = scores[0].clone(), torch.zeros(scores.shape[1:], dtype=torch.uint8)
    for channel in range(1, scores.shape[0]):
        better = scores[channel] > best  # strict: the first maximum wins, as in torch.argmax
        index[better] = channel
        best = torch.maximum(best, scores[channel])
    return index
