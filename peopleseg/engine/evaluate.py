"""Evaluate a Segmenter on a dataset: dataset-level mIoU overall and per subset, and the worst images.

A dataset is any iterable (or map-style torch Dataset) of samples `{"image": uint8 [H, W, 3] RGB, "mask": uint8
[H, W] label ids (255 = ignore), "path": str, "subset": str}`, untransformed: predictions are scored against the
mask at its original resolution, never against a resized mask.

`evaluate` is single-process over the dataset it is given; its metrics never synchronise, so running it on several
ranks gives each rank its own answer. To split one evaluation over ranks, give each rank
`shard_indices(len(dataset), rank, world)` and let `SegmentationMetrics` (which sums its confusion matrix across
ranks on `compute`) do the reduction: unlike `DistributedSampler`, `shard_indices` pads with no duplicates, which
would otherwise count some images twice and bias the mIoU.
"""

from __future__ import annotations

import copy
import heapq
import math
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from peopleseg.engine.metrics import ALL, IGNORE_INDEX, SubsetMetrics, confusion_matrix, iou_from_confusion
from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.image_input import to_rgb
from peopleseg.infer.segmenter import Segmenter
from peopleseg.infer.tta import check_view_sizes, views_for_policy
from peopleseg.resize_policy import CHOICES

# "resize" is NVIDIA's model card protocol (TAO's): the image stretched to the network input, the scores resized back.
# "auto" is the Segmenter's own policy (by default the model's `info.resize`), what `peopleseg infer` runs.
PROTOCOLS = (*CHOICES, "whole")
STRIDE = 32  # SegFormer takes any input whose sides are multiples of 32


@dataclass
class EvalConfig:
    """How to evaluate.

    `protocol`: "auto" (the Segmenter's policy, as `peopleseg infer` runs it), "resize" (NVIDIA's model card's),
    "letterbox", "sliding" (network-sized windows at the image's own scale) or "whole" (the image at its native
    size, padded to a multiple of 32; torch backend only).
    `batch_size`: images per call to the Segmenter. `max_images`: stop after this many (None: all).
    `worst`: how many of the lowest-scoring images to keep, with their predictions, for the gallery.
    """

    protocol: str = "auto"
    batch_size: int = 4
    max_images: int | None = None
    worst: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"eval protocol '{self.protocol}' is unknown; choose from {', '.join(PROTOCOLS)}")
        _check_int(self.batch_size, "batch_size", 1)
        if self.max_images is not None:
            _check_int(self.max_images, "max_images", 1)
        _check_int(self.worst, "worst", 0)


class WorstImage(NamedTuple):
    """One of the lowest-scoring images: its path, score (see `image_score`), predicted label mask, ground-truth
    mask, subset, and position in the dataset (to re-read it). The masks are None in a result read from JSON."""

    path: str
    score: float
    pred: np.ndarray | None
    target: np.ndarray | None = None
    subset: str = ""
    index: int = -1


