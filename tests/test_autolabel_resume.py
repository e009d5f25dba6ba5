"""Auto-labelling resumes only onto what is really there: sample folders, prior masks, settings, redone samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_autolabel import CountingTeacher, RedTeacher, read_records, write_scenes, write_video

from peopleseg.autolabel.ensemble import EnsembleTeacher
from peopleseg.autolabel.review import write_review
from peopleseg.autolabel.run import AutolabelConfig, autolabel, latest_samples, plan_inputs, read_prior
from peopleseg.autolabel.specs import TeacherSpec
from peopleseg.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


def test_videos_with_one_name_get_their_own_sample_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "day1" / "cam.mp4", tmp_path / "day2" / "cam.mp4"
    for video in (first, second):
        video.parent.mkdir()
        write_video(video, frames=6)
    write_scenes(tmp_path / "walk", 1)
    walk = write_video(tmp_path / "walk.mp4", frames=6)
    _, videos = plan_inputs([str(first), str(second), str(tmp_path / "walk"), str(walk)])
    assert [source for _, source in videos] == ["day1/cam", "day2/cam", f"{tmp_path.name}/walk"]
    config = AutolabelConfig(video_every=3)
    summary = autolabel([str(first), str(second)], tmp_path / "out", RedTeacher(), config, progress=False)
    assert summary.labelled == 4  # frames 0 and 3 of each, none taken for the other's
    keys = {r["key"] for r in read_records(tmp_path / "out") if "key" in r}
    assert keys == {"day1/cam/000000", "day1/cam/000003", "day2/cam/000000", "day2/cam/000003"}
    with pytest.raises(DataError, match="same sample folder 'day1/cam'"):
        plan_inputs([str(first), str(first)])


def test_prior_masks_in_label_and_foreground_formats(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 255, 1]], np.uint8)  # this project's own format: 255 is ignore
    Image.fromarray(labels).save(tmp_path / "ids.png")
    assert read_prior(str(tmp_path / "ids.png"), (1, 4)).tolist() == [[0, 1, 255, 1]]
    Image.fromarray(np.array([[0, 255, 255, 0]], np.uint8)).save(tmp_path / "fg.png")  # 0/255: 255 is a person
    assert read_prior(str(tmp_path / "fg.png"), (1, 4)).tolist() == [[0, 1, 1, 0]]
    Image.fromarray(np.array([[0, 100, 200, 1]], np.uint8)).save(tmp_path / "grey.png")
    assert read_prior(str(tmp_path / "grey.png"), (1, 4)).tolist() == [[0, 0, 1, 0]]


def test_a_done_video_missing_a_frame_is_relabelled_from_there(tmp_path: Path) -> None:
    video = write_video(tmp_path / "walk.mp4", frames=12)
    out = tmp_path / "labels"
    config = AutolabelConfig(video_every=3, video_warmup=2)
    autolabel([str(video)], out, CountingTeacher(), config, progress=False)
    (out / "masks" / "walk" / "000006.png").unlink()
    again = CountingTeacher()
    summary = autolabel([str(video)], out, again, config, progress=False)
    assert summary.labelled == 2 and again.seen == 12 - 4  # warm-up from frame 4, frames 6 and 9 redone
    assert (out / "masks" / "walk" / "000006.png").exists()
    assert autolabel([str(video)], out, CountingTeacher(), config, progress=False).skipped_done == 1


def test_resuming_with_other_settings_is_refused_unless_relabelling(tmp_path: Path) -> None:
    video = write_video(tmp_path / "walk.mp4", frames=12)
    out = tmp_path / "labels"
    autolabel([str(video)], out, RedTeacher(), AutolabelConfig(video_every=2, max_video_frames=4), progress=False)
    # More frames is more of the same labels: a resume, not a conflict.
    more = autolabel([str(video)], out, RedTeacher(), AutolabelConfig(video_every=2, max_video_frames=8))
    assert more.labelled == 2
    with pytest.raises(ConfigError, match=r"video_every 2 -> 3.*relabel=True"):
        autolabel([str(video)], out, RedTeacher(), AutolabelConfig(video_every=3), progress=False)
    with pytest.raises(ConfigError, match="teacher 'red' -> 'counting'"):
        autolabel([str(video)], out, CountingTeacher(), AutolabelConfig(video_every=2), progress=False)
    # A relabel sets the old labels aside (nothing lost, nothing stale left among the new) and starts clean.
    config = AutolabelConfig(video_every=3, relabel=True)
    summary = autolabel([str(video)], out, RedTeacher(), config, progress=False)
    assert summary.labelled == 4 and summary.skipped_done == 0
    assert sorted(p.name for p in (out / "masks" / "walk").iterdir()) == [
        "000000.png",
        "000003.png",
        "000006.png",
        "000009.png",
    ]
    (aside,) = out.glob("replaced-*")
    assert len(list((aside / "masks" / "walk").iterdir())) == 4 and (aside / "manifest.jsonl").exists()
    # The new settings now hold: a plain resume is accepted and finds everything done.
    again = autolabel([str(video)], out, RedTeacher(), AutolabelConfig(video_every=3), progress=False)
    assert again.skipped_done == 1 and again.labelled == 0


def test_prior_masks_and_min_confidence_are_settings_too(tmp_path: Path) -> None:
    write_scenes(tmp_path / "in", 2)
    priors = tmp_path / "priors"
    priors.mkdir()
    for image in (tmp_path / "in").iterdir():
        size = Image.open(image).size
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(priors / f"{image.stem}.png")
    out = tmp_path / "labels"
    autolabel([str(tmp_path / "in")], out, RedTeacher(), progress=False)
    with pytest.raises(ConfigError, match=r"prior_masks None -> '.*priors'"):
        autolabel([str(tmp_path / "in")], out, RedTeacher(), AutolabelConfig(prior_masks=str(priors)), progress=False)
    with pytest.raises(ConfigError, match=r"min_confidence 0.0 -> 0.5"):
        autolabel([str(tmp_path / "in")], out, RedTeacher(), AutolabelConfig(min_confidence=0.5), progress=False)
    # A manifest written before these were recorded resumes under the values that mean "as before".
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    old = json.loads(lines[0])
    del old["settings"]["prior_masks"], old["settings"]["min_confidence"]
    (out / "manifest.jsonl").write_text(json.dumps(old) + "\n" + "".join(lines[1:]))
    assert autolabel([str(tmp_path / "in")], out, RedTeacher(), progress=False).skipped_done == 2
    with pytest.raises(ConfigError, match="min_confidence"):
        autolabel([str(tmp_path / "in")], out, RedTeacher(), AutolabelConfig(min_confidence=0.5), progress=False)


def test_inputs_kept_under_the_output_folder_still_count(tmp_path: Path) -> None:
    write_scenes(tmp_path / "data" / "raw", 2)
    summary = autolabel([str(tmp_path / "data" / "raw")], tmp_path / "data", RedTeacher(), progress=False)
    assert summary.labelled == 2  # only what autolabel writes there (images/, masks/, probs/) is left out


def test_an_output_folder_inside_the_input_is_not_input(tmp_path: Path) -> None:
    write_scenes(tmp_path / "shop", 2)
    out = tmp_path / "shop" / "labels"
    autolabel([str(tmp_path / "shop")], out, RedTeacher(), progress=False)
    summary = autolabel([str(tmp_path / "shop")], out, RedTeacher(), progress=False)
    assert summary.labelled == 0 and summary.skipped_done == 2
    assert all(r["key"].startswith("shop/scene_") for r in read_records(out))


class HalfSure(RedTeacher):
    """Everything unsure: dropped by any min_confidence."""

    def label_one(self, frame: np.ndarray) -> np.ndarray:
        return np.full(frame.shape[:2], 0.5, np.float32)


def test_a_redone_sample_dropped_as_unsure_stops_counting(tmp_path: Path) -> None:
    write_scenes(tmp_path / "in", 2)
    out = tmp_path / "labels"
    config = AutolabelConfig(min_confidence=0.5)
    autolabel([str(tmp_path / "in")], out, RedTeacher(), config, progress=False)
    first = read_records(out)[0]
    (out / first["mask"]).unlink()
    # Same settings (the teacher name), different answer this time: the sample is redone and dropped.
    HalfSure.name = "red"
    summary = autolabel([str(tmp_path / "in")], out, HalfSure(), config, progress=False)
    assert summary.dropped_low_confidence == 1
    assert read_records(out)[-1] == {"dropped": first["key"], "source": first["source"], "confidence": 0.0}
    # A dropped sample is not labelled again on resume, and the review sheet leaves it out.
    assert autolabel([str(tmp_path / "in")], out, RedTeacher(), config, progress=False).skipped_done == 2
    assert write_review(out, tmp_path / "sheet.html").read_text().count("<figure>") == 1


def test_review_skips_samples_whose_files_are_gone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_scenes(tmp_path / "in", 3)
    out = tmp_path / "labels"
    autolabel([str(tmp_path / "in")], out, RedTeacher(), progress=False)
    (out / read_records(out)[0]["mask"]).unlink()
    assert write_review(out, tmp_path / "sheet.png") == tmp_path / "sheet.png"
    assert Image.open(tmp_path / "sheet.png").size == (2 * 256, 256)
    assert "1 listed samples have missing" in capsys.readouterr().err


def test_bad_teacher_numbers_are_refused() -> None:
    for spec, message in (
        ("mediapipe:weight=nan", "weight must be a finite number"),
        ("mediapipe:weight=-1", "weight must be"),
        ("rvm:max_side=0", "max_side must be >= 32"),
        ("rvm:max_side=-5", "max_side must be >= 32"),
        ("rvm:ratio=nan", "ratio must be in"),
    ):
        with pytest.raises(ConfigError, match=message):
            TeacherSpec.parse(spec)
    with pytest.raises(ConfigError, match="weights must be"):
        EnsembleTeacher([RedTeacher(), RedTeacher()], [float("nan"), 1.0])


def test_ray_refuses_a_bad_teacher_before_starting_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peopleseg.autolabel import ray_runner

    write_scenes(tmp_path / "in", 1)

    def no_ray() -> None:
        raise AssertionError("Ray was started for a bad teacher spec")

    monkeypatch.setattr(ray_runner, "_ray", no_ray)
    with pytest.raises(ConfigError, match="weight must be"):
        ray_runner.autolabel_on_ray([str(tmp_path / "in")], tmp_path / "out", ["mediapipe:weight=nan"])
    with pytest.raises(ConfigError, match="unknown kind"):
        ray_runner.autolabel_on_ray([str(tmp_path / "in")], tmp_path / "out", ["sam"])
    # A PeoplesegError raised in a worker comes back as itself, not wrapped in Ray's error.
    wrapped = RuntimeError("ray task failed")
    wrapped.cause = ConfigError("bad option")  # type: ignore[attr-defined]
    assert isinstance(ray_runner._peopleseg_error(wrapped), ConfigError)
    assert ray_runner._peopleseg_error(RuntimeError("other")) is None


def test_a_teacher_passed_in_is_left_open(tmp_path: Path) -> None:
    class Closing(RedTeacher):
        closed = False

        def close(self) -> None:
            self.closed = True

    write_scenes(tmp_path / "in", 1)
    teacher = Closing()
    autolabel([str(tmp_path / "in")], tmp_path / "a", teacher, progress=False)
    assert not teacher.closed
    assert autolabel([str(tmp_path / "in")], tmp_path / "b", teacher, progress=False).labelled == 1


def test_latest_samples_reads_a_labels_folder_or_its_manifest(tmp_path: Path) -> None:
    write_scenes(tmp_path / "in", 2)
    autolabel([str(tmp_path / "in")], tmp_path / "labels", RedTeacher(), progress=False)
    by_folder = latest_samples(str(tmp_path / "labels"))
    assert sorted(by_folder) == ["in/scene_0", "in/scene_1"]
    assert latest_samples(tmp_path / "labels" / "manifest.jsonl") == by_folder
    with pytest.raises(DataError, match=r"nowhere/manifest\.jsonl: no such manifest"):
        latest_samples(tmp_path / "nowhere" / "manifest.jsonl")


def test_split_script_counts_each_sample_once_and_survives_a_cut_line(tmp_path: Path) -> None:
    labels, out = tmp_path / "labels", tmp_path / "split"
    labels.mkdir()
    record = {"key": "street/a", "image": "images/street/a.jpg", "confidence": 0.99}
    lines = [
        {"settings": {"teacher": "red"}},
        record,
        {**record, "key": "shanghaitech-partB/p0", "image": "images/shanghaitech-partB/p0.jpg"},
        {**record, "confidence": 0.98},  # street/a redone
        {"key": "street/b", "image": "images/street/b.jpg", "confidence": 0.9},
        {"dropped": "street/b"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (labels / "manifest.jsonl").write_text(text + '{"key": "street/c", "ima')  # a crash cut the last line
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "split_default_data.py"), labels, out, "--pool", tmp_path],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "train.txt").read_text().split() == ["street/a.jpg"]
    assert (out / "heldout.txt").read_text().split() == ["shanghaitech-partB/p0.jpg"]
