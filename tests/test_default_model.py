"""The bundled default model: it ships small, loads offline by default, and finds the people in real pictures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from peopleseg.assets import DEFAULT_WEIGHTS, default_weights_path
from peopleseg.cli import main
from peopleseg.infer.segmenter import Segmenter
from peopleseg.models.weights import METADATA_KEY


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no random-weights warning may appear
        return Segmenter.from_pretrained()


def test_default_weights_ship_in_the_package_small_and_fp16() -> None:
    assert default_weights_path() == DEFAULT_WEIGHTS
    assert DEFAULT_WEIGHTS.stat().st_size < 10 * 2**20
    with safe_open(str(DEFAULT_WEIGHTS), "pt") as weights:
        info = json.loads(weights.metadata()[METADATA_KEY])
        dtypes = {weights.get_tensor(key).dtype for key in weights.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert info["arch"] == "segformer_b0" and info["classes"] == ["background", "person"]
    assert info["resize"] == "letterbox"  # trained on aspect-preserving crops: images meet it letterboxed
    assert "torch.float16" in {str(d) for d in dtypes}
    assert (DEFAULT_WEIGHTS.parent / "MODEL_CARD.md").is_file()


def test_default_finds_the_pedestrians_in_the_held_out_clip(segmenter: Segmenter, data_dir: Path) -> None:
    import av

    with av.open(str(data_dir / "vtest_clip.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % 10 == 0]
    counts, fractions = [], []
    for result in segmenter.stream(frames):
        counts.append(len(result.people))
        fractions.append(result.person_fraction)
    # Several walkers are in every frame, each a small part of a wide elevated view.
    assert np.median(counts) >= 3, counts
    assert all(0.003 < f < 0.1 for f in fractions), fractions


def test_the_fast_int8_graph_agrees_with_the_exact_model_on_real_photos(segmenter: Segmenter, data_dir: Path) -> None:
    assert segmenter.backend.name == "onnxruntime" and segmenter.backend.path.name.endswith("-int8.onnx")
    assert segmenter.resize == "letterbox"  # the model's own policy, read from the fast graph's metadata
    exact = Segmenter.from_pretrained(backend="torch")
    for path in sorted(data_dir.glob("*.jpg")):
        agreement = np.mean(segmenter.predict(path) == exact.predict(path))
        assert agreement >= 0.99, (path.name, agreement)


def test_cli_uses_the_default_model_without_warning(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = str(data_dir / "vtest_clip.mp4")
    assert main(["infer", clip, "-o", str(tmp_path), "--output", "json", "--max-frames", "6", "-q"]) == 0
    assert "random" not in capsys.readouterr().err
    frames = [json.loads(line) for line in (tmp_path / "vtest_clip.jsonl").read_text().splitlines()]
    assert len(frames) == 6 and min(f["people_count"] for f in frames) >= 3
