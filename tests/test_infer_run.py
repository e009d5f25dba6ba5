"""`peopleseg infer` end to end: every output for photos, and video files, streams and webcams into videos,
mask sequences and per-frame JSONL; bad inputs are reported and skipped, never fatal to the rest."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from peopleseg import Segmenter, build_model
from peopleseg.cli import main
from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.run import expand_inputs, is_video, parse_outputs, segment_images, segment_video, stream_stem

av = pytest.importorskip("av")
from test_video import make_video, probe, thread_niceness  # noqa: E402


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(build_model("segformer_b0", info=None), batch_size=4)


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (120, 80, 40)).save(path)
    return path


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
    # A password in the URL must not end up in file names (or a user name: the names are seen by everyone).
    assert stream_stem("http://admin:s3cret@10.0.0.5:8080/cam.mjpg") == "http_10_0_0_5_8080_cam_mjpg"
    assert stream_stem("rtsp://user:p%40ss@cam1/live?channel=1") == "rtsp_cam1_live_channel_1"
    assert stream_stem("rtsp://user@cam1") == "rtsp_cam1"


def test_stream_passwords_stay_out_of_names_and_messages(segmenter, http_folder, tmp_path) -> None:
    base, root = http_folder
    clip = make_video(tmp_path / "cut.mp4", frames=20, size=(96, 64), noise=True)
    (root / "cut.mp4").write_bytes(clip.read_bytes()[: int(clip.stat().st_size * 0.6)])  # reports frames missing
    url = base.replace("http://", "http://admin:s3cret@") + "/cut.mp4"
    messages: list[str] = []
    summary = segment_video(
        segmenter, url, tmp_path / "out", ["overlay", "json"], report=messages.append, progress=False
    )
    assert 0 < summary.frames < 20 and summary.failed and messages
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert names and all(name.startswith("http_127_0_0_1_") for name in names), names
    text = " ".join([*names, *messages, *summary.failed])
    assert "s3cret" not in text and "admin:***@" in text


def test_globbed_folders_are_walked_and_outputs_are_not_inputs(tmp_path, monkeypatch) -> None:
    photo = _png(tmp_path / "photos" / "p.png")
    nested = _png(tmp_path / "photos" / "trip" / "q.png")
    out = tmp_path / "photos" / "peopleseg_out"
    for name in ("p_mask.png", "p_overlay.png"):  # what an earlier run left
        _png(out / name)
    (out / "walk_blur.mp4").write_bytes(b"a video")
    assert expand_inputs([str(tmp_path / "photos")], output_dir=out) == [str(photo), str(nested)]
    # A glob's folder match is walked, like a folder named as such (it used to be reported as a bad image).
    assert expand_inputs([str(tmp_path / "photos" / "*")], output_dir=out) == [str(photo), str(nested)]
    assert expand_inputs([str(tmp_path / "photos" / "**")], output_dir=out) == [str(photo), str(nested)]
    monkeypatch.chdir(tmp_path / "photos")  # `cd photos && peopleseg infer .`, a second time
    assert expand_inputs(["."], output_dir="peopleseg_out") == ["p.png", str(Path("trip") / "q.png")]
    assert expand_inputs(["peopleseg_out/p_mask.png"], output_dir="peopleseg_out") == ["peopleseg_out/p_mask.png"]


def test_gifs_are_images_and_animated_gifs_are_videos(segmenter, tmp_path) -> None:
    still, animated = tmp_path / "in" / "still.gif", tmp_path / "in" / "moving.gif"
    _png(still)
    frames = [Image.new("RGB", (64, 48), (40 * i, 90, 200 - 40 * i)) for i in range(3)]
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100)
    inputs = expand_inputs([str(tmp_path / "in")])
    assert inputs == [str(animated), str(still)]  # GIFs were skipped in folders
    assert is_video(str(animated)) and not is_video(str(still))
    out = tmp_path / "out"
    code = main(["infer", str(tmp_path / "in"), "-o", str(out), "--output", "mask,json", "-m", "segformer_b0", "-q"])
    assert code == 0
    assert (out / "still_mask.png").exists()
    assert sorted(p.name for p in (out / "moving_masks").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert len((out / "moving.jsonl").read_text().splitlines()) == 3
    messages: list[str] = []  # an animated GIF given to segment_images: its first frame, and a notice
    summary = segment_images(segmenter, [str(animated)], tmp_path / "one", ["mask"], report=messages.append)
    assert summary.images == 1 and len(messages) == 1 and "moving.gif" in messages[0] and "first frame" in messages[0]


def test_a_bad_option_is_not_blamed_on_the_images(segmenter, data_dir, tmp_path, monkeypatch) -> None:
    def bad_option(*args, **kwargs):
        raise ConfigError("min_area must be pixels or a fraction of the image >= 0, got -1")

    monkeypatch.setattr(segmenter, "segment", bad_option)
    photos = [str(data_dir / "messi5.jpg"), str(data_dir / "grace_hopper.jpg")]
    with pytest.raises(ConfigError, match="min_area"):  # once, not "skipped" for every image
        segment_images(segmenter, photos, tmp_path, ["mask"], report=pytest.fail, progress=False)


def test_cli_bad_min_area_is_one_error(data_dir, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse names the flag, before anything loads
        main(["infer", str(data_dir), "-o", str(tmp_path), "-m", "segformer_b0", "--min-area", "-1", "-q"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "argument --min-area: must be a number >= 0, got -1" in err
    assert "skipped" not in err


def test_an_output_that_cannot_be_written_skips_that_photo(segmenter, data_dir, tmp_path, capsys) -> None:
    photos = [str(data_dir / "messi5.jpg"), str(data_dir / "grace_hopper.jpg")]
    out = tmp_path / "out"
    (out / "messi5_mask.png").mkdir(parents=True)  # in the way: the OS refuses to write the mask there
    messages: list[str] = []
    summary = segment_images(segmenter, photos, out, ["mask"], report=messages.append)
    assert summary.images == 1 and summary.failed == [photos[0]]
    assert (out / "grace_hopper_mask.png").is_file()
    assert len(messages) == 1 and messages[0].startswith(f"skipped {photos[0]}: cannot write {out / 'messi5_mask.png'}")
    assert "directory" in messages[0]
    assert capsys.readouterr().out == ""  # the progress bar is on stderr: stdout holds results only
    with pytest.raises(OSError):
        segment_images(segmenter, photos[:1], out, ["mask"], skip_bad=False, progress=False)


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


def test_cli_video_without_a_frame_count_cut_short_is_reported(tmp_path, capsys) -> None:
    # Matroska keeps no frame count: a cut file used to end quietly, with exit code 0.
    clip = make_video(tmp_path / "cut.mkv", frames=40, size=(96, 64), noise=True)
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    code = main(["infer", str(clip), "-o", str(tmp_path / "out"), "--output", "json", "-m", "segformer_b0", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "ends early" in err and "Traceback" not in err
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(clip.read_bytes()[:1500])  # a header and no frame
    code = main(["infer", str(empty), "-o", str(tmp_path / "out"), "--output", "json", "-m", "segformer_b0", "-q"])
    assert code == 1 and "no frame decodes" in capsys.readouterr().err


def test_cli_bad_video_path_and_options(tmp_path) -> None:
    assert main(["infer", str(tmp_path / "nope.mp4"), "-o", str(tmp_path)]) == 1
    with pytest.raises(SystemExit):
        main(["infer", "x.jpg", "--batch", "0"])
    text = tmp_path / "fake.mp4"
    text.write_text("not a video")
    assert main(["infer", str(text), "-o", str(tmp_path), "-m", "segformer_b0", "-q"]) == 1
