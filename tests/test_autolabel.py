"""Auto-labelling: teachers, ensembles and TTA, label policy, the resumable job, review sheets and the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from peopleseg.autolabel.ensemble import EnsembleTeacher, TTATeacher, parse_tta
from peopleseg.autolabel.labels import LabelPolicy, LabelStats, agreement_iou, with_prior
from peopleseg.autolabel.run import AutolabelConfig, Manifest, autolabel, plan_inputs
from peopleseg.autolabel.specs import TeacherSpec, build_teacher
from peopleseg.autolabel.teacher import StatelessTeacher, Teacher
from peopleseg.cli import main
from peopleseg.data.folder import SegmentationFolder
from peopleseg.errors import ConfigError, DataError, ModelError


class RedTeacher(StatelessTeacher):
    """Person probability = how red a pixel is: an exact, checkable teacher."""

    name = "red"

    def __init__(self) -> None:
        self.calls = 0

    def label_one(self, frame: np.ndarray) -> np.ndarray:
        self.calls += 1
        red = frame[..., 0].astype(np.float32) - frame[..., 1:].mean(-1)
        return np.clip(red / 128.0, 0.0, 1.0)


class LeftHalfTeacher(StatelessTeacher):
    """The left half is a person: shows whether TTA flips a view back before averaging."""

    name = "left"

    def label_one(self, frame: np.ndarray) -> np.ndarray:
        probs = np.zeros(frame.shape[:2], np.float32)
        probs[:, : frame.shape[1] // 2] = 1.0
        return probs


class CountingTeacher:
    """A recurrent teacher: its output is the number of frames seen since the last reset (/100)."""

    name = "counting"

    def __init__(self) -> None:
        self.seen = 0
        self.resets = 0

    def label(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for frame in frames:
            self.seen += 1
            out.append(np.full(frame.shape[:2], min(1.0, self.seen / 100), np.float32))
        return out

    def reset(self) -> None:
        self.seen = 0
        self.resets += 1

    def close(self) -> None:
        pass


def red_scene(seed: int, size: tuple[int, int] = (40, 56)) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a red rectangle (the 'person') and its 0/1 mask."""
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), 110, np.uint8)
    mask = np.zeros(size, np.uint8)
    top, left = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
    image[top : top + size[0] // 3, left : left + size[1] // 3] = (230, 20, 20)
    mask[top : top + size[0] // 3, left : left + size[1] // 3] = 1
    return image, mask


def write_scenes(folder: Path, count: int, masks: Path | None = None) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    truths = []
    for index in range(count):
        image, mask = red_scene(index)
        Image.fromarray(image).save(folder / f"scene_{index}.png")
        if masks is not None:
            masks.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask * 255).save(masks / f"scene_{index}.png")
        truths.append(mask)
    return truths


def write_video(path: Path, frames: int = 12) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.full((48, 64, 3), 100, np.uint8)
            image[10:30, 4 + 2 * i : 20 + 2 * i] = (230, 20, 20)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def read_records(out: Path) -> list[dict]:
    """The manifest's records after its settings record."""
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return [r for r in records if "settings" not in r]


# --- label policy -------------------------------------------------------------------------------------------------


def test_label_policy_gives_ignore_between_thresholds() -> None:
    probs = np.array([[0.0, 0.3, 0.31, 0.5, 0.69, 0.7, 1.0]], np.float32)
    labels = LabelPolicy(0.3, 0.7).to_label(probs)
    assert labels.tolist() == [[0, 0, 255, 255, 255, 1, 1]]
    hard = LabelPolicy(0.5, 0.5).to_label(probs)
    assert hard.tolist() == [[0, 0, 0, 1, 1, 1, 1]]  # a tie at the threshold is person
    with pytest.raises(ConfigError, match="background_below"):
        LabelPolicy(0.8, 0.2)


def test_prior_merge_keeps_agreement_and_fills_unsure_pixels() -> None:
    teacher = np.array([[0, 1, 255, 1, 0]], np.uint8)
    prior = np.array([[0, 1, 1, 0, 1]], np.uint8)
    assert with_prior(teacher, prior).tolist() == [[0, 1, 1, 255, 255]]
    assert agreement_iou(teacher, prior) == pytest.approx(1 / 3)
    stats = LabelStats.of(with_prior(teacher, prior))
    assert stats.confidence == pytest.approx(0.6) and stats.person_fraction == pytest.approx(0.4)


# --- ensembles and TTA --------------------------------------------------------------------------------------------


def test_ensemble_is_the_weighted_mean() -> None:
    frame = np.zeros((4, 6, 3), np.uint8)
    ensemble = EnsembleTeacher([LeftHalfTeacher(), RedTeacher()], weights=[3, 1])
    probs = ensemble.label([frame])[0]
    assert np.allclose(probs[:, :3], 0.75) and np.allclose(probs[:, 3:], 0.0)
    assert "left" in ensemble.name and "red" in ensemble.name
    with pytest.raises(ConfigError, match="weights"):
        EnsembleTeacher([RedTeacher()], weights=[1, 2])


def test_tta_flip_maps_each_view_back() -> None:
    frame = np.zeros((4, 8, 3), np.uint8)
    tta = TTATeacher(LeftHalfTeacher, parse_tta("flip"))
    probs = tta.label([frame])[0]
    # The plain view says "left half", the flipped view (flipped back) says "right half": the mean is 0.5 everywhere.
    assert np.allclose(probs, 0.5)
    scaled = TTATeacher(RedTeacher, parse_tta("0.5,2"))
    image, _ = red_scene(0)
    assert scaled.label([image])[0].shape == image.shape[:2]
    assert parse_tta("flip,1.0,flip") == [(False, 1.0), (True, 1.0)]
    with pytest.raises(ConfigError, match="tta"):
        parse_tta("rotate")


def test_teacher_specs_parse_and_fail_clearly(tmp_path: Path) -> None:
    spec = TeacherSpec.parse("rvm:/opt/rvm,ratio=0.5,weight=2")
    assert (spec.kind, spec.arg, spec.options, spec.weight) == ("rvm", "/opt/rvm", {"ratio": "0.5"}, 2.0)
    with pytest.raises(ConfigError, match="unknown kind 'sam'"):
        TeacherSpec.parse("sam:model")
    with pytest.raises(ConfigError, match="onnx needs a model"):
        TeacherSpec.parse("onnx")
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        TeacherSpec.parse("mediapipe:landscape,colour=1").build()
    with pytest.raises(ModelError, match="npm install"):
        build_teacher([f"rvm:{tmp_path}"])


def test_peopleseg_and_onnx_models_are_teachers(tmp_path: Path) -> None:
    from peopleseg.export.onnx_export import export_onnx
    from peopleseg.models.registry import build_model
    from peopleseg.models.weights import save_model

    model = build_model("segformer_b0").eval()
    weights = save_model(model, tmp_path / "b0.safetensors")
    onnx_path = export_onnx(model, tmp_path / "b0.onnx").path
    image, _ = red_scene(1, size=(50, 70))
    torch_probs = build_teacher([f"peopleseg:{weights}"]).label([image])[0]
    onnx_probs = build_teacher([f"onnx:{onnx_path}"]).label([image])[0]
    assert torch_probs.shape == onnx_probs.shape == (50, 70)
    assert ((torch_probs > 0.5) == (onnx_probs > 0.5)).mean() > 0.99
    # The Segmenter's own views: a rescaled image would reach a letterboxing model as the same network input.
    flipped = build_teacher([f"onnx:{onnx_path},tta=flip"])
    assert [view.name for view in flipped._segmenter.views] == ["usual", "usual+flip"]  # type: ignore[attr-defined]
    # The manifest says how labels were made: the kind, the weights' content, the resize policy and the views.
    assert re.fullmatch(r"onnx:b0\.onnx@[0-9a-f]{12},resize\+views\(usual,usual\+flip\)", flipped.name)
    torch_name = build_teacher([f"peopleseg:{weights},resize=letterbox"]).name
    assert re.fullmatch(r"peopleseg:b0\.safetensors@[0-9a-f]{12},letterbox", torch_name)
    other = save_model(build_model("segformer_b0").eval(), tmp_path / "other" / "b0.safetensors")  # same name
    assert build_teacher([f"peopleseg:{other},resize=letterbox"]).name != torch_name
    mirrored = build_teacher([f"onnx:{onnx_path}"]).label([np.ascontiguousarray(image[:, ::-1])])[0][:, ::-1]
    np.testing.assert_allclose(flipped.label([image])[0], (onnx_probs + mirrored) / 2, atol=1e-5)
    with pytest.raises(ConfigError, match="tta: expected"):
        build_teacher([f"peopleseg:{weights},tta=spin"])


def test_mediapipe_adapter_uses_the_selfie_model(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, object] = {}

    class FakeSelfie:
        def __init__(self, model_selection: int) -> None:
            calls["model_selection"] = model_selection

        def process(self, rgb: np.ndarray) -> types.SimpleNamespace:
            calls["shape"] = rgb.shape
            return types.SimpleNamespace(segmentation_mask=np.full(rgb.shape[:2], 0.8, np.float32))

        def close(self) -> None:
            calls["closed"] = True

    fake = types.ModuleType("mediapipe")
    fake.solutions = types.SimpleNamespace(selfie_segmentation=types.SimpleNamespace(SelfieSegmentation=FakeSelfie))
    monkeypatch.setitem(sys.modules, "mediapipe", fake)
    teacher = build_teacher(["mediapipe:general"])
    probs = teacher.label([np.zeros((10, 12, 3), np.uint8)])[0]
    teacher.close()
    assert calls == {"model_selection": 0, "shape": (10, 12, 3), "closed": True}
    assert probs.shape == (10, 12) and np.allclose(probs, 0.8)
    monkeypatch.setitem(sys.modules, "mediapipe", types.ModuleType("mediapipe"))
    with pytest.raises(ModelError, match=r"mediapipe==0\.10\.21"):
        build_teacher(["mediapipe"])


# --- the job ------------------------------------------------------------------------------------------------------


def test_autolabel_folder_writes_a_trainable_dataset(tmp_path: Path) -> None:
    truths = write_scenes(tmp_path / "shop" / "images", 5)
    out = tmp_path / "labels"
    summary = autolabel([str(tmp_path / "shop" / "images")], out, RedTeacher(), progress=False)
    assert summary.labelled == 5 and not summary.failed
    records = read_records(out)
    assert {r["key"] for r in records} == {f"shop/scene_{i}" for i in range(5)}  # the source is the parent folder
    assert all(r["teacher"] == "red" and 0 < r["confidence"] <= 1 for r in records)
    dataset = SegmentationFolder(out / "images", out / "masks", subset_from_subfolder=True)
    assert len(dataset) == 5 and dataset.subsets == ["shop"]
    for index in range(5):
        sample = dataset.load(index)
        truth = truths[int(Path(sample["path"]).stem.split("_")[1])]
        assert ((sample["mask"] == 1) == (truth == 1)).all()
    probs = np.asarray(Image.open(out / records[0]["probs"]))
    assert probs.dtype == np.uint8 and probs.max() == 255


def test_autolabel_resumes_and_survives_a_cut_manifest_line(tmp_path: Path) -> None:
    write_scenes(tmp_path / "in", 4)
    out = tmp_path / "labels"
    first = RedTeacher()
    autolabel([str(tmp_path / "in")], out, first, progress=False)
    assert first.calls == 4
    # A crash mid-write leaves half a line: it is dropped, and that sample is labelled again.
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:4]) + lines[4][:20])  # the settings record and 3 samples kept
    second = RedTeacher()
    summary = autolabel([str(tmp_path / "in")], out, second, progress=False)
    assert second.calls == 1 and summary.skipped_done == 3 and summary.labelled == 1
    assert len(read_records(out)) == 4
    # A sample whose files vanished is redone too.
    (out / read_records(out)[0]["mask"]).unlink()
    third = RedTeacher()
    autolabel([str(tmp_path / "in")], out, third, progress=False)
    assert third.calls == 1


