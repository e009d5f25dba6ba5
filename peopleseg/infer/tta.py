"""Test-time augmentation: the person probability averaged over several views of each image.

A view shows the network the image mirrored (`flip`), larger or smaller than its resolution policy would (`scale`,
a factor on the network's usual view of the image), or at its own size in sliding windows (`sliding`). The views
of a spec are every combination of its tokens: "flip,1.5,sliding" gives six views (the usual one, 1.5x and sliding
windows, each as it is and mirrored).

Views other than the usual one run as sliding windows of the model's input size, so they work with every backend,
fixed-size graphs included. Their cost grows with the image: a sliding view of a 768x576 frame is 4 windows, of a
4096x4096 photo 144. The README ("Test-time augmentation") has the bundled model's held-out scores and timings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from peopleseg.errors import ConfigError, DataError

Scores = list[tuple[np.ndarray, np.ndarray]]  # per image: (label ids uint8, person probability float32)
MIN_SCALE, MAX_SCALE = 0.25, 4.0


@dataclass(frozen=True)
class View:
    """How one view shows an image to the network: mirrored, rescaled (on top of the resolution policy), or in
    sliding windows at the image's own size (times `scale`)."""

    flip: bool = False
    scale: float = 1.0
    sliding: bool = False

    @property
    def name(self) -> str:
        base = "sliding" if self.sliding else "usual"
        return base + (f"x{self.scale:g}" if self.scale != 1.0 else "") + ("+flip" if self.flip else "")

    def plan(self, shape: tuple[int, ...], policy: str, input_size: tuple[int, int]) -> tuple[tuple[int, int], str]:
        """The size this view shows an image of `shape` at, and the resolution policy it goes through."""
        height, width = shape[:2]
        if self.sliding or policy == "sliding":
            size, policy = (height * self.scale, width * self.scale), "sliding"
        elif self.scale == 1.0:
            size = (height, width)
        elif policy == "letterbox":  # fit into the scaled input box, keeping the aspect ratio, then windows
            fit = self.scale * min(input_size[0] / height, input_size[1] / width)
            size, policy = (height * fit, width * fit), "sliding"
        else:  # "resize": stretch to the scaled input size, then windows
            size, policy = (input_size[0] * self.scale, input_size[1] * self.scale), "sliding"
        return (max(1, round(size[0])), max(1, round(size[1]))), policy

    def show(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        shown = _resized(image, size)
        return np.ascontiguousarray(shown[:, ::-1]) if self.flip else shown

    def undo(self, person: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A probability map of the shown image, back on the original image's pixels."""
        if self.flip:
            person = person[:, ::-1]
        return _resized(np.ascontiguousarray(person), shape)


def parse_views(spec: str | Sequence[View]) -> list[View]:
    """ "flip,1.5,sliding" → the views (every combination of the tokens, the usual view first). "" → the usual
    view alone. Tokens: `flip`, a scale between 0.25 and 4, and `sliding`; commas or `+` separate them."""
    if not isinstance(spec, str):
        views = list(spec)
        if not views or not all(isinstance(v, View) for v in views):
            raise ConfigError("tta: expected a spec like 'flip,1.5' or a non-empty list of View")
        return views
    flips, bases = [False], [(1.0, False)]
    for token in (t.strip().lower() for t in spec.replace("+", ",").split(",")):
        if not token:
            continue
        if token == "flip":
            flips = [False, True]
        elif token == "sliding":
            bases.append((1.0, True))
        else:
            try:
                scale = float(token)
            except ValueError:
                raise ConfigError(f"tta: expected 'flip', 'sliding' or a scale like 1.5, got {token!r}") from None
            if not (math.isfinite(scale) and MIN_SCALE <= scale <= MAX_SCALE):
                raise ConfigError(f"tta: scale {token} is outside {MIN_SCALE:g}..{MAX_SCALE:g}")
            bases.append((scale, False))
    return list(dict.fromkeys(View(flip, scale, sliding) for scale, sliding in bases for flip in flips))


def views_for_policy(views: Sequence[View], policy: str) -> list[View]:
    """The views that run under `policy`: under sliding the usual view already is sliding windows, so a `sliding`
    view would repeat it and is dropped."""
    return list(dict.fromkeys(View(v.flip, v.scale, v.sliding and policy != "sliding") for v in views))


def check_view_sizes(
    views: Sequence[View], shape: tuple[int, ...], policy: str, input_size: tuple[int, int], max_pixels: int
) -> None:
    """A DataError if a view would grow an image of `shape` beyond `max_pixels` (or its own size, if larger)."""
    height, width = shape[:2]
    for view in views:
        size, _ = view.plan(shape, policy, input_size)
        if size[0] * size[1] > max(max_pixels, height * width):
            raise DataError(
                f"tta view {view.name} would make a {width}x{height} image {size[1]}x{size[0]}, above "
                f"max_pixels ({max_pixels}); use a smaller scale"
            )


def scores_over_views(
    score: Callable[[list[np.ndarray], str], Scores],
    arrays: list[np.ndarray],
    views: Sequence[View],
    policy: str,
    input_size: tuple[int, int],
    person_index: int,
    max_pixels: int,
) -> Scores:
    """Each image's person probability averaged over `views`, and its two-class label map (person where the mean
    is above 0.5). `score(images, policy)` runs the network as the Segmenter does.

    A view may not grow an image beyond `max_pixels`: every view of every image is checked before any runs.
    Sliding-window views run one image at a time, so memory holds one image's windows, not a batch's."""
    views = views_for_policy(views, policy)
    for array in arrays:
        check_view_sizes(views, array.shape, policy, input_size, max_pixels)
    plans = [[view.plan(array.shape, policy, input_size) for array in arrays] for view in views]
    totals = [np.zeros(a.shape[:2], np.float32) for a in arrays]
    for view, view_plans in zip(views, plans, strict=True):
        batched = [i for i, (_, p) in enumerate(view_plans) if p != "sliding"]
        groups = ([batched] if batched else []) + [[i] for i, (_, p) in enumerate(view_plans) if p == "sliding"]
        for group in groups:
            shown = [view.show(arrays[i], view_plans[i][0]) for i in group]
            for i, (_, person) in zip(group, score(shown, view_plans[group[0]][1]), strict=True):
                totals[i] += view.undo(person, arrays[i].shape[:2])
    scores = []
    for total in totals:
        total /= len(views)
        won = total > 0.5  # as the single view's sign of the logit difference: a tie is background
        labels = won if person_index == 1 else ~won  # two classes: the label map is the person's id where it won
        scores.append((labels.view(np.uint8), total))
    return scores


def _resized(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if array.shape[:2] == size:
        return array
    shrinking = size[0] * size[1] < array.shape[0] * array.shape[1]
    return cv2.resize(array, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
