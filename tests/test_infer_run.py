"""`peopleseg infer` end to end: every output for photos, and video files, streams and webcams into videos,
mask sequences and per-frame JSONL; bad inputs are reported and skipped, never fatal to the rest."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from peopleseg import Segmenter, build_model
from peopleseg.cli import main
from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.run import expand_inputs, parse_outputs, segment_images, segment_video, stream_stem

av = pytest.importorskip("av")
from test_video import make_video, probe, thread_niceness  # noqa: E402


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(build_model("segformer_b0", info=None), batch_size=4)


@pytest.fixture(scope="module")
def talking_clip(tmp_path_factory) -> str:
    return str(make_video(tmp_path_factory.mktemp("clips") / "walk.mp4", frames=12, size=(96, 64), audio="aac"))


def test_every_image_output(segmenter, data_dir, tmp_path) -> None:
    outputs = parse_outputs("mask,overlay,cutout,blur,pixelate-people,json")
    summary = segment_images(segmenter, [str(data_dir / "messi5.jpg")], tmp_path, outputs, progress=False)
    assert summary.images == 1 and not summary.failed
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "messi5.json",
        "messi5_blur.jpg",
        "messi5_cutout.png",
        "messi5_mask.png",
        "messi5_overlay.jpg",
        "messi5_pixelate.jpg",
    ]
    assert Image.open(tmp_path / "messi5_cutout.png").mode == "RGBA"
    assert Image.open(tmp_path / "messi5_blur.jpg").size == (548, 342)
    record = json.loads((tmp_path / "messi5.json").read_text())
    mask = np.array(Image.open(tmp_path / "messi5_mask.png"))
    assert record["width"] == 548 and record["height"] == 342
    assert record["person_fraction"] == pytest.approx(float((mask == 1).mean()), abs=1e-5)
    assert record["people_count"] == len(record["people"])
    for person in record["people"]:
        x0, y0, x1, y1 = person["bbox"]
        assert 0 <= x0 < x1 <= 548 and 0 <= y0 < y1 <= 342


def test_folder_with_a_corrupt_image_keeps_going(segmenter, data_dir, tmp_path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "photo.jpg").write_bytes((data_dir / "messi5.jpg").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "notes.txt").write_text("ignored: not an image")
    messages: list[str] = []
    inputs = expand_inputs([str(folder)])
    assert [p.rsplit("/", 1)[1] for p in inputs] == ["broken.png", "photo.jpg"]
    summary = segment_images(segmenter, inputs, tmp_path / "out", ["mask"], report=messages.append, progress=False)
    assert summary.images == 1 and summary.failed == [str(folder / "broken.png")]
    assert len(messages) == 1 and "broken.png" in messages[0]
    assert (tmp_path / "out" / "photo_mask.png").exists()


def test_globs_and_missing_inputs(data_dir) -> None:
    assert len(expand_inputs([str(data_dir / "*.jpg")])) == 3
    with pytest.raises(DataError, match="matches no files"):
        expand_inputs([str(data_dir / "*.gif")])
    with pytest.raises(DataError, match="no such file or folder"):
        expand_inputs(["missing/clip.mp4"])
    assert expand_inputs(["rtsp://10.0.0.1/live", "webcam:0"]) == ["rtsp://10.0.0.1/live", "webcam:0"]
    with pytest.raises(ConfigError, match="unknown output 'sepia'"):
        parse_outputs("mask,sepia")


def test_stream_names() -> None:
    assert stream_stem("rtsp://cam1:554/live/main") == "rtsp_cam1_554_live_main"
    assert stream_stem("webcam:0") == "webcam_0"
    assert stream_stem("videos/walk.mp4") == "walk"


def test_video_blur_keeps_audio_and_counts_people(segmenter, talking_clip, tmp_path) -> None:
    summary = segment_video(segmenter, talking_clip, tmp_path, ["blur", "json", "mask"], batch_size=4, progress=False)
    assert summary.frames == 12 and not summary.failed
    info = probe(tmp_path / "walk_blur.mp4")
    assert info["frames"] == 12 and info["audio_codec"] == "aac" and info["audio_s"] > 1.0, info
    lines = (tmp_path / "walk.jsonl").read_text().splitlines()
    assert len(lines) == 12
    records = [json.loads(line) for line in lines]
    assert [r["frame"] for r in records] == list(range(12))
    assert all({"time_s", "occupancy", "people_count", "people", "total_people_seen"} <= set(r) for r in records)
    masks = sorted((tmp_path / "walk_masks").glob("*.png"))
    assert len(masks) == 12 and np.array(Image.open(masks[0])).shape == (64, 96)


def test_virtual_camera_source(segmenter, tmp_path) -> None:
    # lavfi: FFmpeg's test pattern stands in for a webcam: a live source with no end.
    spec = "lavfi:testsrc=size=128x96:rate=5"
    summary = segment_video(segmenter, spec, tmp_path, ["overlay"], max_frames=6, progress=False)
    assert summary.frames == 6
    assert probe(tmp_path / "lavfi_testsrc_size_128x96_rate_5_overlay.mp4")["frames"] == 6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_video_renders_below_the_models_priority(segmenter, talking_clip, tmp_path, monkeypatch) -> None:
    import peopleseg.infer.run as run

    seen: set[int] = set()
    real_render = run.render

    def render(image, result, kind):
        seen.add(thread_niceness())
        return real_render(image, result, kind)

    monkeypatch.setattr(run, "render", render)
    caller = thread_niceness()
    segment_video(segmenter, talking_clip, tmp_path / "a", ["overlay"], max_frames=3, progress=False)
    assert seen == {min(19, caller + run.VIDEO_SIDE_NICENESS)}
    seen.clear()
    segment_video(segmenter, talking_clip, tmp_path / "b", ["overlay"], max_frames=3, progress=False, side_niceness=0)
    assert seen == {caller}


def test_smoothing_reduces_flicker_on_a_still_scene(tmp_path) -> None:
    # A still camera with sensor noise: the model's raw masks flicker at their edges; smoothing holds them still.
    from peopleseg.infer.smoothing import flicker

    still = make_video(tmp_path / "still.mp4", frames=16, size=(128, 96), noise=True)
    results = {}
    for smooth in (False, True):
        seg = Segmenter(build_model("segformer_b0"))
        out = tmp_path / f"smooth_{smooth}"
        segment_video(seg, str(still), out, ["mask"], smoothing=smooth, progress=False)
        results[smooth] = flicker(np.array(Image.open(p)) == 1 for p in sorted((out / "still_masks").glob("*.png")))
    assert results[True] < results[False]


def test_cli_video_to_blur_and_jsonl(talking_clip, tmp_path) -> None:
    code = main(["infer", talking_clip, "-o", str(tmp_path), "--output", "blur,json", "-m", "segformer_b0", "-q"])
    assert code == 0
    assert probe(tmp_path / "walk_blur.mp4")["frames"] == 12
    assert len((tmp_path / "walk.jsonl").read_text().splitlines()) == 12


def test_cli_truncated_video_is_reported_not_fatal(tmp_path, capsys) -> None:
    clip = make_video(tmp_path / "cut.mp4", frames=20, size=(96, 64), noise=True)
    data = clip.read_bytes()
    clip.write_bytes(data[: int(len(data) * 0.6)])
    code = main(["infer", str(clip), "-o", str(tmp_path / "out"), "--output", "json", "-m", "segformer_b0", "-q"])
    err = capsys.readouterr().err
    lines = (tmp_path / "out" / "cut.jsonl").read_text().splitlines()
    assert 0 < len(lines) < 20
    assert code == 1 and "skipped" in err and "Traceback" not in err


def test_video_without_a_readable_frame_writes_no_video(tmp_path, capsys) -> None:
    clip = make_video(tmp_path / "cut.mp4", frames=20, size=(96, 64), noise=True)
    clip.write_bytes(clip.read_bytes()[:2000])  # the header survives, no frame does
    out = tmp_path / "out"
    code = main(["infer", str(clip), "-o", str(out), "--output", "blur,mask", "-m", "segformer_b0", "-q"])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 1 and "skipped" in err and "Traceback" not in err
    assert not (out / "cut_blur.mp4").exists() and "cut_blur.mp4" not in err
    assert not (out / "cut_masks").exists() and "cut_masks" not in err  # no empty frame folder either
    assert "0 frames at 0.0 FPS -> nothing written" in captured.out
    (out / "cut_masks").mkdir()  # a folder that was there before is the user's: it stays
    main(["infer", str(clip), "-o", str(out), "--output", "mask", "-m", "segformer_b0", "-q"])
    assert (out / "cut_masks").is_dir()


def test_cli_bad_video_path_and_options(tmp_path) -> None:
    assert main(["infer", str(tmp_path / "nope.mp4"), "-o", str(tmp_path)]) == 1
    with pytest.raises(SystemExit):
        main(["infer", "x.jpg", "--batch", "0"])
    text = tmp_path / "fake.mp4"
    text.write_text("not a video")
    assert main(["infer", str(text), "-o", str(tmp_path), "-m", "segformer_b0", "-q"]) == 1
