"""Video outputs that must stay true to their source: audio from URLs, source timestamps, size changes mid-stream,
colour tags, output names that never collide, and frame folders that hold one run's frames."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

from test_video import FPS, H, W, make_rotated_video, make_video, probe  # noqa: E402

from peopleseg import Segmenter, build_model  # noqa: E402
from peopleseg.infer.run import output_stems, segment_images, segment_video  # noqa: E402
from peopleseg.infer.sources import open_source  # noqa: E402
from peopleseg.infer.video_writer import VideoWriter  # noqa: E402


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(build_model("segformer_b0", info=None), batch_size=4)


def make_gap_video(path: Path, ticks: list[int], *, rate: int = FPS, audio_s: float | None = None) -> Path:
    """A video with frames at `ticks` / `rate` seconds (gaps where ticks are missing), optionally with AAC audio."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        sound = out.add_stream("aac", rate=8000, layout="mono") if audio_s is not None else None  # before any mux
        for tick in ticks:
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), (tick * 12) % 256, np.uint8), format="rgb24")
            frame.pts = tick
            frame.time_base = Fraction(1, rate)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None and audio_s is not None:
            total = int(8000 * audio_s)
            for start in range(0, total, 1024):
                samples = np.zeros((1, min(1024, total - start)), np.float32)
                chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = 8000, start, Fraction(1, 8000)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [round(float(frame.time), 3) for frame in container.decode(video=0)]


def audio_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


# -- 1. audio from a URL --------------------------------------------------------------------------------------------


