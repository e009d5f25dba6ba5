"""Segmentation metrics from one confusion matrix accumulated over every pixel of a dataset.

mIoU here is the dataset-level mIoU of mmseg, TAO and the SegFormer paper: intersections and unions are summed over
all pixels of all images first, and the IoU of each class is taken once at the end. The mean of per-image IoUs is a
different (and noisier) number, and is not what model cards report.

The averaging rule (mmseg's `total_area_to_metrics`): a class's IoU is intersection / union over the non-ignored
pixels; a class whose union is empty (absent from both the ground truth and the prediction) has IoU NaN, and mIoU is
the mean over the other classes. A class that is predicted but absent from the ground truth therefore counts, with
IoU 0. Pixels labelled `ignore_index` (255) count for nothing, whatever was predicted there.

Every state is a sum (`dist_reduce_fx="sum"`), so under DDP torchmetrics adds the ranks' matrices on `compute`: no
rank sees another's images twice as long as the data is split without padding (see `evaluate.shard_indices`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from peopleseg.errors import ConfigError, DataError

IGNORE_INDEX = 255
ALL = "all"


def confusion_matrix(
    preds: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """int64 [C, C] pixel counts, rows = ground truth, columns = prediction, ignored pixels left out.

    `preds` and `target` are label ids of the same shape (any shape). One `bincount` over `target * C + pred` does
    the counting: far faster than a loop or a one-hot product.
    """
    preds, target = torch.as_tensor(preds), torch.as_tensor(target)
    if preds.shape != target.shape:
        raise DataError(f"prediction shape {list(preds.shape)} does not match the mask's {list(target.shape)}")
    keep = target != ignore_index
    truth = target[keep].long()
    guess = preds.to(truth.device)[keep].long()
    if truth.numel():
        low, high = int(truth.min()), int(truth.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise DataError(
                f"mask has label {bad}, but there are {num_classes} classes (0..{num_classes - 1}; "
                f"{ignore_index} = ignore)"
            )
        low, high = int(guess.min()), int(guess.max())
        if low < 0 or high >= num_classes:
            raise DataError(f"prediction has label {low if low < 0 else high}, but there are {num_classes} classes")
    counts = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, float]:
    """(per-class IoU float64 [C] with NaN where the union is empty, mIoU over the other classes; NaN if none)."""
    conf = torch.as_tensor(confusion).double()
    intersection = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - intersection
    iou = intersection / union  # 0 / 0 = NaN marks a class absent from both truth and prediction
    return iou, _nanmean(iou)


def metrics_from_confusion(confusion: torch.Tensor | np.ndarray, images: int = 0) -> dict[str, Any]:
    """Every number the reports need, as plain Python (fractions in 0..1, NaN for undefined):

    `miou`, `iou` [C], `acc` (pixel accuracy), `class_acc` [C] (recall of each class, NaN where it is absent from
    the ground truth), `macc` (their mean), `confusion` [[C] * C] (rows truth, columns prediction), `pixels`
    (non-ignored pixels counted) and `images`.
    """
    conf = torch.as_tensor(confusion).long().cpu()
    iou, miou = iou_from_confusion(conf)
    diagonal = conf.diagonal().double()
    pixels = int(conf.sum())
    class_acc = diagonal / conf.sum(1).double()
    return {
        "miou": miou,
        "iou": iou.tolist(),
        "acc": float(diagonal.sum() / pixels) if pixels else math.nan,
        "class_acc": class_acc.tolist(),
        "macc": _nanmean(class_acc),
        "confusion": conf.tolist(),
        "pixels": pixels,
        "images": int(images),
    }


class SegmentationMetrics(Metric):
    """mIoU, per-class IoU, pixel accuracy and per-class accuracy from one dataset-level confusion matrix.

    `update(preds, target)`: label ids [N, H, W] or [H, W] (an argmax of logits, not logits), masks with
    `ignore_index` for pixels that do not count. Or `update(confusion=counts)` with a ready [C, C] matrix from
    `confusion_matrix`, which lets a caller count an image's pixels once and add them in several places.
    `compute()` returns `metrics_from_confusion`'s dict (plain Python numbers and lists). Keyword arguments go to
    torchmetrics' `Metric` (e.g. `sync_on_compute=False`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confusion: torch.Tensor
    images: torch.Tensor

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ConfigError(f"ignore_index {ignore_index} is a class id (there are {num_classes} classes)")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self,
        preds: torch.Tensor | np.ndarray | None = None,
        target: torch.Tensor | np.ndarray | None = None,
        *,
        confusion: torch.Tensor | None = None,
        images: int | None = None,
    ) -> None:
        if confusion is None:
            if preds is None or target is None:
                raise ConfigError("SegmentationMetrics.update needs preds and target, or confusion=")
            target = torch.as_tensor(target)
            confusion = confusion_matrix(preds, target, self.num_classes, self.ignore_index)
            if images is None:
                images = target.shape[0] if target.ndim == 3 else 1
        elif tuple(confusion.shape) != (self.num_classes, self.num_classes):
            raise ConfigError(
                f"confusion must be [{self.num_classes}, {self.num_classes}], got {list(confusion.shape)}"
            )
        self.confusion += confusion.to(self.confusion.device, torch.int64)
        self.images += 1 if images is None else images

    def compute(self) -> dict[str, Any]:
        return metrics_from_confusion(self.confusion, int(self.images))


