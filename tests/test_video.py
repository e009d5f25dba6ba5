"""Video in and out: frame sources, the atomic video writer and the threaded pipeline. No network: 127.0.0.1 only."""

from __future__ import annotations

import _thread
import itertools
import os
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from peopleseg.errors import DataError  # noqa: E402
from peopleseg.infer import sources  # noqa: E402
from peopleseg.infer.pipeline import PipelineStats, run_pipeline  # noqa: E402
from peopleseg.infer.sources import Frame, open_source  # noqa: E402
from peopleseg.infer.video_writer import VideoWriter  # noqa: E402

W, H, FPS = 64, 48, 10


def colour(i: int) -> tuple[int, int, int]:
    """A distinct, codec-friendly flat colour for frame i."""
    return (20 + 9 * i) % 256, 200 - 5 * i, 60


def make_video(
    path: Path,
    frames: int = 20,
    *,
    size: tuple[int, int] = (W, H),
    audio: str | None = None,
    faststart: bool = True,
    codec: str = "libx264",
    noise: bool = False,
) -> Path:
    """A small test video: flat colours (or noise), optionally with a 440 Hz sine track ('aac' or 'pcm_mulaw')."""
    options = {"movflags": "+faststart"} if faststart and path.suffix == ".mp4" else {}
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", container_options=options) as out:
        video = out.add_stream(codec, rate=FPS)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        if noise:
            video.codec_context.gop_size = 1  # every frame a keyframe: damage stays in one frame
        sound = None
        if audio is not None:
            sound = out.add_stream(audio, rate=44100 if audio == "aac" else 8000, layout="mono")
        for i in range(frames):
            if noise:
                image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            else:
                image = np.empty((size[1], size[0], 3), np.uint8)
                image[:] = colour(i)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            rate = sound.rate
            total = rate * frames // FPS
            for start in range(0, total, 1024):
                t = np.arange(start, min(start + 1024, total)) / rate
                wave = np.sin(2 * np.pi * 440 * t)
                if audio == "aac":
                    chunk = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="fltp", layout="mono")
                else:
                    pcm = (wave * 8000).astype(np.int16)[None]
                    chunk = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
                chunk.sample_rate = rate
                chunk.pts = start
                chunk.time_base = Fraction(1, rate)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def probe(path: Path) -> dict[str, object]:
    """Decode a file completely: frame count and size, audio codec and decoded audio seconds."""
    with av.open(str(path)) as container:
        video = list(container.decode(video=0))
        info: dict[str, object] = {"frames": len(video), "size": (video[0].width, video[0].height) if video else None}
        info["first"] = video[0].to_ndarray(format="rgb24") if video else None
        if container.streams.audio:
            container.seek(0)
            audio = list(container.decode(audio=0))
            info["audio_codec"] = container.streams.audio[0].codec_context.name
            info["audio_s"] = sum(f.samples for f in audio) / audio[0].sample_rate
    return info


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="module")
def clip_with_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("audio") / "talk.mp4", audio="aac")


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(sources, "_sleep", slept.append)
    return slept


# -- sources: files -------------------------------------------------------------------------------------------------


def test_file_source_yields_rgb_frames_in_order(clip: Path) -> None:
    with open_source(str(clip)) as source:
        assert (source.width, source.height, source.fps, source.frame_count) == (W, H, 10.0, 20)
        assert not source.is_live and not source.has_audio
        frames = list(source)
    assert [f.index for f in frames] == list(range(20))
    assert [round(f.time_s, 3) for f in frames[:3]] == [0.0, 0.1, 0.2]
    assert frames[0].image.shape == (H, W, 3) and frames[0].image.dtype == np.uint8
    for i in (0, 7, 19):  # RGB, not BGR: each channel close to what was written
        assert np.abs(frames[i].image.reshape(-1, 3).mean(0) - colour(i)).max() < 6


def test_file_source_max_frames_and_audio_flag(clip_with_audio: Path) -> None:
    with open_source(str(clip_with_audio), max_frames=4) as source:
        assert source.has_audio and source.frame_count == 4
        assert len(list(source)) == 4


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(DataError, match=r"nope\.mp4: no such file$"):
        open_source(str(missing))
    with pytest.raises(DataError, match="is a folder"):
        open_source(str(tmp_path))


