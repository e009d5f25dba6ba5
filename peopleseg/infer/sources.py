"""Frame sources: video files, network streams, webcams and FFmpeg virtual cameras, all as RGB `Frame`s.

`open_source(spec)` takes a file path, a stream URL (`rtsp://`, `rtsps://`, `http(s)://`, ...), `webcam:N` or
`lavfi:GRAPH` and returns a `FrameSource`: an iterable of `Frame`s that is also a context manager.

Damage is never fatal: a packet or frame that does not decode is reported through `on_skip(index, reason)` and
skipped, and a truncated file yields the frames that decode, reports the missing rest (or that no frame decodes),
and ends. Live sources that drop reconnect with exponential backoff. `Frame.index` counts the frames yielded (0, 1,
2, ... with no gaps), and `on_skip`'s index is the index the next yielded frame gets (roughly: a threaded decoder
holds a few frames back).
`Frame.time_s` is the presentation time in seconds since the start of the stream, so a skip shows as a jump in it.
Frames come upright: a video's display rotation (a phone's portrait video is landscape frames plus a rotation tag) is
applied to each frame, and a file's `width` and `height` are its upright size.
`FrameSource.time_base` is the clock those times come from when they do not all fall on the 1/fps grid (variable
frame rate), so a writer can stamp its frames exactly.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from peopleseg.errors import DataError

SkipCallback = Callable[[int, str], None]

# Schemes handed to FFmpeg as network streams; anything else without "scheme://" is a file path.
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "srt", "udp", "rtp", "tcp")
# Reconnect backoff: 0.5 s, 1 s, 2 s, ... capped, so a camera that reboots is picked up again within seconds.
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 8.0
DEFAULT_TIMEOUT_S = 10.0
# A file whose demuxer keeps failing this many times in a row is treated as ending there.
MAX_READ_ERRORS = 3
# A file without a frame count (Matroska, WebM, MPEG-TS) "ends early" when its last frame falls this far short of its
# duration: by more than a second and by 5%, as an audio track may run on a little past the video.
LATE_END_S = 1.0
LATE_END_FRACTION = 0.05
# How many packets are decoded, at most, to find a video's rotation before it is read.
PROBE_PACKETS = 64


def codec_threads() -> int:
    """Threads for a video decoder or encoder that runs beside the model: one per four cores, at least one. On a
    2-core VM one thread took a quarter (decoding) to 30% (x264) less CPU per frame than the codecs' own counts."""
    return max(1, (os.cpu_count() or 1) // 4)


def _open_container(url: str, **kwargs: Any) -> av.container.InputContainer:
    """`av.open` for reading; a module-level seam so tests can simulate dropping and recovering streams."""
    return av.open(url, **kwargs)


# Injectable so tests exercise the backoff without waiting for it.
_sleep: Callable[[float], None] = time.sleep


@dataclass
class Frame:
    """One decoded video frame: RGB uint8 [H, W, 3], its position in the output and its presentation time."""

    index: int
    image: np.ndarray
    time_s: float


def redact(text: str) -> str:
    """Hide every password in `scheme://user:password@host/...`, so error messages and logs never leak it."""
    return re.sub(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*):[^/@\s]*@", r"\1:***@", text)


def _warn_skip(name: str) -> SkipCallback:
    def on_skip(index: int, reason: str) -> None:
        warnings.warn(f"{name}: skipped a damaged frame before frame {index} ({reason})", stacklevel=2)

    return on_skip


class FrameSource:
    """Iterate once over the source's `Frame`s; `close()` (or leaving the `with` block) releases it.

    Attributes: `spec`, `fps` (None when unknown), `width`, `height`, `frame_count` (the number of frames iteration
    will yield when known: the stream's count, capped by `max_frames`), `has_audio`, `is_live` and `time_base` (the
    stream's clock when its frame times are not all multiples of 1/fps, i.e. a variable frame rate; else None).
    """

    def __init__(
        self,
        spec: str,
        *,
        reconnect: bool,
        max_reconnects: int,
        on_skip: SkipCallback | None,
        max_frames: int | None,
    ) -> None:
        if max_frames is not None and max_frames < 0:
            raise DataError(f"{redact(spec)}: max_frames must be >= 0, got {max_frames}")
        self.spec = spec
        self.name = redact(spec)
        self.reconnect = reconnect
        self.max_reconnects = max_reconnects
        self.on_skip: SkipCallback = on_skip or _warn_skip(self.name)
        self.max_frames = max_frames
        self.fps: float | None = None
        self.width = 0
        self.height = 0
        self.frame_count: int | None = None
        self.has_audio = False
        self.is_live = False
        self.time_base: Fraction | None = None
        # Held around every read and by close(), so a pipeline thread never reads from a freed container.
        self._lock = threading.Lock()
        self._closed = False
        self._failures = 0  # consecutive failed reconnects; reset by every frame that arrives

    def __iter__(self) -> Iterator[Frame]:
        if self.max_frames == 0:
            return
        for count, frame in enumerate(self._frames(), start=1):
            self._failures = 0
            yield frame
            if self.max_frames is not None and count >= self.max_frames:
                return

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def _release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.width}x{self.height}, fps={self.fps})"

    def _cap_count(self, count: int | None) -> int | None:
        if self.max_frames is None:
            return count
        return self.max_frames if count is None else min(count, self.max_frames)

    def _recover(self, reason: str) -> bool:
        """After a live source dropped: reopen it with backoff. False if closed meanwhile; DataError once exhausted."""
        if not self.reconnect:
            raise DataError(f"{self.name}: stream dropped ({reason})")
        while self._failures < self.max_reconnects:
            _sleep(min(BACKOFF_START_S * 2**self._failures, BACKOFF_MAX_S))
            self._failures += 1
            with self._lock:
                if self._closed:
                    return False
                try:
                    self._reopen()
                    return True
                except (av.FFmpegError, OSError, DataError) as exc:
                    reason = _one_line(exc)
        raise DataError(f"{self.name}: stream lost, {self.max_reconnects} reconnect attempts failed ({reason})")

    def _reopen(self) -> None:
        raise NotImplementedError


