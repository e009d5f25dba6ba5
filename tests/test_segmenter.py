"""Segmenter: masks at the image's own size, the model's own normalisation, and clear errors on bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peopleseg import ConfigError, DataError, Segmenter, build_model
from peopleseg.models import ModelInfo
from peopleseg.models.info import HALF_MEAN, HALF_STD


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(build_model("segformer_b0"))


def test_mask_at_original_size_for_real_photos(segmenter, data_dir) -> None:
    for name, (height, width) in {"messi5.jpg": (342, 548), "grace_hopper.jpg": (600, 512)}.items():
        mask = segmenter.predict(data_dir / name)
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        person = segmenter.predict_proba(data_dir / name)
        assert person.shape == (height, width) and person.dtype == np.float32
        assert person.min() >= 0 and person.max() <= 1
        assert np.array_equal(person > 0.5, mask == 1)


def test_matches_a_by_hand_pipeline() -> None:
    # The uint8 image is resized first (antialiased), then normalised with the model's info; logits are resized
    # before the argmax.
    model = build_model(
        "segformer_b0", info=ModelInfo(arch="segformer_b0", mean=HALF_MEAN, std=HALF_STD, input_size=(256, 320))
    ).eval()
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
    pixels = F.interpolate(pixels, size=(256, 320), mode="bilinear", align_corners=False, antialias=True).float()
    with torch.no_grad():
        logits = model((pixels - 127.5) / 127.5)
    expected = F.interpolate(logits, size=(100, 150), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    assert np.array_equal(Segmenter(model).predict(image), expected)


def test_default_without_bundled_weights_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # A build without the weights file (a trimmed wheel, a failed checkout) must say so, never segment silently.
    from peopleseg.infer import segmenter as segmenter_module

    monkeypatch.setattr(segmenter_module, "default_weights_path", lambda: None)
    with pytest.warns(UserWarning, match="randomly initialised"):
        segmenter = Segmenter.from_pretrained()
    assert segmenter.is_random_init


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        (np.zeros((10, 10, 3), np.int32), "dtype"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_arrays(segmenter, bad, message) -> None:
    with pytest.raises(DataError, match=message):
        segmenter.predict(bad)


def test_bad_files(segmenter, tmp_path) -> None:
    with pytest.raises(DataError, match="no such file"):
        segmenter.predict(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
    with pytest.raises(DataError, match=r"corrupt\.jpg"):
        segmenter.predict(corrupt)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.png: not an image"):
        segmenter.predict(text)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_person_area": -1.0}, "min_person_area must be"),
        ({"min_person_area": float("nan")}, "min_person_area must be"),
        ({"min_person_area": "10"}, "min_person_area must be"),
        ({"max_pixels": 0}, "max_pixels must be"),
        ({"max_pixels": 1.5}, "max_pixels must be"),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(options, message) -> None:
    # Before: a negative min_person_area failed inside every image's segmentation, reported as that image's fault.
    with pytest.raises(ConfigError, match=message) as info:
        Segmenter("no-such-model-is-loaded", **options)
    assert "\n" not in str(info.value)


def test_truncated_jpeg_is_an_error(segmenter, data_dir, tmp_path) -> None:
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((data_dir / "messi5.jpg").read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cut\.jpg: corrupt or truncated"):
        segmenter.predict(cut)


def test_bgr_pil_and_path_inputs_agree(segmenter, data_dir) -> None:
    from PIL import Image

    rgb = np.array(Image.open(data_dir / "messi5.jpg").convert("RGB"))
    expected = segmenter.predict(rgb)
    assert np.array_equal(segmenter.predict(np.ascontiguousarray(rgb[:, :, ::-1]), color="bgr"), expected)
    assert np.array_equal(segmenter.predict(Image.open(data_dir / "messi5.jpg")), expected)
    assert np.array_equal(segmenter.predict(data_dir / "messi5.jpg"), expected)


def test_predict_batch_matches_single(segmenter, data_dir) -> None:
    paths = [data_dir / n for n in ("messi5.jpg", "astronaut.jpg", "grace_hopper.jpg")]
    for path, mask in zip(paths, segmenter.predict_batch(paths), strict=True):
        assert np.array_equal(mask, segmenter.predict(path))


def test_segment_lists_people(segmenter, data_dir) -> None:
    result = segmenter.segment(data_dir / "astronaut.jpg")
    assert result.person_fraction == pytest.approx(float((result.mask == 1).mean()))
    areas = [p.area for p in result.people]
    assert areas == sorted(areas, reverse=True)
    assert all(p.area >= 0.0005 * 512 * 512 for p in result.people)
    record = result.to_dict()
    assert record["people_count"] == len(result.people) and record["width"] == 512


def test_stream_smooths_and_keeps_ids() -> None:
    # A fake model whose person is the red square: it moves 2 px a frame, and ids must stay put.
    from test_resolution import RedIsPerson

    segmenter = Segmenter("segformer_b0", backend=RedIsPerson(input_size=(64, 64)), min_person_area=10)
    frames = []
    for step in range(6):
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[10:40, 10 + 2 * step : 30 + 2 * step] = (255, 0, 0)
        frames.append(frame)
    results = list(segmenter.stream(frames, alpha=0.7))
    assert [len(r.people) for r in results] == [1] * 6
    assert {r.people[0].id for r in results} == {1}
    assert results[-1].people[0].bbox[0] > results[0].people[0].bbox[0]  # the box follows the motion


def test_multiclass_argmax_matches_torch() -> None:
    from peopleseg.infer.segmenter import _argmax_channels

    scores = torch.rand(4, 30, 40)
    scores[2, :5] = scores[1, :5] = 2.0  # ties: the first maximum wins, as in torch.argmax
    assert torch.equal(_argmax_channels(scores).long(), scores.argmax(0))


class _ThreadRecordingBackend:
    """A stand-in backend that records how many threads torch had while the Segmenter ran it."""

    def __init__(self, name: str, info: ModelInfo) -> None:
        self.name, self.info, self.output_kind, self.seen = name, info, "logits", []

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return torch.zeros(pixels.shape[0], 2, pixels.shape[2] // 4, pixels.shape[3] // 4)


@pytest.mark.parametrize(("backend_name", "threads_inside"), [("onnxruntime", 1), ("tensorrt", 1), ("torch", 2)])
def test_torch_runs_one_thread_beside_another_backend(backend_name: str, threads_inside: int) -> None:
    # torch's spinning OpenMP workers slowed onnxruntime (and it them) by 1.4x on 2 cores: beside another
    # backend torch pre- and post-processes on one thread, then gets its threads back.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        backend = _ThreadRecordingBackend(backend_name, ModelInfo(arch="stub", input_size=(64, 64)))
        segmenter = Segmenter(build_model("segformer_b0"), backend=backend)  # type: ignore[arg-type]
        segmenter.predict(np.zeros((40, 30, 3), np.uint8))
        assert backend.seen == [threads_inside]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
