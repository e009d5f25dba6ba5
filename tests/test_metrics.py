"""Dataset-level segmentation metrics: checked by hand on tiny masks, against torchmetrics on random ones, and across
two processes that each saw half of the images."""

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassJaccardIndex

from peopleseg.engine.metrics import SegmentationMetrics, SubsetMetrics, confusion_matrix, iou_from_confusion
from peopleseg.errors import ConfigError, DataError

# Three classes. Class 2 is predicted only on the ignored pixel, so it is absent from both truth and prediction.
TARGET = torch.tensor([[0, 0, 1], [1, 255, 0]])
PREDS = torch.tensor([[0, 1, 1], [0, 2, 0]])


def test_hand_computed_miou_with_ignore_and_an_absent_class() -> None:
    metric = SegmentationMetrics(3)
    metric.update(PREDS, TARGET)
    result = metric.compute()
    # Five counted pixels (t, p): (0,0) (0,1) (1,1) (1,0) (0,0).
    # Class 0: intersection 2, truth 3, prediction 3 -> union 4 -> 1/2.
    # Class 1: intersection 1, truth 2, prediction 2 -> union 3 -> 1/3.
    # Class 2: union 0 -> NaN, left out of the mean.
    assert result["iou"][0] == pytest.approx(1 / 2)
    assert result["iou"][1] == pytest.approx(1 / 3)
    assert math.isnan(result["iou"][2])
    assert result["miou"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert result["acc"] == pytest.approx(3 / 5)
    assert result["class_acc"][:2] == pytest.approx([2 / 3, 1 / 2])
    assert math.isnan(result["class_acc"][2])
    assert result["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert (result["pixels"], result["images"]) == (5, 1)


def test_a_class_predicted_but_absent_from_the_truth_counts_as_zero() -> None:
    metric = SegmentationMetrics(3)
    metric.update(torch.tensor([[2, 0]]), torch.tensor([[0, 0]]))
    result = metric.compute()
    assert result["iou"][0] == pytest.approx(1 / 2)
    assert result["iou"][2] == 0
    assert math.isnan(result["iou"][1])
    assert result["miou"] == pytest.approx(1 / 4)


def test_accumulates_over_the_dataset_not_per_image() -> None:
    # Image A misses its one person pixel; image B is all person, found perfectly.
    target_a, preds_a = torch.tensor([[1, 0], [0, 0]]), torch.zeros(2, 2, dtype=torch.long)
    target_b, preds_b = torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)
    metric = SegmentationMetrics(2)
    metric.update(preds_a, target_a)
    metric.update(preds_b, target_b)
    # Summed over both: background 3 / 4, person 4 / 5.
    assert metric.compute()["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    per_image = [
        iou_from_confusion(confusion_matrix(p, t, 2))[1] for p, t in [(preds_a, target_a), (preds_b, target_b)]
    ]
    assert per_image == pytest.approx([(0 + 3 / 4) / 2, 1.0])
    assert np.mean(per_image) != pytest.approx(metric.compute()["miou"])
    # A batch [N, H, W] gives the same as one image at a time.
    batched = SegmentationMetrics(2)
    batched.update(torch.stack([preds_a, preds_b]), torch.stack([target_a, target_b]))
    assert batched.compute() == metric.compute()


def test_matches_torchmetrics_jaccard_on_random_masks() -> None:
    generator = torch.Generator().manual_seed(1)
    ours = SegmentationMetrics(4)
    reference = MulticlassJaccardIndex(num_classes=4, average=None, ignore_index=255)
    for _ in range(3):
        preds = torch.randint(0, 4, (2, 17, 23), generator=generator)
        target = torch.randint(0, 4, (2, 17, 23), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.2] = 255
        ours.update(preds.to(torch.uint8), target.to(torch.uint8))  # uint8 masks must not overflow in t * C + p
        reference.update(preds, target)
    assert ours.compute()["iou"] == pytest.approx(reference.compute().tolist(), abs=1e-6)


def test_iou_from_confusion_takes_numpy() -> None:
    iou, miou = iou_from_confusion(np.array([[3, 1], [0, 0]]))
    assert iou[0].item() == pytest.approx(3 / 4)
    assert iou[1].item() == 0  # predicted once, never true
    assert miou == pytest.approx(3 / 8)
    empty_iou, empty_miou = iou_from_confusion(np.zeros((2, 2)))
    assert torch.isnan(empty_iou).all() and math.isnan(empty_miou)


def test_bad_labels_and_shapes() -> None:
    metric = SegmentationMetrics(2)
    with pytest.raises(DataError, match="mask has label 7, but there are 2 classes"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7))
    with pytest.raises(DataError, match="prediction has label 3"):
        metric.update(torch.full((2, 2), 3), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(DataError, match=r"prediction shape \[2, 3\] does not match the mask's \[2, 2\]"):
        metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="ignore_index 1 is a class id"):
        SegmentationMetrics(2, ignore_index=1)