def _one_line(exc: BaseException) -> str:
    """The exception as one line, without passwords: FFmpeg's messages repeat the URL they failed on."""
    return redact(" ".join(str(exc).split())) or type(exc).__name__


class _AvSource(FrameSource):
    """Files, network streams and lavfi graphs, decoded by PyAV (FFmpeg)."""

    def __init__(self, spec: str, url: str, open_kwargs: dict[str, Any], *, kind: str, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self._url = url
        self._open_kwargs = open_kwargs
        self._kind = kind  # "file", "stream" or "lavfi"
        self._container: av.container.InputContainer | None = None
        try:
            self._open()
        except (av.FFmpegError, OSError) as exc:
            if kind == "file":
                raise DataError(f"{self.name}: not a video, or corrupt or truncated ({_one_line(exc)})") from None
            if kind == "lavfi":
                raise DataError(f"{self.name}: invalid lavfi graph ({_one_line(exc)})") from None
            raise DataError(f"{self.name}: cannot open stream ({_one_line(exc)})") from None
        stream = self._stream
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.width = stream.codec_context.width
        self.height = stream.codec_context.height
        self.has_audio = bool(self._container.streams.audio)
        # FFmpeg's r_frame_rate is the rate every timestamp fits on; a different average means frames come at varying
        # intervals (or with gaps), which a writer's 1/fps clock would round away.
        base = stream.base_rate
        if base and rate and base != rate and stream.time_base:
            self.time_base = stream.time_base
        if kind == "file":
            self.is_live = False
        elif kind == "lavfi":
            self.is_live = True
        else:
            # RTSP is a camera; an http(s) URL is live when it has no duration (HLS live), not when it is a file.
            self.is_live = (
                url.startswith(("rtsp", "rtmp", "srt", "udp", "rtp", "tcp")) or self._container.duration is None
            )
        # Frames are turned upright (a phone's portrait video is landscape frames plus a rotation), so the video's
        # size is the turned one. Live sources are not probed: they are rarely rotated, and a second connection costs.
        if not self.is_live and _first_frame_turns(url, open_kwargs) % 2:
            self.width, self.height = self.height, self.width
        self.frame_count = self._cap_count(None if self.is_live else (stream.frames or None))

    def _open(self) -> None:
        container = _open_container(self._url, **self._open_kwargs)
        if not container.streams.video:
            container.close()
            raise DataError(f"{self.name}: has no video stream")
        self._container = container
        self._stream = container.streams.video[0]
        # Frame and slice threads let decoding keep up with a fast model on a big machine; on a small one, where
        # the model already has every core, one decoding thread took a quarter less CPU per frame (2-core VM).
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = codec_threads()
        self._packets = container.demux(self._stream)
        start = self._stream.start_time
        # Per connection: time_s is measured from the stream's first timestamp.
        self._base_time: float | None = float(start * self._stream.time_base) if start is not None else None
        if self._kind == "stream":
            self._base_time = None  # live timestamps start anywhere; measure from the first frame

    def _reopen(self) -> None:
        self._release()
        self._open()

    def _release(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            container.close()

    def _read(self) -> list[av.VideoFrame] | None:
        """Decode the next packet; [] when it gave no frame yet, None at the end of the stream. Under the lock."""
        if self._closed or self._container is None:
            return None
        packet = next(self._packets, None)
        if packet is None:
            return None
        if packet.is_corrupt:
            raise _DecodeError("damaged packet (truncated or corrupt data)")
        try:
            return packet.decode()  # the final empty packet flushes the decoder's delayed frames
        except av.FFmpegError as exc:
            raise _DecodeError(f"undecodable packet ({_one_line(exc)})") from None

    def _frames(self) -> Iterator[Frame]:
        index = 0
        time_offset = 0.0  # added after a reconnect, so time_s keeps increasing across connections
        last_time = -1.0
        read_errors = 0
        skips = 0
        unreadable = 0  # stretches of data the demuxer failed on, reported
        while True:
            try:
                with self._lock:
                    decoded = self._read()
                read_errors = 0
            except _DecodeError as exc:
                self.on_skip(index, str(exc))
                skips += 1
                continue
            except (av.FFmpegError, OSError) as exc:
                # The demuxer itself failed: a live stream dropped, or a file is damaged here.
                if self._kind == "stream" and self.is_live:
                    if not self._recover(_one_line(exc)):
                        return
                    time_offset = last_time + self._frame_step()
                    continue
                self.on_skip(index, f"unreadable data ({_one_line(exc)})")
                unreadable += 1
                read_errors += 1
                if read_errors >= MAX_READ_ERRORS:
                    return
                with self._lock:
                    if self._container is None:
                        return
                    self._packets = self._container.demux(self._stream)  # resume after the bad bytes
                continue
            if decoded is None:
                if self._closed or not (self._kind == "stream" and self.is_live and self.reconnect):
                    if not self.is_live and not self._closed:
                        self._check_end(index, skips, last_time, reported=skips + unreadable > 0)
                    return
                # A live stream has no end: EOF means the server or camera went away.
                if not self._recover("end of stream"):
                    return
                time_offset = last_time + self._frame_step()
                continue
            for frame in decoded:
                if frame.is_corrupt:
                    self.on_skip(index, "corrupt frame")
                    skips += 1
                    continue
                frame_time = frame.time
                if frame_time is None:
                    time_s = index * self._frame_step()
                else:
                    if self._base_time is None:
                        self._base_time = frame_time
                    time_s = time_offset + frame_time - self._base_time
                last_time = time_s
                image = frame.to_ndarray(format="rgb24")
                turns = _turns(frame)
                if turns:
                    image = np.ascontiguousarray(np.rot90(image, turns))
                yield Frame(index, image, time_s)
                index += 1

    def _check_end(self, index: int, skips: int, last_time: float, reported: bool) -> None:
        """At the end of a file: report frames it promised but did not give (a file cut short), or that it gave none.
        `skips` counts the damaged frames skipped, `last_time` is the last frame's time_s, and `reported` says that
        some damage was reported already."""
        expected = self._stream.frames  # from the index (mp4, mov); 0 where the container keeps no count
        if expected > index + skips:
            self.on_skip(index, f"stream ends early: {expected - index - skips} of {expected} frames missing")
            return
        end = self._end_time()
        if not expected and index and end is not None:
            # Matroska, WebM, MPEG-TS: no frame count, but a duration; the last frame should reach it.
            reached = (self._base_time or 0.0) + last_time + self._frame_step()
            missing = end - reached
            if missing > max(LATE_END_S, LATE_END_FRACTION * end):
                self.on_skip(index, f"stream ends early: {missing:.1f} s of {end:.1f} s missing")
                return
        if index == 0 and not reported:
            self.on_skip(0, "no frame decodes (truncated or corrupt video)")

    def _end_time(self) -> float | None:
        """When the video stream should end, in seconds on its own clock; None when the file does not say."""
        stream, container = self._stream, self._container
        if stream.duration and stream.time_base:
            start = stream.start_time or 0
            return float((start + stream.duration) * stream.time_base)
        if container is not None and container.duration:
            # The container's duration covers every stream, audio included: hence the tolerance in `_check_end`.
            return ((container.start_time or 0) + container.duration) / av.time_base
        return None

    def _frame_step(self) -> float:
        return 1.0 / self.fps if self.fps else 0.04


def _turns(frame: av.VideoFrame) -> int:
    """Quarter turns, counter-clockwise as np.rot90 counts them, that set a frame upright. PyAV's `rotation` is the
    angle its display matrix turns the picture counter-clockwise: -90 for a phone video to be shown turned clockwise."""
    return round(getattr(frame, "rotation", 0) / 90) % 4


def _first_frame_turns(url: str, open_kwargs: dict[str, Any]) -> int:
    """`_turns` of a video's first frame, from a second, short-lived open (the source's own stays at its start);
    0 when none of its first packets decodes."""
    try:
        with _open_container(url, **open_kwargs) as container:
            for count, packet in enumerate(container.demux(container.streams.video[0])):
                if count >= PROBE_PACKETS:
                    break
                try:
                    decoded = packet.decode()
                except av.FFmpegError:
                    continue
                if decoded:
                    return _turns(decoded[0])
    except (av.FFmpegError, OSError, IndexError):
        pass
    return 0


class _DecodeError(Exception):
    """A packet the decoder rejected: skip it, the stream goes on."""


class _WebcamSource(FrameSource):
    """`webcam:N` through OpenCV: PyAV's FFmpeg build here has no v4l2 demuxer."""

    def __init__(self, spec: str, device: int, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.device = device
        self.is_live = True
        self._capture: Any = None
        self._pending: np.ndarray | None = None  # a frame read early to learn the size
        try:
            self._open()
        except DataError:
            raise
        except Exception as exc:  # OpenCV raises cv2.error or backend-specific errors
            raise DataError(f"{self.name}: cannot open camera {device} ({_one_line(exc)})") from None
        cv2 = self._cv2
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0)
        self.fps = fps if fps > 0 else None
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if self.width <= 0 or self.height <= 0:
            ok, image = self._capture.read()
            if ok and image is not None:
                self._pending = _bgr_to_rgb(image)
                self.height, self.width = self._pending.shape[:2]
        self.frame_count = self._cap_count(None)
        self._start = time.monotonic()

    def _open(self) -> None:
        try:
            import cv2
        except ImportError:
            raise DataError(f"{self.name}: webcams need OpenCV (pip install opencv-python-headless)") from None
        self._cv2 = cv2
        capture = cv2.VideoCapture(self.device)
        if not capture.isOpened():
            capture.release()
            raise DataError(f"{self.name}: cannot open camera {self.device}")
        self._capture = capture

    def _reopen(self) -> None:
        self._release()
        self._open()

    def _release(self) -> None:
        if self._capture is not None:
            capture, self._capture = self._capture, None
            capture.release()

    def _frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            with self._lock:
                if self._closed or self._capture is None:
                    return
                if self._pending is not None:
                    image, self._pending = self._pending, None
                else:
                    ok, raw = self._capture.read()
                    image = _bgr_to_rgb(raw) if ok and raw is not None else None
            if image is None:
                if not self._recover("camera stopped delivering frames"):
                    return
                continue
            yield Frame(index, image, time.monotonic() - self._start)
            index += 1


def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or grey, or BGRA) uint8 image as a contiguous RGB [H, W, 3] array."""
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, 2::-1])


def open_source(
    spec: str,
    *,
    reconnect: bool = True,
    max_reconnects: int = 5,
    on_skip: SkipCallback | None = None,
    max_frames: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> FrameSource:
    """Open a video file, a stream URL, `webcam:N` or `lavfi:GRAPH` (an FFmpeg virtual camera) as a `FrameSource`.

    `reconnect`/`max_reconnects`: a live stream or webcam that drops is reopened with exponential backoff, up to
    `max_reconnects` failed attempts in a row, then DataError. `on_skip(index, reason)` hears of every damaged frame
    that is skipped (default: a warning). `max_frames` stops after that many frames (lavfi sources never end).
    `timeout_s` bounds opening and each read of a network stream, so a dead server cannot hang the caller.
    """
    common: dict[str, Any] = {
        "reconnect": reconnect,
        "max_reconnects": max_reconnects,
        "on_skip": on_skip,
        "max_frames": max_frames,
    }
    if spec.startswith("webcam:"):
        device = spec.removeprefix("webcam:")
        if not device.isdigit():
            raise DataError(f"{spec}: expected webcam:N with N a camera number, e.g. webcam:0")
        return _WebcamSource(spec, int(device), **common)
    if spec.startswith("lavfi:"):
        graph = spec.removeprefix("lavfi:")
        if not graph:
            raise DataError(f"{spec}: empty lavfi graph; try lavfi:testsrc=size=320x240:rate=10")
        return _AvSource(spec, graph, {"format": "lavfi"}, kind="lavfi", **common)
    scheme = url_scheme(spec)
    if scheme in STREAM_SCHEMES:
        return _AvSource(spec, spec, network_open_kwargs(spec, timeout_s), kind="stream", **common)
    if scheme:
        raise DataError(f"{redact(spec)}: unsupported URL scheme '{scheme}://'")
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file")
    if path.is_dir():
        raise DataError(f"{spec}: is a folder, not a video")
    return _AvSource(spec, str(path), {}, kind="file", **common)


def url_scheme(spec: str) -> str:
    """`http` for `http://host/x.mp4`, lower case; "" for a file path."""
    return spec.split("://", 1)[0].lower() if "://" in spec else ""


def network_open_kwargs(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """`av.open` keyword arguments for a network URL, so a dead server cannot hang the caller."""
    micros = str(int(timeout_s * 1_000_000))
    # rw_timeout bounds each socket read; PyAV's own timeout interrupts a blocked open or read as well.
    options = {"rw_timeout": micros}
    if url_scheme(url).startswith("rtsp"):
        options |= {"rtsp_transport": "tcp", "timeout": micros}
    return {"options": options, "timeout": (timeout_s, timeout_s)}