def test_prior_masks_merge_and_report_agreement(tmp_path: Path) -> None:
    write_scenes(tmp_path / "data" / "images", 3, masks=tmp_path / "data" / "masks")
    config = AutolabelConfig(prior_masks=str(tmp_path / "data" / "masks"))
    summary = autolabel([str(tmp_path / "data" / "images")], tmp_path / "out", RedTeacher(), config, progress=False)
    assert summary.labelled == 3 and summary.prior_agreement == [1.0, 1.0, 1.0]
    assert all(r["teacher"] == "red+prior" for r in read_records(tmp_path / "out"))


def test_min_confidence_drops_unsure_samples_and_bad_files_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_scenes(folder, 2)
    Image.fromarray(np.full((20, 20, 3), 180, np.uint8)).save(folder / "grey.png")  # all 0.0: fully sure
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")

    class HalfSure(RedTeacher):
        def label_one(self, frame: np.ndarray) -> np.ndarray:
            probs = super().label_one(frame)
            probs[probs == 0] = 0.5 if frame[0, 0, 0] == 110 else 0.0  # the scenes are unsure, grey is not
            return probs

    config = AutolabelConfig(min_confidence=0.9)
    summary = autolabel([str(folder)], tmp_path / "out", HalfSure(), config, progress=False)
    assert summary.labelled == 1 and summary.dropped_low_confidence == 2
    assert len(summary.failed) == 1 and "broken.jpg" in summary.failed[0]