def test_http_video_file_keeps_its_audio(segmenter: Segmenter, http_folder: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_folder
    make_video(root / "talk.mp4", frames=8, audio="aac")
    url = f"{base}/talk.mp4"
    summary = segment_video(segmenter, url, tmp_path, ["blur"], progress=False)
    assert summary.frames == 8 and not summary.failed
    info = probe(summary.written[0])
    assert info["frames"] == 8 and info["audio_codec"] == "aac" and info["audio_s"] > 0.7, info


def test_url_audio_that_does_not_open_is_left_out(http_folder: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = http_folder
    messages: list[str] = []
    out = tmp_path / "silent.mp4"
    with VideoWriter(out, FPS, W, H, audio_from=f"{base}/gone.mp4", report=messages.append) as writer:
        writer.write(np.zeros((H, W, 3), np.uint8))
    assert len(messages) == 1 and "audio left out" in messages[0] and "\n" not in messages[0]
    assert probe(out)["frames"] == 1 and "audio_codec" not in probe(out)


def test_url_audio_that_breaks_off_leaves_the_video_going(http_folder: tuple[str, Path], tmp_path: Path) -> None:
    base, root = http_folder
    make_video(root / "talk.mp4", frames=20, audio="aac")
    messages: list[str] = []
    out = tmp_path / "cut_sound.mp4"
    with VideoWriter(out, FPS, W, H, audio_from=f"{base}/talk.mp4", report=messages.append) as writer:
        real = writer._audio_packets

        def dropping() -> Iterator[object]:
            yield from itertools.islice(real, 5)  # type: ignore[arg-type]
            raise OSError("Connection reset by peer")

        writer._audio_packets = dropping()  # type: ignore[assignment]
        for _ in range(20):
            writer.write(np.zeros((H, W, 3), np.uint8))
    assert len(messages) == 1 and "stops at" in messages[0] and "Connection reset" in messages[0]
    info = probe(out)
    assert info["frames"] == 20 and info["audio_s"] < 0.5  # type: ignore[operator]


# -- 2. source timestamps -------------------------------------------------------------------------------------------


def test_output_frames_keep_the_source_times_across_a_gap(segmenter: Segmenter, tmp_path: Path) -> None:
    ticks = [0, 1, 2, 3, 4, 15, 16, 17, 18, 19]  # 1.1 s without a frame in the middle
    clip = make_gap_video(tmp_path / "gap.mp4", ticks, audio_s=2.0)
    source_times = [t / FPS for t in ticks]
    with open_source(str(clip)) as source:
        assert source.time_base is not None  # frames off the average rate's grid: a variable frame rate
    summary = segment_video(segmenter, str(clip), tmp_path / "out", ["overlay"], progress=False)
    assert summary.frames == 10
    assert frame_times(tmp_path / "out" / "gap_overlay.mp4") == pytest.approx(source_times, abs=1e-3)
    assert audio_seconds(tmp_path / "out" / "gap_overlay.mp4") == pytest.approx(2.0, abs=0.15)


def test_constant_rate_stamps_are_unchanged(tmp_path: Path, clip: Path) -> None:
    with open_source(str(clip)) as source:
        assert source.time_base is None
        frames = list(source)
    packets = {}
    for name, with_times in (("plain.mp4", False), ("timed.mp4", True)):
        with VideoWriter(tmp_path / name, FPS, W, H) as writer:
            for frame in frames:
                writer.write(frame.image, frame.time_s if with_times else None)
        with av.open(str(tmp_path / name)) as container:
            packets[name] = [(p.pts, p.dts) for p in container.demux(video=0) if p.size]
    assert packets["timed.mp4"] == packets["plain.mp4"]
    assert frame_times(tmp_path / "timed.mp4") == [round(i / FPS, 3) for i in range(20)]


def test_writer_times_that_stall_or_go_back_move_on_a_frame(tmp_path: Path) -> None:
    out = tmp_path / "odd_times.mp4"
    with VideoWriter(out, FPS, W, H, time_base=Fraction(1, 1000)) as writer:
        for time_s in (5.0, 5.05, 5.05, 2.0, 6.0):  # starts late; a repeat and a jump back (a concatenated stream)
            writer.write(np.zeros((H, W, 3), np.uint8), time_s)
    assert frame_times(out) == [0.0, 0.05, 0.15, 0.25, 1.0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4")


# -- 3. frame size changing mid-stream ------------------------------------------------------------------------------


def test_size_change_mid_stream_is_letterboxed(segmenter: Segmenter, tmp_path: Path) -> None:
    small = make_video(tmp_path / "a.ts", 8, size=(64, 48)).read_bytes()
    large = make_video(tmp_path / "b.ts", 6, size=(96, 64)).read_bytes()
    joined = tmp_path / "joined.ts"
    joined.write_bytes(small + large)  # what a stream that switches resolution looks like
    messages: list[str] = []
    out = tmp_path / "out"
    summary = segment_video(segmenter, str(joined), out, ["overlay", "mask"], report=messages.append, progress=False)
    letterboxed = [m for m in messages if "letterboxed" in m]
    assert len(letterboxed) == 1 and "is 96x64" in letterboxed[0] and "48x64" not in letterboxed[0]
    info = probe(out / "joined_overlay.mp4")
    assert info["frames"] == summary.frames >= 12 and info["size"] == (64, 48)
    sizes = {Image.open(p).size for p in (out / "joined_masks").glob("*.png")}
    assert sizes == {(64, 48), (96, 64)}  # mask frames keep each frame's own size


def test_rotated_phone_video_comes_out_upright(segmenter: Segmenter, tmp_path: Path) -> None:
    # A phone's portrait video: landscape frames and a "turn clockwise" tag. Outputs must be upright, as photos are.
    clip = make_rotated_video(tmp_path / "phone.mp4", -90)
    messages: list[str] = []
    out = tmp_path / "out"
    summary = segment_video(segmenter, str(clip), out, ["overlay", "mask"], report=messages.append, progress=False)
    assert summary.frames == 5 and not summary.failed and not messages  # nothing letterboxed
    info = probe(out / "phone_overlay.mp4")
    assert info["size"] == (H, W)  # portrait
    first = info["first"].astype(int)
    assert first[: W // 2 - 8, :, 0].mean() > first[: W // 2 - 8, :, 2].mean()  # the red half on top
    assert {Image.open(p).size for p in (out / "phone_masks").glob("*.png")} == {(H, W)}


# -- 5. colour tags -------------------------------------------------------------------------------------------------


def test_output_is_tagged_bt601_limited_range(tmp_path: Path) -> None:
    out = tmp_path / "tagged.mp4"
    with VideoWriter(out, FPS, W, H) as writer:
        writer.write(np.full((H, W, 3), 128, np.uint8))
    with av.open(str(out)) as container:
        context = container.streams.video[0].codec_context
        tags = (context.color_primaries, context.color_trc, context.colorspace, context.color_range)
    assert tags == (6, 6, 6, 1)  # smpte170m primaries, transfer and matrix; tv (limited) range


# -- 4. output names ------------------------------------------------------------------------------------------------


def test_output_stems() -> None:
    stems = output_stems(["photos/a/x.png", "photos/b/x.png", "photos/x.jpg", "photos/y.jpg"])
    assert stems == {
        "photos/a/x.png": Path("a/x"),
        "photos/b/x.png": Path("b/x"),
        "photos/x.jpg": Path("x"),
        "photos/y.jpg": Path("y"),
    }
    assert output_stems(["v/talk.mp4", "v/talk.mkv"]) == {
        "v/talk.mp4": Path("talk_mp4"),
        "v/talk.mkv": Path("talk_mkv"),
    }
    # A name freed by a suffix stays with the input that had it; a file named twice is one input.
    stems = output_stems(["v/x.jpg", "v/x.png", "v/x_jpg.png", "./v/x.jpg"])
    assert stems["v/x_jpg.png"] == Path("x_jpg") and stems["v/x.png"] == Path("x_png")
    assert stems["v/x.jpg"] == stems["./v/x.jpg"] == Path("x_jpg_2")
    assert output_stems(["A/photo.jpg", "b/Photo.jpg"]) == {
        "A/photo.jpg": Path("A/photo"),
        "b/Photo.jpg": Path("b/Photo"),
    }
    assert list(output_stems(["rtsp://cam/1", "rtsp://cam_1"]).values()) == [Path("rtsp_cam_1"), Path("rtsp_cam_1_2")]
    assert output_stems(["one/x.jpg"]) == {"one/x.jpg": Path("x")}


def test_images_with_one_name_do_not_overwrite_each_other(segmenter: Segmenter, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    inputs = [photos / "a" / "x.png", photos / "b" / "x.png", photos / "x.jpg", photos / "y.jpg"]
    for i, path in enumerate(inputs):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(path)
    out = tmp_path / "out"
    summary = segment_images(segmenter, [str(p) for p in inputs], out, ["mask", "json"], progress=False)
    assert summary.images == 4
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "a/x.json",
        "a/x_mask.png",
        "b/x.json",
        "b/x_mask.png",
        "x.json",
        "x_mask.png",
        "y.json",
        "y_mask.png",
    ]


def test_videos_with_one_name_get_their_own_outputs(segmenter: Segmenter, tmp_path: Path) -> None:
    specs = [str(make_video(tmp_path / f"talk{suffix}", 3)) for suffix in (".mp4", ".mkv")]
    stems = output_stems(specs)
    for spec in specs:
        segment_video(segmenter, spec, tmp_path / "out", ["overlay", "json"], progress=False, stem=stems[spec])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["talk_mkv.jsonl", "talk_mkv_overlay.mp4", "talk_mp4.jsonl", "talk_mp4_overlay.mp4"]


# -- 6. frame folders -----------------------------------------------------------------------------------------------


def test_frame_folder_holds_only_this_runs_frames(segmenter: Segmenter, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "walk.mp4", 6)
    out = tmp_path / "out"
    segment_video(segmenter, str(clip), out, ["mask", "json"], max_frames=5, progress=False)
    masks = out / "walk_masks"
    (masks / "notes.txt").write_text("the user's own")
    (masks / "000003.jpg").write_bytes(b"not a frame this tool writes")
    messages: list[str] = []
    segment_video(segmenter, str(clip), out, ["mask", "json"], max_frames=2, report=messages.append, progress=False)
    assert sorted(p.name for p in masks.iterdir()) == ["000000.png", "000001.png", "000003.jpg", "notes.txt"]
    assert len((out / "walk.jsonl").read_text().splitlines()) == 2
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert "removed 3 frame(s)" in messages[0] and "000002.png to 000004.png" in messages[0]
    assert "2 file(s) that are not frames" in messages[1]
