"""Evaluation end to end on synthetic scenes whose people are red, scored by a stand-in model that calls the red
channel 'person': perfect masks give 100, corrupted masks give exactly the hand-computed loss, and the reports and
the gallery show what happened."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from peopleseg import Segmenter, build_model
from peopleseg.engine.evaluate import EvalConfig, EvalResult, evaluate, shard_indices
from peopleseg.engine.report import markdown_table, summary, write_reports
from peopleseg.errors import ConfigError, DataError
from peopleseg.models import ModelInfo
from peopleseg.models.info import HALF_MEAN, HALF_STD

HEIGHT, WIDTH = 64, 96


class RedIsPerson:
    """A stand-in backend: logits at 1/4 resolution saying 'person' where the red channel is bright."""

    name = "fake"
    output_kind = "logits"
    device = torch.device("cpu")

    def __init__(self, input_size: tuple[int, int] = (HEIGHT, WIDTH)) -> None:
        self.info = ModelInfo(arch="fake", mean=HALF_MEAN, std=HALF_STD, input_size=input_size)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        red = F.avg_pool2d(pixels[:, :1], 4) * 8
        return torch.cat([-red, red], dim=1)


def _stripe(top: int, bottom: int, height: int = HEIGHT, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """A red band across the whole width, its edges on the model's 4-pixel grid: predicted exactly, pixel for pixel,
    at the network's input size."""
    image = np.full((height, width, 3), 40, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    image[top:bottom] = (255, 0, 0)
    mask[top:bottom] = 1
    return image, mask


def _dataset(count: int = 4) -> list[dict]:
    samples = []
    for i in range(count):
        image, mask = _stripe(8 + 4 * i, 40 + 4 * i)
        samples.append({"image": image, "mask": mask, "path": f"img{i}.png", "subset": "coco" if i % 2 else "crowd"})
    return samples


def _segmenter(**kwargs) -> Segmenter:
    return Segmenter("segformer_b0", backend=RedIsPerson(), **kwargs)


def _hand_iou(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    valid = truth != 255
    intersection = np.sum((pred == label) & (truth == label) & valid)
    union = np.sum(((pred == label) | (truth == label)) & valid)
    return intersection / union


def test_perfect_predictions_score_100() -> None:
    result = evaluate(_segmenter(), _dataset(), EvalConfig(batch_size=3), progress=False)
    assert result.overall["miou"] == 1.0
    assert result.overall["iou"] == [1.0, 1.0]
    assert result.overall["acc"] == 1.0
    assert result.images == 4 and result.overall["images"] == 4
    assert list(result.subsets) == ["coco", "crowd"]
    assert result.subsets["coco"]["images"] == 2
    assert result.classes == ["background", "person"]


def test_corrupted_masks_give_the_hand_computed_miou() -> None:
    samples = _dataset()
    clean = [s["mask"].copy() for s in samples]
    samples[0]["mask"][0:4, :10] = 1  # 40 background pixels called person in the truth
    samples[1]["mask"][20:30, 5:25] = 0  # 200 person pixels lost
    samples[2]["mask"][:, 50:] = 255  # half the image ignored
    result = evaluate(_segmenter(), samples, EvalConfig(), progress=False)
    # The model predicts the clean masks exactly, so the expected numbers come from clean vs corrupted truth.
    preds, truth = np.stack(clean), np.stack([s["mask"] for s in samples])
    expected = [_hand_iou(preds, truth, label) for label in (0, 1)]
    assert result.overall["iou"] == pytest.approx(expected)
    assert result.overall["miou"] == pytest.approx(np.mean(expected))
    assert result.overall["miou"] < 0.99
    assert result.overall["pixels"] == np.sum(truth != 255)
    crowd = [0, 2]  # the even images
    expected_crowd = [_hand_iou(preds[crowd], truth[crowd], label) for label in (0, 1)]
    assert result.subsets["crowd"]["iou"] == pytest.approx(expected_crowd)


def test_worst_images_come_in_order_with_their_predictions() -> None:
    samples = _dataset(5)
    for i, lost in enumerate([300, 0, 900, 100, 600]):
        rows = np.flatnonzero(samples[i]["mask"].reshape(-1) == 1)[:lost]
        samples[i]["mask"].reshape(-1)[rows] = 0
    clean = [_stripe(8 + 4 * i, 40 + 4 * i)[1] for i in range(5)]
    result = evaluate(_segmenter(), samples, EvalConfig(worst=3, batch_size=2), progress=False)
    scores = {f"img{i}.png": _hand_iou(clean[i], samples[i]["mask"], 1) for i in range(5)}
    assert [w.path for w in result.worst] == ["img2.png", "img4.png", "img0.png"]
    assert [w.score for w in result.worst] == pytest.approx([scores[w.path] for w in result.worst])
    for worst in result.worst:
        index = int(worst.path[3])
        assert worst.index == index and worst.subset == samples[index]["subset"]
        assert np.array_equal(worst.pred, clean[index])
        assert np.array_equal(worst.target, samples[index]["mask"])


def test_json_round_trip_and_reports(tmp_path) -> None:
    samples = _dataset()
    for i, sample in enumerate(samples):  # readable paths, so the gallery can show the pictures
        path = tmp_path / "images" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(sample["image"]).save(path)
        sample["path"] = str(path)
        sample["mask"][:4, : 10 * (i + 1)] = 1
    samples[3]["mask"][-4:] = 255
    result = evaluate(_segmenter(), samples, EvalConfig(worst=2), progress=False)

    data = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert data["images"] == 4 and data["classes"] == ["background", "person"]
    assert EvalResult.from_json(data).to_json() == result.to_json()

    table = markdown_table(result)
    for name in ["coco", "crowd", "all"]:
        assert f"\n| {name} |" in table
    assert "| subset | images | mIoU | IoU background | IoU person | pixel acc |" in table
    assert f"{100 * result.overall['miou']:.2f}" in table
    assert "all" in summary(result) and "worst images (person IoU)" in summary(result)

    written = write_reports(result, tmp_path / "report")
    names = sorted(p.relative_to(tmp_path / "report").as_posix() for p in written)
    assert names == [
        "metrics.json",
        "metrics.md",
        "worst.html",
        *[f"worst/{rank:03d}_{kind}.png" for rank in range(2) for kind in ("image", "pred", "truth")],
    ]
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == data
    page = (tmp_path / "report" / "worst.html").read_text()
    assert page.count("<img ") == 6 and result.worst[0].path in page
    thumbnail = np.asarray(Image.open(tmp_path / "report" / "worst" / "000_pred.png"))
    assert thumbnail.shape == (HEIGHT, WIDTH, 3)


def test_gallery_reads_pictures_from_the_dataset_when_paths_are_not_files(tmp_path) -> None:
    samples = _dataset(3)
    result = evaluate(_segmenter(), samples, EvalConfig(worst=1), progress=False)
    assert [p.name for p in write_reports(result, tmp_path / "without")] == ["metrics.json", "metrics.md"]
    assert (tmp_path / "without" / "worst.html").exists() is False
    written = write_reports(result, tmp_path / "with", dataset=samples)
    assert (tmp_path / "with" / "worst.html") in written


def test_resize_and_sliding_on_a_large_image() -> None:
    image, mask = _stripe(100, 260, height=400, width=640)
    mask[:, 300:310] = 255
    samples = [{"image": image, "mask": mask, "path": "large.png", "subset": ""}]
    segmenter = _segmenter()
    for protocol in ("resize", "sliding", "letterbox"):
        result = evaluate(segmenter, samples, EvalConfig(protocol=protocol), progress=False)
        assert result.overall["miou"] > 0.95, protocol
        assert result.subsets == {}
    assert segmenter.resize == "resize"  # the protocol did not change the caller's Segmenter


def test_auto_protocol_is_the_segmenters_own_policy() -> None:
    image, mask = _stripe(100, 260, height=120, width=300)
    samples = [{"image": image, "mask": mask, "path": "wide.png", "subset": ""}]
    backend = RedIsPerson()
    backend.info.resize = "letterbox"
    segmenter = Segmenter("segformer_b0", backend=backend)  # auto: the model's letterbox
    assert evaluate(segmenter, samples, EvalConfig(), progress=False).protocol == "letterbox"
    assert evaluate(segmenter, samples, EvalConfig(protocol="resize"), progress=False).protocol == "resize"
    sliding = Segmenter("segformer_b0", backend=backend, resize="sliding")  # the caller's choice wins over the model's
    assert evaluate(sliding, samples, EvalConfig(), progress=False).protocol == "sliding"


def test_whole_image_protocol_runs_the_model_at_native_size() -> None:
    torch.manual_seed(0)
    info = ModelInfo(arch="segformer_b0", input_size=(HEIGHT, WIDTH))
    segmenter = Segmenter(build_model("segformer_b0", info=info))
    generator = np.random.default_rng(0)
    samples = [
        {
            "image": generator.integers(0, 256, (height, width, 3), dtype=np.uint8),
            "mask": generator.integers(0, 2, (height, width), dtype=np.uint8),
            "path": f"{height}x{width}.png",
            "subset": "",
        }
        for height, width in [(HEIGHT, WIDTH), (50, 70)]
    ]
    whole = evaluate(segmenter, samples, EvalConfig(protocol="whole", worst=2), progress=False)
    assert {w.path: w.pred.shape for w in whole.worst} == {"64x96.png": (64, 96), "50x70.png": (50, 70)}
    assert whole.overall["pixels"] == 64 * 96 + 50 * 70
    # At the network's own input size, "whole" and "resize" feed the model the same pixels.
    resize = evaluate(segmenter, samples[:1], EvalConfig(protocol="resize"), progress=False)
    first = evaluate(segmenter, samples[:1], EvalConfig(protocol="whole"), progress=False)
    assert first.overall["confusion"] == resize.overall["confusion"]


def test_whole_image_protocol_needs_the_torch_backend() -> None:
    with pytest.raises(ConfigError, match="whole-image protocol needs the torch backend, got 'fake'"):
        evaluate(_segmenter(), _dataset(1), EvalConfig(protocol="whole"), progress=False)


def test_bad_labels_name_the_file() -> None:
    samples = _dataset(2)
    samples[1]["mask"][3, 3] = 7
    with pytest.raises(DataError, match=r"img1\.png: mask has label 7, but the model has 2 classes"):
        evaluate(_segmenter(), samples, EvalConfig(), progress=False)
    samples[1]["mask"] = samples[1]["mask"][:, :50]
    with pytest.raises(DataError, match=r"img1\.png: mask is 50x64 but the image is 96x64"):
        evaluate(_segmenter(), samples, EvalConfig(), progress=False)
    with pytest.raises(DataError, match="dataset is empty"):
        evaluate(_segmenter(), [], EvalConfig(), progress=False)


class _ThreeClasses(list):
    classes = ("background", "person", "bicycle")


def test_class_count_mismatch() -> None:
    with pytest.raises(ConfigError, match=r"dataset has 3 classes \(background, person, bicycle\) but the model"):
        evaluate(_segmenter(), _ThreeClasses(_dataset(1)), EvalConfig(), progress=False)


def test_config_checks_and_max_images() -> None:
    with pytest.raises(ConfigError, match="eval protocol 'crop' is unknown"):
        EvalConfig(protocol="crop")
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        EvalConfig(batch_size=0)
    stream = iter(_dataset(4))  # a plain iterator, no length
    result = evaluate(_segmenter(), stream, EvalConfig(max_images=3), progress=True)
    assert result.images == 3 and result.seconds > 0 and not math.isnan(result.images_per_second)


def test_tta_names_the_image_too_big_for_a_view_and_the_report_names_only_views_that_ran() -> None:
    samples = _dataset(2)
    samples[1]["path"] = "big.png"
    too_big = Segmenter("segformer_b0", backend=RedIsPerson(), tta="2", max_pixels=HEIGHT * WIDTH * 2)
    with pytest.raises(DataError, match=r"^img0.png: tta view usualx2 would make a 96x64 image 192x128"):
        evaluate(too_big, samples, EvalConfig(), progress=False)
    sliding = Segmenter("segformer_b0", backend=RedIsPerson(), tta="flip,sliding")
    result = evaluate(sliding, samples, EvalConfig(protocol="sliding"), progress=False)
    assert result.tta == ["usual", "usual+flip"]  # under sliding, the sliding view is the usual one
    assert evaluate(sliding, samples, EvalConfig(protocol="resize"), progress=False).tta == [
        "usual",
        "usual+flip",
        "sliding",
        "sliding+flip",
    ]
    only_sliding = Segmenter("segformer_b0", backend=RedIsPerson(), tta="sliding")
    assert evaluate(only_sliding, samples, EvalConfig(protocol="sliding"), progress=False).tta == []


def test_a_run_cut_short_leaves_out_subsets_it_never_reached() -> None:
    class Declared(list):
        subsets = ("crowd", "coco", "never")

    result = evaluate(_segmenter(), Declared(_dataset(4)), EvalConfig(max_images=1), progress=False)
    assert list(result.subsets) == ["crowd"]
    assert list(evaluate(_segmenter(), Declared(_dataset(4)), progress=False).subsets) == ["crowd", "coco", "never"]


def test_a_report_rewritten_with_fewer_worst_images_keeps_none_of_the_old_gallery(tmp_path) -> None:
    samples = _dataset(4)
    write_reports(evaluate(_segmenter(), samples, EvalConfig(worst=3), progress=False), tmp_path, dataset=samples)
    (tmp_path / "worst" / "notes.png").write_bytes(b"mine")
    assert len(list((tmp_path / "worst").glob("0*.png"))) == 9
    write_reports(evaluate(_segmenter(), samples, EvalConfig(worst=1), progress=False), tmp_path, dataset=samples)
    assert sorted(p.name for p in (tmp_path / "worst").iterdir()) == [
        "000_image.png",
        "000_pred.png",
        "000_truth.png",
        "notes.png",
    ]
    write_reports(evaluate(_segmenter(), samples, EvalConfig(), progress=False), tmp_path, dataset=samples)
    assert not (tmp_path / "worst.html").exists()
    assert [p.name for p in (tmp_path / "worst").iterdir()] == ["notes.png"]


@pytest.mark.parametrize(("n", "world"), [(10, 3), (7, 4), (2, 4), (0, 2), (12, 1)])
def test_shards_cover_every_index_exactly_once(n: int, world: int) -> None:
    shards = [list(shard_indices(n, rank, world)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ConfigError, match="rank must be in"):
        shard_indices(n, world, world)