def test_video_state_is_carried_and_resumes_with_warmup(tmp_path: Path) -> None:
    video = write_video(tmp_path / "walk.mp4", frames=12)
    out = tmp_path / "labels"
    config = AutolabelConfig(video_every=3, video_warmup=2, background_below=0.0, person_above=1.0)
    teacher = CountingTeacher()
    summary = autolabel([str(video)], out, teacher, config, progress=False)
    records = read_records(out)
    frames = [r["frame"] for r in records if "frame" in r]
    assert frames == [0, 3, 6, 9] and summary.labelled == 4
    assert {"video_done": str(video), "max_frames": None} in records
    probs = [np.asarray(Image.open(out / r["probs"])) for r in records if "frame" in r]
    # One state across the whole video: the probability grows with every frame seen.
    assert [int(p[0, 0]) for p in probs] == [round(255 * n / 100) for n in (1, 4, 7, 10)]
    # Done videos are skipped; an interrupted one restarts two frames before its first missing sample.
    assert autolabel([str(video)], out, CountingTeacher(), config, progress=False).skipped_done == 1
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(lines[:3]))  # settings, frames 0 and 3 kept; 6, 9, done mark lost
    resumed = CountingTeacher()
    summary = autolabel([str(video)], out, resumed, config, progress=False)
    assert summary.labelled == 2 and resumed.seen == 12 - 2  # frames 2..11: warm-up 2, 3, then 4..11
    assert [r["frame"] for r in read_records(out) if "frame" in r] == [0, 3, 6, 9]