class SubsetMetrics(torch.nn.Module):
    """One `SegmentationMetrics` per subset (e.g. COCO, Supervisely, crowd) plus "all", as the model card reports.

    Distributed-safe when every rank declares the same `subsets` up front: each rank then holds the same metrics
    in the same order and their all-reduces pair up, even for a subset a rank never saw. `grow=True` adds unknown
    names on first sight instead of refusing them; that is for single-process use only (ranks could disagree), so
    it is refused under a multi-process `torch.distributed` group. Samples whose subset is "" count in "all" only.
    It is an `nn.Module`, so `.to(device)` and Lightning move its states.
    """

    def __init__(
        self,
        num_classes: int,
        subsets: Sequence[str] = (),
        ignore_index: int = IGNORE_INDEX,
        grow: bool = False,
        **metric_kwargs: Any,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.grow = grow
        self._metric_kwargs = metric_kwargs
        self.all = SegmentationMetrics(num_classes, ignore_index, **metric_kwargs)
        # A ModuleList, not a ModuleDict: subset names may hold dots or slashes, which module names may not.
        self.per_subset = torch.nn.ModuleList()
        self.names: list[str] = []
        for name in subsets:
            self._add(name)

    def _add(self, name: str) -> SegmentationMetrics:
        if not isinstance(name, str) or not name or name == ALL:
            raise ConfigError(f"subset names must be non-empty strings other than '{ALL}', got {name!r}")
        if name in self.names:
            raise ConfigError(f"subset '{name}' is declared twice")
        metric = SegmentationMetrics(self.num_classes, self.ignore_index, **self._metric_kwargs).to(
            self.all.confusion.device
        )
        self.names.append(name)
        self.per_subset.append(metric)
        return metric

    def _metric(self, name: str) -> SegmentationMetrics:
        if name in self.names:
            return self.per_subset[self.names.index(name)]  # type: ignore[return-value]
        if not self.grow:
            raise ConfigError(f"subset '{name}' was not declared; declared: {', '.join(self.names) or 'none'}")
        if _distributed():
            raise ConfigError(f"subset '{name}' was not declared: declare every subset up front when distributed")
        return self._add(name)

    def add(self, confusion: torch.Tensor, subset: str = "", images: int = 1) -> None:
        """Add one image's (or a batch's) confusion matrix to its subset and to "all"."""
        self.all.update(confusion=confusion, images=images)
        if subset:
            self._metric(subset).update(confusion=confusion, images=images)

    def update(
        self,
        preds: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        subsets: Sequence[str] | str = "",
    ) -> None:
        """`preds`, `target`: [N, H, W] or [H, W]; `subsets`: one name per sample, or one name for them all."""
        preds, target = torch.as_tensor(preds), torch.as_tensor(target)
        if target.ndim == 2:
            preds, target = preds[None], target[None]
        names = [subsets] * len(target) if isinstance(subsets, str) else list(subsets)
        if len(names) != len(target):
            raise ConfigError(f"got {len(names)} subset names for {len(target)} masks")
        # Count each group's pixels once; "all" receives the sum of the groups.
        for name in dict.fromkeys(names):
            index = torch.tensor([i for i, n in enumerate(names) if n == name], device=target.device)
            group_preds = preds.to(target.device).index_select(0, index)
            conf = confusion_matrix(group_preds, target.index_select(0, index), self.num_classes, self.ignore_index)
            self.add(conf, name, images=len(index))

    def compute(self) -> dict[str, dict[str, Any]]:
        """{subset: metrics} in declaration order, then "all"."""
        with warnings.catch_warnings():
            # A declared subset may have no images on this rank (or at all): its zeros are still right to sync.
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            results = {name: metric.compute() for name, metric in zip(self.names, self.per_subset, strict=True)}
            results[ALL] = self.all.compute()
        return results

    def reset(self) -> None:
        self.all.reset()
        for metric in self.per_subset:
            metric.reset()


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else math.nan
