"""Test-time augmentation in the Segmenter: the views, their alignment back onto the image, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.segmenter import Segmenter
from peopleseg.infer.tta import View, parse_views
from peopleseg.models.info import ModelInfo
from peopleseg.models.registry import build_model


class _BrightIsPerson:
    """A stand-in network whose person logit at each output pixel is the input's local brightness: its answer
    depends on the pixel, not on where the pixel sits, so every correctly undone view must agree with the plain one.
    Records the size of every input it was given."""

    name, output_kind, device = "stub", "logits", torch.device("cpu")

    def __init__(self, classes: tuple[str, ...] = ("background", "person")) -> None:
        self.info = ModelInfo(arch="stub", classes=list(classes), input_size=(64, 64))
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.sizes += [(pixels.shape[2], pixels.shape[3])] * pixels.shape[0]
        brightness = torch.nn.functional.avg_pool2d(pixels.mean(1, keepdim=True), 4)
        logits = torch.cat([torch.zeros_like(brightness), 8 * brightness], 1)
        return logits if len(self.info.classes) == 2 else torch.cat([logits, logits[:, :1] - 1], 1)


def _left_bright(height: int = 90, width: int = 150) -> np.ndarray:
    image = np.full((height, width, 3), 20, np.uint8)
    image[: height // 2, : width // 3] = 235  # a bright block at the top left: a view undone wrongly moves it
    return image


def test_views_are_every_combination_of_the_tokens() -> None:
    assert parse_views("") == [View()]
    assert parse_views("flip") == [View(), View(flip=True)]
    assert [v.name for v in parse_views("flip,1.5,sliding")] == [
        "usual",
        "usual+flip",
        "usualx1.5",
        "usualx1.5+flip",
        "sliding",
        "sliding+flip",
    ]
    assert parse_views(" FLIP + 0.75 ,flip") == [View(), View(True), View(False, 0.75), View(True, 0.75)]
    assert parse_views("1,1.0") == [View()]  # the usual view, once


@pytest.mark.parametrize(
    ("spec", "words"),
    [("rotate", "got 'rotate'"), ("9", "outside 0.25..4"), ("nan", "outside"), ("0.1", "outside")],
)
def test_bad_tta_is_a_one_line_error_before_the_model_loads(spec: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Segmenter("no/such/weights.safetensors", tta=spec)  # the spec fails first: no file error


@pytest.mark.parametrize("policy", ["resize", "letterbox", "sliding"])
@pytest.mark.parametrize("spec", ["flip", "flip,1.5", "0.5,sliding", "flip,2,sliding"])
def test_every_view_lands_back_on_its_own_pixels(policy: str, spec: str) -> None:
    image = _left_bright()
    plain = Segmenter(build_model("segformer_b0"), backend=_BrightIsPerson(), resize=policy)  # type: ignore[arg-type]
    augmented = Segmenter(
        build_model("segformer_b0"),
        backend=_BrightIsPerson(),  # type: ignore[arg-type]
        resize=policy,
        tta=spec,
    )
    expected, got = plain.segment(image), augmented.segment(image)
    assert got.person.shape == got.mask.shape == image.shape[:2] and got.person.dtype == np.float32
    # Only the block's edges may differ, where resampling at another scale blurs them.
    inner = np.ones(image.shape[:2], bool)
    inner[:, image.shape[1] // 3 - 8 : image.shape[1] // 3 + 8] = False
    inner[image.shape[0] // 2 - 8 : image.shape[0] // 2 + 8] = False
    assert np.array_equal(got.mask[inner], expected.mask[inner])
    assert got.mask[:35, :40].all() and not got.mask[:, 60:].any() and not got.mask[55:].any()
    assert np.abs(got.person - expected.person)[inner].max() < 0.05


def test_scaled_views_run_as_windows_of_the_input_size() -> None:
    # Fixed-size graphs (the fast path, TensorRT) take every view: a scaled view is windows, never a bigger input.
    backend = _BrightIsPerson()
    segmenter = Segmenter(build_model("segformer_b0"), backend=backend, resize="letterbox", tta="2")  # type: ignore[arg-type]
    segmenter.predict(_left_bright(300, 500))
    assert set(backend.sizes) == {(64, 64)}
    # The usual view is one input; at 2x the 500x300 photo fits 128x77, which 64x64 windows cover in 3 x 2.
    assert len(backend.sizes) == 1 + 6


def test_a_view_may_not_grow_an_image_beyond_max_pixels() -> None:
    segmenter = Segmenter(
        build_model("segformer_b0"),
        backend=_BrightIsPerson(),  # type: ignore[arg-type]
        resize="sliding",
        tta="3",
        max_pixels=100_000,
    )
    with pytest.raises(DataError, match=r"tta view usualx3 would make a 150x90 image 450x270, above max_pixels"):
        segmenter.predict(_left_bright())
    segmenter.predict(_left_bright(30, 50))  # 150x90 at 3x is within the limit


def test_flip_averages_the_view_and_its_mirror() -> None:
    torch.manual_seed(0)
    model = build_model("segformer_b0").eval()
    image = np.random.default_rng(0).integers(0, 255, (70, 110, 3), dtype=np.uint8)
    plain = Segmenter(model, backend="torch")
    augmented = Segmenter(model, backend="torch", tta="flip")
    mirrored = plain.predict_proba(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]
    expected = (plain.predict_proba(image) + mirrored) / 2
    got = augmented.segment(image, people=False)
    np.testing.assert_allclose(got.person, expected, atol=1e-5)
    assert np.array_equal(got.mask, (expected > 0.5).astype(np.uint8))


def test_a_person_at_label_0_gets_its_own_label_with_and_without_tta() -> None:
    # The stand-in calls bright pixels label 1: here that is the background, and the dark pixels are the person.
    image = _left_bright()
    for spec in ("", "flip"):
        backend = _BrightIsPerson(("person", "background"))
        result = Segmenter(build_model("segformer_b0"), backend=backend, tta=spec).segment(image)  # type: ignore[arg-type]
        assert result.person_index == 0
        assert (result.mask[:35, :40] == 1).all() and (result.mask[:, 60:] == 0).all(), spec
        assert not result.person_mask[:35, :40].any() and result.person_mask[:, 60:].all(), spec
        assert result.person[:35, :40].max() < 0.5 < result.person[:, 60:].min(), spec


def test_sliding_views_under_the_sliding_policy_are_not_run_twice() -> None:
    counts = {}
    for spec in ("flip", "flip,sliding"):
        backend = _BrightIsPerson()
        Segmenter(build_model("segformer_b0"), backend=backend, resize="sliding", tta=spec).predict(_left_bright())  # type: ignore[arg-type]
        counts[spec] = len(backend.sizes)
    assert counts["flip"] == counts["flip,sliding"] > 2


def test_tta_needs_two_classes_and_evaluate_whole_refuses_it() -> None:
    with pytest.raises(ConfigError, match="two-class model"):
        Segmenter(
            build_model("segformer_b0"),
            backend=_BrightIsPerson(("background", "person", "bag")),  # type: ignore[arg-type]
            tta="flip",
        )
    with pytest.raises(ConfigError, match="two-class model"):  # one view that is not the usual one is tta too
        Segmenter(
            build_model("segformer_b0"),
            backend=_BrightIsPerson(("background", "person", "bag")),  # type: ignore[arg-type]
            tta=[View(flip=True)],
        )
    from peopleseg.engine.evaluate import _predictor

    for tta in ("flip", [View(scale=2.0)]):
        segmenter = Segmenter(build_model("segformer_b0"), backend="torch", tta=tta)
        with pytest.raises(ConfigError, match="cannot take tta"):
            _predictor(segmenter, "whole")


def test_cli_infer_and_evaluate_take_tta(data_dir, tmp_path, capsys) -> None:
    from synthetic import write_people_dataset

    from peopleseg.cli import main

    photo = data_dir / "messi5.jpg"
    assert main(["infer", str(photo), "-o", str(tmp_path), "--output", "mask", "--tta", "flip", "-q"]) == 0
    assert (tmp_path / "messi5_mask.png").exists()
    capsys.readouterr()
    assert main(["infer", str(photo), "-o", str(tmp_path), "--tta", "spin"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tta: expected 'flip', 'sliding' or a scale" in err[0]

    people = write_people_dataset(tmp_path / "people", train=0, val=4)
    folders = ["--images", str(people / "images/val"), "--masks", str(people / "masks/val"), "-q"]
    assert (
        main(["evaluate", "segformer_b0", *folders, "--tta", "flip", "--backend", "torch", "--out", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "| all | 4 |" in out and "test-time views averaged: usual, usual+flip" in out
    assert json.loads((tmp_path / "metrics.json").read_text())["tta"] == ["usual", "usual+flip"]
    assert main(["evaluate", "segformer_b0", *folders, "--tta", "flip", "--protocol", "whole"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert len(err) == 1 and "cannot take tta" in err[0]