def test_plan_inputs_rejects_collisions_and_missing_inputs(tmp_path: Path) -> None:
    write_scenes(tmp_path / "a" / "cam", 1)
    write_scenes(tmp_path / "b" / "cam", 1)
    with pytest.raises(DataError, match="same sample"):
        plan_inputs([str(tmp_path / "a" / "cam"), str(tmp_path / "b" / "cam")])
    with pytest.raises(DataError, match="no such file or folder"):
        plan_inputs([str(tmp_path / "nope")])
    stills, _ = plan_inputs([str(tmp_path / "a" / "cam" / "*.png")])
    assert [s.key for s in stills] == ["cam/scene_0"]


def test_manifest_rejects_damage_before_the_last_line(tmp_path: Path) -> None:
    (tmp_path / "manifest.jsonl").write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(DataError, match=r"manifest\.jsonl:2"):
        Manifest(tmp_path)


# --- CLI and review -----------------------------------------------------------------------------------------------


def test_cli_autolabel_and_review(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from peopleseg.export.onnx_export import export_onnx
    from peopleseg.models.registry import build_model

    write_scenes(tmp_path / "in", 3)
    model = export_onnx(build_model("segformer_b0").eval(), tmp_path / "teacher.onnx").path
    out = tmp_path / "labels"
    argv = ["autolabel", str(tmp_path / "in"), "-o", str(out), "-t", f"onnx:{model}", "--tta", "flip", "-q"]
    assert main([*argv, "--shards", str(tmp_path / "shards")]) == 0
    printed = capsys.readouterr().out
    assert "labelled 3 samples" in printed and "shards" in printed
    assert "tta(flip)" in read_records(out)[0]["teacher"]
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == ["shard-000000.tar"]
    assert main(argv) == 0
    assert "0 samples" in capsys.readouterr().out
    write_scenes(tmp_path / "in", 4)  # one more photo: labelled, and the shards packed again to hold it
    assert main([*argv, "--shards", str(tmp_path / "shards")]) == 0
    assert "labelled 1 samples" in capsys.readouterr().out
    assert json.loads((tmp_path / "shards" / "shard-index.json").read_text())["samples"] == 4
    assert main(["autolabel", "review", str(out), "-o", str(tmp_path / "sheet.png")]) == 0
    assert Image.open(tmp_path / "sheet.png").size == (4 * 256, 256)
    assert main(["autolabel", "review", str(out), "-o", str(tmp_path / "sheet.html"), "--sort", "random"]) == 0
    page = (tmp_path / "sheet.html").read_text()
    assert page.count("<figure>") == 4 and "data:image/jpeg;base64," in page
    assert main(["autolabel", str(tmp_path / "in"), "-o", str(out), "-t", "mediapipe:tiny"]) == 1
    assert "model must be one of" in capsys.readouterr().err
    assert main(["autolabel", "review", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 1
    assert "no manifest.jsonl" in capsys.readouterr().err
    # A missing input is named before any teacher is loaded (or found missing).
    assert main(["autolabel", str(tmp_path / "nope"), "-o", str(out), "-t", "mediapipe"]) == 1
    assert "nope: no such file or folder" in capsys.readouterr().err


def test_teacher_protocol_is_satisfied() -> None:
    for teacher in (RedTeacher(), CountingTeacher(), EnsembleTeacher([RedTeacher()])):
        assert isinstance(teacher, Teacher)


# --- real teachers, where they are installed -----------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("PEOPLESEG_RVM_DIR") or shutil.which("node") is None,
    reason="set PEOPLESEG_RVM_DIR to an npm install of RVM and TF.js (README: auto-label)",
)
def test_rvm_finds_the_astronaut(data_dir: Path) -> None:
    from peopleseg.data.image_io import read_image

    image = read_image(data_dir / "astronaut.jpg")
    with build_teacher(["rvm:ratio=0.5"]) as teacher:  # type: ignore[attr-defined]
        probs = teacher.label([image])[0]
    person = probs > 0.5
    assert 0.3 < person.mean() < 0.6  # a large centred portrait
    assert person[300:450, 60:300].mean() > 0.9 and person[40:120, 180:280].mean() > 0.9  # body and head
    assert person[:40, :60].mean() < 0.05


def test_real_mediapipe_finds_the_astronaut(data_dir: Path) -> None:
    pytest.importorskip("mediapipe", reason="mediapipe==0.10.21 lives in its own environment (README: auto-label)")
    from peopleseg.data.image_io import read_image

    image = read_image(data_dir / "astronaut.jpg")
    teacher = build_teacher(["mediapipe"])
    person = teacher.label([image])[0] > 0.5
    teacher.close()
    assert 0.3 < person.mean() < 0.7 and person[300:450, 60:300].mean() > 0.9


# --- Ray ----------------------------------------------------------------------------------------------------------


def test_autolabel_on_local_ray_matches_local_run(tmp_path: Path) -> None:
    pytest.importorskip("ray.data", reason="the ray extra is not installed")
    from peopleseg.autolabel.ray_runner import autolabel_on_ray
    from peopleseg.export.onnx_export import export_onnx
    from peopleseg.models.registry import build_model

    write_scenes(tmp_path / "in", 5)
    write_video(tmp_path / "in" / "walk.mp4", frames=6)
    model = export_onnx(build_model("segformer_b0").eval(), tmp_path / "teacher.onnx").path
    specs = [f"onnx:{model}"]
    config = AutolabelConfig(video_every=2)
    local = autolabel([str(tmp_path / "in")], tmp_path / "local", build_teacher(specs), config, progress=False)
    on_ray = autolabel_on_ray([str(tmp_path / "in")], tmp_path / "ray", specs, config, workers=2, progress=False)
    assert on_ray.labelled == local.labelled == 5 + 3 and not on_ray.failed
    by_key = {r["key"]: r for r in read_records(tmp_path / "local") if "key" in r}
    for record in read_records(tmp_path / "ray"):
        if "key" in record:
            mine = np.asarray(Image.open(tmp_path / "ray" / record["mask"]))
            theirs = np.asarray(Image.open(tmp_path / "local" / by_key[record["key"]]["mask"]))
            assert (mine == theirs).mean() > 0.999, record["key"]
    again = autolabel_on_ray([str(tmp_path / "in")], tmp_path / "ray", specs, config, workers=2, progress=False)
    assert again.labelled == 0 and again.skipped_done == 6


FAKE_NODE = """#!{python}
# A stand-in for `node rvm_worker.js ROOT`: the same protocol, but it writes 20 KiB to stderr on every frame (as a
# TF.js that warns on every call would) and answers alpha = the frame's red channel. {crash}
import struct, sys
sys.stdout.buffer.write(b"ready\\n"); sys.stdout.flush()
count = 0
while True:
    header = sys.stdin.buffer.read(16)
    height, width, reset, ratio = struct.unpack("<4i", header)
    if height == 0:
        break
    frame = sys.stdin.buffer.read(height * width * 3)
    sys.stderr.write("warning: this model execution did not contain any dynamic nodes\\n" * 320)
    sys.stderr.flush()
    count += 1
    if count == {crash_at}:
        sys.stderr.write("Error: out of memory in the wasm heap\\n"); sys.stderr.flush(); sys.exit(3)
    sys.stdout.buffer.write(frame[0::3]); sys.stdout.flush()
"""


@pytest.mark.parametrize("crash_at", [0, 5])
def test_rvm_worker_that_talks_a_lot_on_stderr_never_blocks(tmp_path: Path, crash_at: int) -> None:
    import threading

    from peopleseg.autolabel.rvm import REQUIRED, RvmTeacher

    for item in REQUIRED:  # a fake npm install: only its file names are checked before Node runs
        (tmp_path / "node_modules" / item).mkdir(parents=True, exist_ok=True)
    node = tmp_path / "node"
    node.write_text(FAKE_NODE.format(python=sys.executable, crash="", crash_at=crash_at))
    node.chmod(0o755)
    teacher = RvmTeacher(tmp_path, node=str(node))
    frame = np.zeros((40, 50, 3), np.uint8)
    frame[:, :20, 0] = 255
    outcome: dict[str, object] = {}

    def label() -> None:
        try:
            outcome["alphas"] = [teacher.label([frame])[0] for _ in range(12)]  # 12 x 20 KiB: past a pipe's 64 KiB
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=label, daemon=True)
    worker.start()
    worker.join(60)
    try:
        assert not worker.is_alive(), "the worker blocked on its full stderr pipe"
        if crash_at:
            assert "Error: out of memory in the wasm heap" in str(outcome["error"])  # the log's end is still read
        else:
            alphas = outcome["alphas"]
            assert len(alphas) == 12 and alphas[-1][:, :20].min() == 1.0 and alphas[-1][:, 20:].max() == 0.0
    finally:
        teacher.close()