def test_not_a_video(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("these are words, not video\n" * 50)
    with pytest.raises(DataError, match=r"notes\.mp4: not a video") as info:
        open_source(str(text))
    assert "\n" not in str(info.value)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000, layout="mono")
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts = 8000, 0
        out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    with pytest.raises(DataError, match=r"sound\.m4a: has no video stream"):
        open_source(str(path))


def test_truncated_video_yields_what_decodes(tmp_path: Path) -> None:
    data = make_video(tmp_path / "full.mp4", 30, noise=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    skipped: list[tuple[int, str]] = []
    with open_source(str(cut), on_skip=lambda i, why: skipped.append((i, why))) as source:
        frames = list(source)
    assert 5 <= len(frames) < 30
    assert [f.index for f in frames] == list(range(len(frames)))
    # Without a callback the damage is a warning, never an exception.
    with pytest.warns(UserWarning, match=r"cut\.mp4: skipped"), open_source(str(cut)) as source:
        assert len(list(source)) == len(frames)


def test_truncated_video_without_index_is_a_data_error(tmp_path: Path) -> None:
    data = make_video(tmp_path / "plain.mp4", 30, noise=True, faststart=False).read_bytes()
    cut = tmp_path / "plain_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # the index (moov) was at the end: nothing is playable
    with pytest.raises(DataError, match=r"plain_cut\.mp4: .*corrupt or truncated"):
        open_source(str(cut))


def test_corrupt_frame_in_the_middle_is_skipped(tmp_path: Path) -> None:
    data = bytearray(make_video(tmp_path / "ok.mp4", 30, noise=True).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 800] = np.random.default_rng(1).integers(0, 256, 800, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    skipped: list[tuple[int, str]] = []
    with open_source(str(bad), on_skip=lambda i, why: skipped.append((i, why))) as source:
        frames = list(source)
    assert skipped and 20 <= len(frames) < 30
    index, reason = skipped[0]
    assert 0 < index < 30 and reason


def make_rotated_video(path: Path, rotation: int, frames: int = 5) -> Path:
    """A 64x48 video, red on the left and blue on the right, tagged to be shown turned by `rotation` degrees
    counter-clockwise (-90: clockwise, as a phone held upright records it)."""
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("this PyAV cannot write a display rotation")
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.set_display_rotation(rotation)
        image = np.zeros((H, W, 3), np.uint8)
        image[:, : W // 2] = (255, 0, 0)
        image[:, W // 2 :] = (0, 0, 255)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_rotated_video_frames_come_upright(tmp_path: Path, suffix: str) -> None:
    # Turned clockwise for display, the left (red) half is the top: the frames and the size are the turned ones.
    with open_source(str(make_rotated_video(tmp_path / f"phone{suffix}", -90))) as source:
        assert (source.width, source.height) == (H, W)
        frames = list(source)
    assert len(frames) == 5 and all(f.image.shape == (W, H, 3) for f in frames)
    image = frames[0].image.astype(int)
    assert np.abs(image[: W // 2 - 4] - (255, 0, 0)).max() < 40 and np.abs(image[W // 2 + 4 :] - (0, 0, 255)).max() < 40
    with open_source(str(make_rotated_video(tmp_path / f"counter{suffix}", 90))) as source:
        image = next(iter(source)).image.astype(int)  # counter-clockwise: the left half is the bottom
    assert source.height == W and np.abs(image[W // 2 + 4 :] - (255, 0, 0)).max() < 40
    with open_source(str(make_rotated_video(tmp_path / f"flipped{suffix}", 180))) as source:
        image = next(iter(source)).image.astype(int)  # upside down: the left half is the right
    assert (source.width, source.height) == (W, H) and np.abs(image[:, W // 2 + 4 :] - (255, 0, 0)).max() < 40


@pytest.mark.parametrize("suffix", [".mkv", ".webm"])
def test_truncated_matroska_reports_its_missing_end(tmp_path: Path, suffix: str) -> None:
    # Matroska and WebM keep no frame count, only a duration: the last frame falling short of it is the sign.
    codec = "libvpx-vp9" if suffix == ".webm" else "libx264"
    data = make_video(tmp_path / f"full{suffix}", 40, noise=True, codec=codec).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    skipped: list[tuple[int, str]] = []
    with open_source(str(cut), on_skip=lambda i, why: skipped.append((i, why))) as source:
        frames = list(source)
    assert 5 <= len(frames) < 40
    assert (
        skipped == [(len(frames), skipped[-1][1])] and "ends early" in skipped[-1][1] and "of 4.0 s" in skipped[-1][1]
    )
    with open_source(str(tmp_path / f"full{suffix}"), on_skip=lambda i, why: skipped.append((i, why))) as source:
        assert len(list(source)) == 40 and len(skipped) == 1  # a whole file reports nothing


def test_video_that_decodes_no_frame_is_reported(tmp_path: Path) -> None:
    data = make_video(tmp_path / "full.mkv", 40, noise=True).read_bytes()
    cut = tmp_path / "head.mkv"
    cut.write_bytes(data[:1500])  # the header survives, no frame does
    skipped: list[tuple[int, str]] = []
    with open_source(str(cut), on_skip=lambda i, why: skipped.append((i, why))) as source:
        assert list(source) == []
    assert len(skipped) == 1 and skipped[0][0] == 0 and "no frame decodes" in skipped[0][1]


# -- sources: lavfi, webcam, streams ---------------------------------------------------------------------------------


def test_lavfi_virtual_camera_with_max_frames() -> None:
    with open_source("lavfi:testsrc=size=64x48:rate=10", max_frames=5) as source:
        assert source.is_live and (source.width, source.height, source.fps, source.frame_count) == (64, 48, 10.0, 5)
        frames = list(source)
    assert [f.index for f in frames] == list(range(5))
    assert [round(f.time_s, 3) for f in frames] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.std() > 10  # a real picture, not blank


def test_lavfi_bad_graph() -> None:
    with pytest.raises(DataError, match=r"lavfi:nosuchfilter: invalid lavfi graph"):
        open_source("lavfi:nosuchfilter")


def test_unknown_scheme() -> None:
    with pytest.raises(DataError, match="unsupported URL scheme"):
        open_source("gopher://127.0.0.1/x")


class FakeCapture:
    """cv2.VideoCapture stand-in: device 0 exists and gives `frames` BGR images (then fails), other devices don't."""

    frames = 3
    opened: int = 0

    def __init__(self, device: int) -> None:
        self.device = device
        self.served = 0
        FakeCapture.opened += 1

    def isOpened(self) -> bool:
        return self.device == 0

    def get(self, prop: int) -> float:
        return {5: 15.0, 3: 8.0, 4: 6.0}.get(prop, 0.0)

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.served >= self.frames:
            return False, None
        self.served += 1
        image = np.zeros((6, 8, 3), np.uint8)
        image[..., 0] = 255  # blue in BGR
        image[..., 2] = self.served  # red channel counts frames
        return True, image

    def release(self) -> None:
        pass


@pytest.fixture
def fake_cv2(monkeypatch: pytest.MonkeyPatch) -> type[FakeCapture]:
    FakeCapture.opened = 0
    module = types.SimpleNamespace(VideoCapture=FakeCapture, CAP_PROP_FPS=5, CAP_PROP_FRAME_WIDTH=3)
    module.CAP_PROP_FRAME_HEIGHT = 4
    monkeypatch.setitem(sys.modules, "cv2", module)
    return FakeCapture


def test_webcam_frames_are_rgb(fake_cv2: type[FakeCapture], no_sleep: list[float]) -> None:
    with open_source("webcam:0", max_frames=3) as source:
        assert source.is_live and (source.width, source.height, source.fps) == (8, 6, 15.0)
        frames = list(source)
    assert len(frames) == 3
    assert frames[0].image.shape == (6, 8, 3) and frames[0].image.flags.c_contiguous
    assert tuple(frames[1].image[0, 0]) == (2, 0, 255)  # R, G, B
    assert no_sleep == []


def test_webcam_missing_device(fake_cv2: type[FakeCapture]) -> None:
    with pytest.raises(DataError, match=r"^webcam:3: cannot open camera 3$"):
        open_source("webcam:3")
    with pytest.raises(DataError, match="webcam:N"):
        open_source("webcam:front")


def test_webcam_reconnects_then_gives_up(fake_cv2: type[FakeCapture], no_sleep: list[float]) -> None:
    # Each capture gives 3 frames then stops; reopening gets 3 more. max_frames ends the run after one reconnect.
    with open_source("webcam:0", max_frames=5) as source:
        assert [f.index for f in source] == [0, 1, 2, 3, 4]
    assert no_sleep == [0.5] and fake_cv2.opened == 2
    fake_cv2.frames = 0  # a camera that opens but never delivers
    try:
        with pytest.raises(DataError, match=r"webcam:0: stream lost, 2 reconnect attempts failed"):
            list(open_source("webcam:0", max_reconnects=2))
    finally:
        fake_cv2.frames = 3


def stream_opener(clip: Path, plan: list[str]) -> tuple[list[str], object]:
    """A stand-in for `av.open`: each call takes the next step of `plan` ('ok' opens `clip`, 'fail' refuses)."""
    calls: list[str] = []

    def opener(url: str, **kwargs: object) -> object:
        calls.append(url)
        step = plan.pop(0) if plan else "fail"
        if step == "fail":
            raise ConnectionRefusedError(111, "Connection refused")
        return av.open(str(clip))

    return calls, opener


def test_stream_reconnects_with_backoff(clip: Path, monkeypatch: pytest.MonkeyPatch, no_sleep: list[float]) -> None:
    calls, opener = stream_opener(clip, ["ok", "fail", "fail", "ok"])
    monkeypatch.setattr(sources, "_open_container", opener)
    with open_source("rtsp://127.0.0.1:9/cam", max_frames=30) as source:
        assert source.is_live and source.frame_count == 30
        frames = list(source)
    assert len(calls) == 4 and no_sleep == [0.5, 1.0, 2.0]
    assert [f.index for f in frames] == list(range(30))
    times = [f.time_s for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times))  # time keeps going across the reconnect


def test_stream_reconnect_exhausted(clip: Path, monkeypatch: pytest.MonkeyPatch, no_sleep: list[float]) -> None:
    _, opener = stream_opener(clip, ["ok"])
    monkeypatch.setattr(sources, "_open_container", opener)
    url = "rtsp://admin:secret@127.0.0.1:9/cam"
    with open_source(url, max_reconnects=4) as source, pytest.raises(DataError, match="4 reconnect attempts") as info:
        for _ in source:
            pass
    message = str(info.value)
    assert message.startswith("rtsp://admin:***@127.0.0.1:9/cam: stream lost") and "secret" not in message
    assert no_sleep == [0.5, 1.0, 2.0, 4.0]


def test_stream_without_reconnect_ends_at_eof(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, opener = stream_opener(clip, ["ok"])
    monkeypatch.setattr(sources, "_open_container", opener)
    with open_source("rtsp://127.0.0.1:9/cam", reconnect=False) as source:
        assert len(list(source)) == 20


def test_http_stream_from_localhost(http_folder: tuple[str, Path], clip: Path) -> None:
    base, root = http_folder
    (root / "clip.mp4").write_bytes(clip.read_bytes())
    with open_source(f"{base}/clip.mp4") as source:
        assert not source.is_live  # a file served over HTTP ends; it is not reconnected and replayed
        assert len(list(source)) == 20
    with pytest.raises(DataError, match=r"http://127\.0\.0\.1:\d+/missing\.mp4: cannot open stream"):
        open_source(f"{base}/missing.mp4")


def test_dead_stream_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(DataError, match="cannot open stream") as info:
            open_source(f"rtsp://admin:secret@127.0.0.1:{port}/cam", timeout_s=0.5)
        assert time.monotonic() - start < 5
    assert "secret" not in str(info.value)  # FFmpeg's message repeats the URL; the password is masked


# -- writer ---------------------------------------------------------------------------------------------------------


def test_writer_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 10, 65, 49) as writer:
        assert (writer.output_width, writer.output_height) == (66, 50)
        for i in range(12):
            image = np.empty((49, 65, 3), np.uint8)
            image[:] = colour(i)
            writer.write(image)
    info = probe(out)
    assert info["frames"] == 12 and info["size"] == (66, 50)
    assert np.abs(info["first"].reshape(-1, 3).mean(0) - colour(0)).max() < 6  # type: ignore[union-attr]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".mkv", ".avi", ".mov"])
def test_writer_other_containers(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"clip{suffix}"
    with VideoWriter(out, 12.5, W, H) as writer:
        for _ in range(8):
            writer.write(np.zeros((H, W, 3), np.uint8))
    assert probe(out)["frames"] == 8


def test_writer_keeps_audio_by_copying(tmp_path: Path, clip_with_audio: Path) -> None:
    out = tmp_path / "dub.mp4"
    with open_source(str(clip_with_audio)) as source, VideoWriter(out, source.fps, W, H, audio_from=source.spec) as w:
        for frame in source:
            w.write(frame.image)
    assert w._audio_copy  # AAC fits MP4: packets copied, not re-encoded
    info, original = probe(out), probe(clip_with_audio)
    assert info["frames"] == 20 and info["audio_codec"] == "aac"
    assert abs(info["audio_s"] - original["audio_s"]) < 0.1  # type: ignore[operator]


def test_writer_reencodes_audio_the_container_cannot_hold(tmp_path: Path) -> None:
    source = make_video(tmp_path / "cctv.avi", 20, codec="mpeg4", audio="pcm_mulaw")  # mu-law does not go in MP4
    out = tmp_path / "cctv.mp4"
    with VideoWriter(out, FPS, W, H, audio_from=source) as writer:
        for _ in range(20):
            writer.write(np.zeros((H, W, 3), np.uint8))
    info = probe(out)
    assert info["audio_codec"] == "aac" and abs(info["audio_s"] - 2.0) < 0.15  # type: ignore[operator]


def test_writer_interrupted_still_leaves_a_playable_file(tmp_path: Path, clip_with_audio: Path) -> None:
    out = tmp_path / "partial.mp4"
    with pytest.raises(KeyboardInterrupt), VideoWriter(out, FPS, W, H, audio_from=clip_with_audio) as writer:
        for _ in range(7):
            writer.write(np.zeros((H, W, 3), np.uint8))
        raise KeyboardInterrupt
    info = probe(out)
    assert info["frames"] == 7 and abs(info["audio_s"] - 0.7) < 0.1  # type: ignore[operator]
    assert leftovers(tmp_path) == []


def test_writer_bad_frame_abort_and_bad_path(tmp_path: Path) -> None:
    out = tmp_path / "bad.mp4"
    message = r"bad\.mp4: frame 2 is 48x63x3 uint8, expected 48x64x3 uint8"
    with pytest.raises(DataError, match=message), VideoWriter(out, FPS, W, H) as writer:
        writer.write(np.zeros((H, W, 3), np.uint8))
        writer.write(np.zeros((H, W, 3), np.uint8))
        writer.write(np.zeros((H, W - 1, 3), np.uint8))
    assert probe(out)["frames"] == 2  # the frames before the error were kept
    aborted = tmp_path / "aborted.mp4"
    writer = VideoWriter(aborted, FPS, W, H)
    writer.write(np.zeros((H, W, 3), np.uint8))
    writer.abort()
    assert not aborted.exists() and leftovers(tmp_path) == []
    with VideoWriter(tmp_path / "empty.mp4", FPS, W, H):
        pass  # no frame: nothing to play, so no file
    assert not (tmp_path / "empty.mp4").exists() and leftovers(tmp_path) == []
    with pytest.raises(DataError, match=r"clip\.xyz: unknown video suffix"):
        VideoWriter(tmp_path / "clip.xyz", FPS, W, H)
    with pytest.raises(DataError, match=r"gone\.mp4: no such file"):
        VideoWriter(tmp_path / "x.mp4", FPS, W, H, audio_from=tmp_path / "gone.mp4")
    assert leftovers(tmp_path) == []


# -- pipeline -------------------------------------------------------------------------------------------------------


def numbered(n: int | None, log: list[int] | None = None) -> Iterator[Frame]:
    """Tiny frames whose pixel value is their index; `log` records each yield. n=None never ends."""
    i = 0
    while n is None or i < n:
        if log is not None:
            log.append(i)
        yield Frame(i, np.full((2, 2, 3), i % 256, np.uint8), i / 10)
        i += 1


def test_pipeline_keeps_order_with_partial_last_batch() -> None:
    seen: list[tuple[int, int]] = []
    sizes: list[int] = []

    def double(batch: list[Frame]) -> list[int]:
        sizes.append(len(batch))
        time.sleep(0.002 * (len(sizes) % 3))  # uneven processing time must not reorder anything
        return [f.index * 2 for f in batch]

    stats = run_pipeline(numbered(10), double, lambda f, r: seen.append((f.index, r)), batch_size=3, progress=False)
    assert seen == [(i, 2 * i) for i in range(10)]
    assert sizes == [3, 3, 3, 1]
    assert isinstance(stats, PipelineStats) and (stats.frames, stats.batches) == (10, 4) and stats.fps > 0


def test_pipeline_back_pressure_bounds_frames_in_flight() -> None:
    produced: list[int] = []
    consumed = 0
    peak = 0

    def slow_consume(frame: Frame, result: int) -> None:
        nonlocal consumed, peak
        peak = max(peak, len(produced) - consumed)
        time.sleep(0.003)
        consumed += 1

    queue_size, batch_size = 4, 3
    stats = run_pipeline(
        numbered(80, produced), lambda b: [0] * len(b), slow_consume, batch_size=batch_size, queue_size=queue_size
    )
    assert stats.frames == 80
    assert peak <= 2 * queue_size + batch_size + 2


def thread_niceness() -> int:
    """The calling thread's own nice value (Linux keeps one per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_pipeline_runs_decode_and_consume_at_lower_priority_than_the_model() -> None:
    seen: dict[str, set[int]] = {"decode": set(), "process": set(), "consume": set()}

    def frames() -> Iterator[Frame]:
        for frame in numbered(6):
            seen["decode"].add(thread_niceness())
            yield frame

    def process(batch: list[Frame]) -> list[int]:
        seen["process"].add(thread_niceness())
        return [0] * len(batch)

    caller = thread_niceness()
    run_pipeline(frames(), process, lambda f, r: seen["consume"].add(thread_niceness()), batch_size=2, side_niceness=5)
    assert seen["process"] == {caller}  # the model keeps the caller's priority
    expected = min(19, caller + 5)
    assert seen["decode"] == {expected} and seen["consume"] == {expected}
    assert thread_niceness() == caller  # the caller's own thread is untouched


def assert_stops_fast(exc_type: type[BaseException], **kwargs: object) -> None:
    start = time.monotonic()
    with pytest.raises(exc_type, match="boom"):
        run_pipeline(numbered(None), progress=False, **kwargs)  # type: ignore[arg-type]
    assert time.monotonic() - start < 2
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("peopleseg-")]


def test_pipeline_exception_in_consume_propagates() -> None:
    def consume(frame: Frame, result: int) -> None:
        if frame.index == 5:
            raise RuntimeError("boom in consume")

    assert_stops_fast(RuntimeError, process_batch=lambda b: [0] * len(b), consume=consume, batch_size=2)


def test_pipeline_exception_in_process_propagates() -> None:
    def process(batch: list[Frame]) -> list[int]:
        if batch[0].index >= 6:
            raise ValueError("boom in the model")
        return [0] * len(batch)

    assert_stops_fast(ValueError, process_batch=process, consume=lambda f, r: None, batch_size=3)


def test_pipeline_exception_in_source_propagates() -> None:
    def broken() -> Iterator[Frame]:
        yield from numbered(3)
        raise DataError("cam.mp4: boom at frame 3")

    with pytest.raises(DataError, match="boom"):
        run_pipeline(broken(), lambda b: [0] * len(b), lambda f, r: None, progress=False)


def test_pipeline_rejects_wrong_result_count() -> None:
    with pytest.raises(ValueError, match="returned 1 results for a batch of 2"):
        run_pipeline(numbered(4), lambda b: [0], lambda f, r: None, batch_size=2, progress=False)


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """Python's own Ctrl-C handler for the test. A shell starts background jobs with SIGINT ignored, and then
    `_thread.interrupt_main()` does nothing, so a test that stops an endless source with it would never end."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_sigint")
def test_ctrl_c_mid_pipeline_leaves_a_playable_video(tmp_path: Path) -> None:
    """End to end: a virtual camera through the pipeline into a writer; Ctrl-C after 6 frames keeps a valid file."""
    out = tmp_path / "live.mp4"
    written: list[int] = []

    def consume(frame: Frame, image: np.ndarray) -> None:
        writer.write(image)
        written.append(frame.index)
        if len(written) == 6:
            _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread

    with (
        pytest.raises(KeyboardInterrupt),
        open_source("lavfi:testsrc=size=65x49:rate=25") as source,
        VideoWriter(out, source.fps, source.width, source.height) as writer,
    ):
        run_pipeline(source, lambda b: [255 - f.image for f in b], consume, batch_size=2, progress=False)
    count = len(written)
    assert count >= 6 and written == list(range(count))
    assert probe(out)["frames"] == count
    assert os.listdir(tmp_path) == ["live.mp4"]
