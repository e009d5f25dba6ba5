"""Per-person results from a mask, and ids that stay stable across video frames."""

import json

import numpy as np
import pytest

from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.people import PeopleTracker, Person, find_people, occupancy


def _three_blobs() -> np.ndarray:
    mask = np.zeros((40, 60), np.uint8)
    mask[2:12, 5:25] = 1  # 10 x 20 = 200 px
    mask[20:30, 40:50] = 1  # 10 x 10 = 100 px
    mask[35:37, 5:7] = 1  # 2 x 2 = 4 px: speckle
    return mask


def test_find_people_exact_areas_boxes_and_centroids() -> None:
    people = find_people(_three_blobs(), min_area=10)
    assert [p.area for p in people] == [200, 100]
    assert people[0].bbox == (5, 2, 25, 12) and people[1].bbox == (40, 20, 50, 30)
    assert people[0].centroid == pytest.approx((14.5, 6.5)) and people[1].centroid == pytest.approx((44.5, 24.5))
    assert all(p.id is None and p.score is None for p in people)
    assert all(isinstance(v, int) for p in people for v in (p.area, *p.bbox))


def test_find_people_scores_min_area_fraction_and_labels() -> None:
    mask = _three_blobs()
    proba = np.where(mask == 1, 0.9, 0.1).astype(np.float32)
    proba[20:30, 40:50] = 0.7
    people = find_people(mask.astype(bool), min_area=10, proba=proba)
    assert [p.score for p in people] == pytest.approx([0.9, 0.7])
    assert [p.area for p in find_people(mask, min_area=0.05)] == [200]  # 5% of 2400 px = 120 px
    assert [p.area for p in find_people(mask, min_area=0)] == [200, 100, 4]
    assert [p.area for p in find_people(mask, min_area=4.0)] == [200, 100, 4]  # a float >= 1 is pixels
    labels = mask.copy()
    labels[20:30, 40:50] = 2  # another class, not a person
    assert [p.area for p in find_people(labels, min_area=10)] == [200]
    assert find_people(np.zeros((5, 5), bool)) == []


def test_find_people_connectivity() -> None:
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True
    mask[2:4, 2:4] = True  # touches the first square only at a corner
    assert len(find_people(mask, min_area=1)) == 1
    assert len(find_people(mask, min_area=1, connectivity=4)) == 2


def test_person_to_dict_is_json_ready() -> None:
    person = find_people(_three_blobs(), min_area=10, proba=np.full((40, 60), 0.5, np.float32))[0]
    data = json.loads(json.dumps(person.to_dict()))
    assert data == {"id": None, "area": 200, "bbox": [5, 2, 25, 12], "centroid": [14.5, 6.5], "score": 0.5}


def _person(x0: int, y0: int, x1: int, y1: int) -> Person:
    area = (x1 - x0) * (y1 - y0)
    return Person(id=None, area=area, bbox=(x0, y0, x1, y1), centroid=((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2))


def test_tracker_keeps_ids_through_motion_and_gaps_then_retires() -> None:
    tracker = PeopleTracker(iou_threshold=0.3, max_missed=5)
    left, right = (10, 10, 30, 50), (60, 10, 80, 50)
    ids = [p.id for p in tracker.update([_person(*left), _person(*right)])]
    assert ids == [1, 2]
    for step in range(1, 6):  # both walk right, 3 px a frame; the order of the input changes
        a = _person(left[0] + 3 * step, 10, left[2] + 3 * step, 50)
        b = _person(right[0] + 3 * step, 10, right[2] + 3 * step, 50)
        frame = [b, a] if step % 2 else [a, b]
        out = tracker.update(frame)
        assert [p.id for p in out] == ([2, 1] if step % 2 else [1, 2])
        assert [p.bbox for p in out] == [p.bbox for p in frame]  # same people, same order, ids added
        assert all(p.id is None for p in frame)  # the inputs are not modified
    a, b = _person(25, 10, 45, 50), _person(75, 10, 95, 50)
    assert tracker.update([]) == [] and tracker.update([]) == []  # a 2-frame gap
    assert [p.id for p in tracker.update([a, b])] == [1, 2]
    for _ in range(5):  # missing for max_missed frames: still remembered
        tracker.update([b])
    assert [p.id for p in tracker.update([a, b])] == [1, 2]
    for _ in range(6):  # one frame more than max_missed: retired
        tracker.update([b])
    assert tracker.active_ids == [2]
    assert [p.id for p in tracker.update([a, b, _person(200, 0, 220, 40)])] == [3, 2, 4]
    assert tracker.total_seen == 4
    tracker.reset()
    assert tracker.total_seen == 0 and [p.id for p in tracker.update([a])] == [1]


def test_tracker_matches_by_best_iou_not_by_order() -> None:
    tracker = PeopleTracker()
    tracker.update([_person(0, 0, 10, 10), _person(8, 0, 18, 10)])
    # The second box now sits where the first was, nearly: the best IoU decides, then the leftover goes to the other.
    out = tracker.update([_person(9, 0, 19, 10), _person(1, 0, 11, 10)])
    assert [p.id for p in out] == [2, 1]
    far = tracker.update([_person(100, 100, 110, 110)])  # IoU 0 with both: a new person
    assert far[0].id == 3


def test_occupancy() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :5] = 1
    mask[5:, 5:] = 2  # not a person
    assert occupancy(mask) == 0.25
    assert occupancy(mask == 1) == 0.25
    assert occupancy(np.ones((1, 1), bool)) == 1.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: find_people(np.zeros((4, 4), np.float32)), DataError, "threshold"),
        (lambda: find_people(np.zeros((2, 4, 4), bool)), DataError, r"\[H, W\]"),
        (lambda: find_people(np.zeros((4, 4), bool), min_area=-1), ConfigError, "min_area"),
        (lambda: find_people(np.zeros((4, 4), bool), connectivity=6), ConfigError, "connectivity"),
        (lambda: find_people(np.zeros((4, 4), bool), proba=np.zeros((4, 5), np.float32)), DataError, "shape"),
        (lambda: find_people(np.zeros((4, 4), bool), proba=np.zeros((4, 4), np.uint8)), DataError, "float"),
        (lambda: occupancy(np.zeros((0, 3), bool)), DataError, "mask"),
        (lambda: PeopleTracker(iou_threshold=0), ConfigError, "iou_threshold"),
        (lambda: PeopleTracker(max_missed=-1), ConfigError, "max_missed"),
        (lambda: PeopleTracker(max_missed=2.5), ConfigError, "max_missed"),
        (lambda: PeopleTracker().update([(0, 0, 1, 1)]), DataError, "Person"),
    ],
)
def test_bad_arguments_raise_one_line_errors(call, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match) as excinfo:
        call()
    assert "\n" not in str(excinfo.value)