@dataclass
class EvalResult:
    """`overall` and each `subsets[name]` hold `metrics_from_confusion`'s dict (fractions in 0..1, NaN where
    undefined); `worst` is sorted from the worst image up."""

    overall: dict[str, Any]
    subsets: dict[str, dict[str, Any]]
    images: int
    seconds: float
    worst: list[WorstImage] = field(default_factory=list)
    classes: list[str] = field(default_factory=lambda: ["background", "person"])
    protocol: str = "resize"
    tta: list[str] = field(default_factory=list)  # the test-time views averaged (empty: one view)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    @property
    def score_name(self) -> str:
        return score_name(self.classes)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (NaN becomes null), masks left out: `json.dumps(..., allow_nan=False)` accepts it."""
        return _jsonable(
            {
                "classes": list(self.classes),
                "protocol": self.protocol,
                "tta": list(self.tta),
                "images": self.images,
                "seconds": self.seconds,
                "images_per_second": self.images_per_second,
                "overall": self.overall,
                "subsets": self.subsets,
                "score": self.score_name,
                "worst": [{"path": w.path, "score": w.score, "subset": w.subset, "index": w.index} for w in self.worst],
            }
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalResult:
        """The result `to_json` wrote (e.g. a metrics.json), without the worst images' masks."""
        try:
            return cls(
                overall=_unjson(data["overall"]),
                subsets={name: _unjson(row) for name, row in data["subsets"].items()},
                images=int(data["images"]),
                seconds=float(data["seconds"]),
                worst=[
                    WorstImage(w["path"], _float(w["score"]), None, None, w.get("subset", ""), w.get("index", -1))
                    for w in data.get("worst", [])
                ],
                classes=list(data["classes"]),
                protocol=str(data.get("protocol", "resize")),
                tta=[str(name) for name in data.get("tta", [])],
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise DataError(f"evaluation results: missing or malformed field {exc}") from None


def evaluate(
    segmenter: Segmenter, dataset: Iterable[Mapping[str, Any]], config: EvalConfig | None = None, progress: bool = True
) -> EvalResult:
    """Run `segmenter` over `dataset` and score it against the masks (see the module docstring).

    The protocol in `config` overrides the Segmenter's own `resize` policy (the Segmenter itself is not changed).
    A dataset with a `classes` (names) or `num_classes` attribute must agree with the model's class count; one with
    `subsets` gets those rows in that order (others are added, sorted, as they appear).
    """
    config = config or EvalConfig()
    classes = segmenter.classes
    num_classes = len(classes)
    _check_dataset_classes(dataset, classes)
    protocol = segmenter.resize if config.protocol == "auto" else config.protocol  # the Segmenter's, resolved
    predict = _predictor(segmenter, protocol)
    declared = _declared_subsets(dataset)
    # Local only (no sync): evaluate is single-process by design, and lazily found subsets could differ by rank.
    metrics = SubsetMetrics(num_classes, declared, grow=True, sync_on_compute=False)
    person = classes.index("person") if "person" in classes else None
    worst = _WorstImages(config.worst)
    total = _length(dataset, config.max_images)
    count = ignored = 0
    start = time.perf_counter()
    with _progress_bar(progress) as bar:
        task = bar.add_task("evaluating", total=total)
        for batch in _batches(_samples(dataset, config.max_images, segmenter, protocol), config):
            preds = predict([sample.image for sample in batch])
            for sample, pred in zip(batch, preds, strict=True):
                conf = confusion_matrix(pred, sample.mask, num_classes, IGNORE_INDEX)
                ignored += sample.mask.size - int(conf.sum())  # what the matrix leaves out: 255
                metrics.add(conf, sample.subset)
                worst.offer(sample, pred, image_score(conf, person))
            count += len(batch)
            bar.advance(task, len(batch))
    seconds = time.perf_counter() - start
    if count == 0:
        raise DataError("the dataset is empty: there is nothing to evaluate")
    rows = metrics.compute()
    overall = rows.pop(ALL)
    if ignored and not any(sum(row) for row in overall["confusion"][1:]):
        warnings.warn(
            f"the masks hold no pixel of any class but '{classes[0]}', and {ignored} pixels are 255 (ignore): "
            "if they are 0/255 person masks, evaluate with --binary-255 (binary_255=True), or every person is ignored",
            UserWarning,
            stacklevel=2,
        )
    if config.max_images is not None:  # a run cut short says nothing of the subsets it never reached
        rows = {name: row for name, row in rows.items() if row.get("images", 0) > 0}
    order = [name for name in declared if name in rows] + sorted(name for name in rows if name not in declared)
    return EvalResult(
        overall=overall,
        subsets={name: rows[name] for name in order},
        images=count,
        seconds=seconds,
        worst=worst.sorted(),
        classes=classes,
        protocol=protocol,
        tta=[view.name for view in ran] if len(ran := views_for_policy(segmenter.views, protocol)) > 1 else [],
    )


def shard_indices(n: int, rank: int, world: int) -> range:
    """The dataset indices rank `rank` of `world` evaluates: every index in exactly one shard, none repeated.

    Strided (rank, rank + world, …) so that the shards differ in length by at most one; `DistributedSampler` pads
    the short ones with duplicates instead, which counts those images twice in a dataset-level metric.
    """
    _check_int(n, "n", 0)
    _check_int(world, "world", 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
        raise ConfigError(f"rank must be in 0..{world - 1}, got {rank!r}")
    return range(rank, n, world)


def score_name(classes: Sequence[str]) -> str:
    """What `image_score` measures for these classes."""
    return "person IoU" if "person" in classes else "mIoU"


def image_score(confusion: torch.Tensor, person: int | None = 1) -> float:
    """One image's score for ranking the worst: the IoU of the `person` class (its mIoU when `person` is None).

    An image with nothing to find and nothing found (an empty union) scores 1: it is not among the failures.
    """
    if person is None:
        score = iou_from_confusion(confusion)[1]
    else:
        conf = confusion.double()
        intersection = conf[person, person]
        union = conf[person].sum() + conf[:, person].sum() - intersection
        score = float(intersection / union) if union > 0 else math.nan
    return 1.0 if math.isnan(score) else score


# --- samples -----------------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    index: int
    path: str
    subset: str
    image: np.ndarray
    mask: np.ndarray


def _samples(
    dataset: Iterable[Mapping[str, Any]], limit: int | None, segmenter: Segmenter, protocol: str
) -> Iterator[_Sample]:
    views = views_for_policy(segmenter.views, protocol) if segmenter.uses_tta else []
    for index, item in _items(dataset, limit):
        sample = _check_sample(index, item, len(segmenter.classes), segmenter.max_pixels)
        try:  # here, where the image's name is known, not deep in the batch
            check_view_sizes(views, sample.image.shape, protocol, segmenter.info.input_size, segmenter.max_pixels)
        except DataError as exc:
            raise DataError(f"{sample.path}: {exc}") from None
        yield sample


def _items(dataset: Iterable[Mapping[str, Any]], limit: int | None) -> Iterator[tuple[int, Any]]:
    if _indexable(dataset):
        length = len(dataset)  # type: ignore[arg-type]
        for index in range(length if limit is None else min(limit, length)):
            yield index, dataset[index]  # type: ignore[index]
        return
    for index, item in enumerate(dataset):
        if limit is not None and index >= limit:
            return
        yield index, item


def _indexable(dataset: object) -> bool:
    """Map-style (length and integer indices), as opposed to a stream: a torch IterableDataset is a stream even
    though it inherits `__getitem__`."""
    if isinstance(dataset, (torch.utils.data.IterableDataset, Mapping)):
        return False
    return hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")


def _check_sample(index: int, item: Any, num_classes: int, max_pixels: int) -> _Sample:
    if not isinstance(item, Mapping):
        raise DataError(f"dataset item {index}: expected a dict with image, mask, path and subset")
    path = str(item.get("path") or f"dataset item {index}")
    for key in ("image", "mask"):
        if item.get(key) is None:
            raise DataError(f"{path}: the sample has no '{key}'")
    try:
        image = to_rgb(item["image"], "rgb", max_pixels)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    mask = np.asarray(item["mask"])
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise DataError(f"{path}: expected an integer mask [H, W], got {mask.dtype} {list(mask.shape)}")
    if mask.shape != image.shape[:2]:
        raise DataError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
        )
    bad = ((mask >= num_classes) & (mask != IGNORE_INDEX)) | (mask < 0)
    if bad.any():
        raise DataError(
            f"{path}: mask has label {int(mask[bad][0])}, but the model has {num_classes} classes "
            f"(0..{num_classes - 1}; {IGNORE_INDEX} = ignore)"
        )
    subset = item.get("subset") or ""
    return _Sample(index, path, str(subset), image, mask)


def _batches(samples: Iterator[_Sample], config: EvalConfig) -> Iterator[list[_Sample]]:
    batch: list[_Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == config.batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_dataset_classes(dataset: object, classes: list[str]) -> None:
    # Look through wrappers such as torch's Subset for the dataset that knows its classes.
    while not hasattr(dataset, "classes") and not hasattr(dataset, "num_classes") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    names = getattr(dataset, "classes", None)
    count = getattr(dataset, "num_classes", None)
    if names is not None and not isinstance(names, str):
        names = [str(name) for name in names]
        count = len(names)
    if count is None:
        return
    if int(count) != len(classes):
        described = f" ({', '.join(names)})" if isinstance(names, list) else ""
        raise ConfigError(
            f"dataset has {count} classes{described} but the model predicts {len(classes)} ({', '.join(classes)})"
        )
    if isinstance(names, list) and names != classes:
        warnings.warn(f"dataset classes {names} and model classes {classes} differ in name", stacklevel=3)


def _declared_subsets(dataset: object) -> list[str]:
    subsets = getattr(dataset, "subsets", None)
    if subsets is None or isinstance(subsets, str):
        return []
    return [str(name) for name in subsets if name and name != ALL]


def _length(dataset: object, limit: int | None) -> int | None:
    try:
        length = len(dataset)  # type: ignore[arg-type]
    except TypeError:  # a stream
        return limit
    return length if limit is None else min(length, limit)


# --- protocols ---------------------------------------------------------------------------------------------------


def _predictor(segmenter: Segmenter, protocol: str) -> Any:
    """A function from a list of RGB images to their label masks [H, W], under `protocol`."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"eval protocol '{protocol}' is unknown; choose from {', '.join(PROTOCOLS)}")
    if protocol == "whole":
        backend = segmenter.backend
        if backend.name != "torch" or backend.output_kind != "logits":
            raise ConfigError(f"the whole-image protocol needs the torch backend, got '{backend.name}'")
        if segmenter.uses_tta:
            raise ConfigError("the whole-image protocol runs one view per image: it cannot take tta")
        return lambda images: _predict_whole(segmenter, images)
    # A shallow copy shares the loaded backend but not the caller's resize policy.
    policy = copy.copy(segmenter)
    policy.resize = protocol
    return lambda images: [result.mask for result in policy.segment_batch(images, people=False)]


def _predict_whole(segmenter: Segmenter, images: list[np.ndarray]) -> list[np.ndarray]:
    """Each image at its own size, padded bottom-right to a multiple of 32 with the mean colour (0 once
    normalised); the logits are upsampled to the padded size, cropped, then argmaxed. Images that pad to the same
    size share a batch."""
    mean = torch.tensor(segmenter.info.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(segmenter.info.std, dtype=torch.float32).view(1, 3, 1, 1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        height, width = image.shape[:2]
        groups.setdefault((-(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE), []).append(i)
    masks: list[np.ndarray] = [np.empty(0)] * len(images)
    for padded, members in groups.items():
        for start in range(0, len(members), segmenter.batch_size):
            chunk = members[start : start + segmenter.batch_size]
            batch = torch.zeros(len(chunk), 3, *padded)
            for row, i in enumerate(chunk):
                pixels = torch.from_numpy(images[i]).permute(2, 0, 1)[None].float()
                batch[row, :, : pixels.shape[2], : pixels.shape[3]] = ((pixels - mean) / std)[0]
            logits = segmenter.backend(batch).float().cpu()
            logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
            for row, i in enumerate(chunk):
                height, width = images[i].shape[:2]
                masks[i] = logits[row, :, :height, :width].argmax(0).to(torch.uint8).numpy()
    return masks


# --- the worst images ----------------------------------------------------------------------------------------------


class _WorstImages:
    """The k lowest scores seen so far, in a max-heap of size k: memory for k masks, not the dataset's. Ties keep
    the earlier image."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._heap: list[tuple[float, int, WorstImage]] = []

    def offer(self, sample: _Sample, pred: np.ndarray, score: float) -> None:
        if self.k == 0:
            return
        if len(self._heap) == self.k and score >= -self._heap[0][0]:
            return
        entry = WorstImage(sample.path, score, pred, sample.mask.copy(), sample.subset, sample.index)
        # (-score, -index): the heap's top is the best-scoring (and, among equals, latest) image, the one to drop.
        item = (-score, -sample.index, entry)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    def sorted(self) -> list[WorstImage]:
        return [entry for _, _, entry in sorted(self._heap, key=lambda item: (-item[0], -item[1]))]


# --- progress and helpers ------------------------------------------------------------------------------------------


class _SpeedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.2f} images/s", style="progress.data.speed")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _SpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _jsonable(value: Any) -> Any:
    """numpy and torch scalars to Python, tuples to lists, NaN and infinities to None."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _unjson(value: Any) -> Any:
    """The inverse of `_jsonable` for a metrics row: null back to NaN in the float fields."""
    row = dict(value)
    for key in ("miou", "acc", "macc"):
        row[key] = _float(row.get(key))
    for key in ("iou", "class_acc"):
        row[key] = [_float(v) for v in row.get(key, [])]
    return row


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