def test_merged_states_equal_one_metric_over_everything() -> None:
    # What DDP's sum-reduction does on compute, without processes: two halves merged.
    generator = torch.Generator().manual_seed(2)
    preds = torch.randint(0, 3, (4, 9, 9), generator=generator)
    target = torch.randint(0, 3, (4, 9, 9), generator=generator)
    whole, first, second = SegmentationMetrics(3), SegmentationMetrics(3), SegmentationMetrics(3)
    whole.update(preds, target)
    first.update(preds[:3], target[:3])
    second.update(preds[3:], target[3:])
    first.merge_state(second)
    assert first.compute() == whole.compute()


def test_subset_metrics_rows_and_all() -> None:
    metrics = SubsetMetrics(3, subsets=["coco", "supervisely"])
    metrics.update(PREDS[None].repeat(3, 1, 1), TARGET[None].repeat(3, 1, 1), ["coco", "", "coco"])
    result = metrics.compute()
    assert list(result) == ["coco", "supervisely", "all"]
    assert result["coco"]["images"] == 2 and result["all"]["images"] == 3
    assert result["supervisely"]["images"] == 0 and math.isnan(result["supervisely"]["miou"])
    assert result["all"]["miou"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert np.array_equal(np.array(result["all"]["confusion"]), 3 * np.array(result["coco"]["confusion"]) / 2)
    with pytest.raises(ConfigError, match="subset 'crowd' was not declared"):
        metrics.update(PREDS, TARGET, "crowd")
    with pytest.raises(ConfigError, match="subset names must be non-empty strings other than 'all'"):
        SubsetMetrics(2, subsets=["all"])
    growing = SubsetMetrics(3, grow=True)
    growing.update(PREDS, TARGET, "crowd")
    assert list(growing.compute()) == ["crowd", "all"]
    growing.reset()
    assert growing.compute()["all"]["pixels"] == 0


def _rank(rank: int, world: int, port: int, queue: "mp.SimpleQueue") -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool: it would wait forever
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metrics = SubsetMetrics(2, subsets=["a", "b"])
        # Rank 0 sees only subset "a", rank 1 only "b": the declared rows still pair up their all-reduces.
        target = torch.tensor([[1, 0], [0, 0]]) if rank == 0 else torch.tensor([[1, 1], [1, 0]])
        metrics.update(torch.tensor([[1, 1], [0, 0]]), target, "a" if rank == 0 else "b")
        queue.put((rank, metrics.compute()))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_ranks_sum_their_confusion_matrices_across_processes() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # fork, not spawn: the children need no fresh interpreter and torch import (seconds each on 2 cores).
    queue = mp.get_context("fork").SimpleQueue()
    ranks = mp.start_processes(_rank, args=(2, port, queue), nprocs=2, start_method="fork", join=False)
    for _ in range(60):
        if ranks.join(timeout=1):
            break
    else:
        for process in ranks.processes:
            process.kill()
        pytest.fail("the two ranks did not finish within 60 s")
    results = dict(queue.get() for _ in range(2))
    assert results[0] == results[1]
    # Rank 0: background 2 right, 1 false person, 1 person right; rank 1: background 1 right, 1 person missed, 2 right.
    assert results[0]["all"]["confusion"] == [[3, 1], [1, 3]]
    assert results[0]["all"]["images"] == 2
    assert results[0]["a"]["images"] == 1 and results[0]["b"]["images"] == 1
    assert results[0]["all"]["iou"] == pytest.approx([3 / 5, 3 / 5])
