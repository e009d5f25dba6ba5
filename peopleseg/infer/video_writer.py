"""Write RGB frames to a video file, atomically, optionally keeping the audio of the source video.

The file is written beside the target and renamed into place when the writer closes. Leaving the `with` block on an
exception (Ctrl-C included) still finalises what was written: the encoder is flushed and the trailer written, so the
output plays. `abort()` discards it instead, and a writer closed without a frame leaves no file.

Odd sizes: yuv420p stores colour at half resolution, so libx264 refuses odd widths and heights. Frames are padded by
one row and/or column, repeating the edge pixels, to the next even size (`output_width`, `output_height`); nothing is
cropped or scaled. A pixel format without chroma subsampling (e.g. yuv444p) is written at the exact size.

Timestamps: `write(image, time_s)` stamps a frame at its source time, measured from the first frame's, on the
writer's clock (`time_base`, default 1/fps), so gaps, skipped frames and variable frame rates stay in step with the
audio; a time that does not move forward continues one frame step after the previous frame. Without `time_s` frames
get constant-rate timestamps (frame n at n / fps), as do constant-rate sources either way.

Colour: frames are converted with the BT.601 limited-range matrix, and the stream says so (smpte170m primaries,
transfer and matrix, tv range): untagged, players take HD video for BT.709 and shift its colours.

Audio from `audio_from` (a file, or an http(s)/... URL opened with the same timeouts as `sources.open_source`) is
remuxed packet by packet when its codec fits the output container, otherwise re-encoded (AAC where the container takes
it). It is aligned to the source's first video frame and trimmed to the video that was written. A URL whose audio
cannot be opened or read on is reported and left out; the video goes on.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import cv2
import numpy as np

from peopleseg.atomic import atomic_path
from peopleseg.errors import DataError
from peopleseg.infer import sources
from peopleseg.infer.sources import codec_threads, network_open_kwargs, redact, url_scheme

# Container format per suffix: the temp file's own suffix (".tmp") says nothing, so the format is named explicitly.
FORMATS = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
    ".ts": "mpegts",
    ".flv": "flv",
}
DEFAULT_CODEC = "libx264"
# Tried in order when the default codec does not fit the container (WebM takes only VP8/VP9/AV1).
FALLBACK_CODECS = ("libx264", "libvpx-vp9", "libvpx", "libsvtav1", "mpeg4")
# Encoders that take a constant-quality `crf`; others get a bit rate (see `_bit_rate`).
CRF_CODECS = {"libx264", "libx265", "libvpx", "libvpx-vp9", "libaom-av1", "libsvtav1"}
# FFmpeg's default layout per channel count, for sources whose layout is only "N channels".
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# FFmpeg's AVCOL_* numbers for BT.601 as `write` converts (smpte170m primaries, transfer and matrix; tv range).
BT601_SMPTE170M = 6
RANGE_TV = 1


class _Aborted(Exception):
    """Thrown into `atomic_path` so it deletes the temp file instead of renaming it."""


class VideoWriter:
    """`with VideoWriter("out.mp4", fps, width, height) as w: w.write(rgb)`; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        width: int,
        height: int,
        *,
        audio_from: str | os.PathLike[str] | None = None,
        codec: str = DEFAULT_CODEC,
        crf: int = 23,
        pixel_format: str = "yuv420p",
        options: dict[str, str] | None = None,
        time_base: Fraction | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        if not fps or fps <= 0:
            raise DataError(f"{self.path}: frame rate must be > 0, got {fps}")
        if width <= 0 or height <= 0:
            raise DataError(f"{self.path}: frame size must be positive, got {width}x{height}")
        fmt = FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise DataError(f"{self.path}: unknown video suffix '{self.path.suffix}' (use one of {', '.join(FORMATS)})")
        self.fps = float(fps)
        self.width = width
        self.height = height
        self.frames_written = 0
        self._rate = Fraction(self.fps).limit_denominator(1001 * 1000)  # 29.97 -> 30000/1001
        self._closed = False
        self._report = report or _warn
        self._first_time_s: float | None = None  # the source time of the first frame: output time 0
        self._last_pts = -1
        self._end_s = 0.0  # output time at the end of the last frame written
        self._audio_in: av.container.InputContainer | None = None
        self._audio_out: Any = None
        self._audio_copy = False
        self._audio_packets: Iterator[av.Packet] | None = None
        self._audio_next: av.Packet | None = None
        self._audio_offset_s = 0.0
        self._audio_trim = False  # drop audio before output time 0 (set when the first frame is late, see `write`)
        self._audio_url: str | None = None  # a network source: its failures leave the audio out, not the video
        self._atomic = atomic_path(self.path)
        temp = self._atomic.__enter__()
        try:
            container_options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
            self._container = av.open(str(temp), "w", format=fmt, container_options=container_options)
            self._setup_video(codec, crf, pixel_format, options or {}, time_base)
            if audio_from is not None:
                self._setup_audio(audio_from)
        except BaseException as exc:
            self._discard()
            if isinstance(exc, DataError):
                raise
            if isinstance(exc, (av.FFmpegError, OSError, ValueError)):
                raise DataError(f"{self.path}: cannot write video ({_one_line(exc)})") from None
            raise

    # -- set-up -------------------------------------------------------------------------------------------------------

    def _setup_video(
        self, codec: str, crf: int, pixel_format: str, options: dict[str, str], time_base: Fraction | None
    ) -> None:
        codec = self._pick_codec(codec)
        try:
            probe = av.VideoFormat(pixel_format, 3, 3)
            chroma = probe.components[-1]
        except (ValueError, av.FFmpegError):
            raise DataError(f"{self.path}: unknown pixel format '{pixel_format}'") from None
        # A 3x3 probe shows the subsampling: chroma planes 2 wide (or high) need even sizes.
        self.output_width = self.width + (self.width % 2 if chroma.width != 3 else 0)
        self.output_height = self.height + (self.height % 2 if chroma.height != 3 else 0)
        codec_options = dict(options)
        if codec in CRF_CODECS:
            codec_options.setdefault("crf", str(crf))
            if codec.startswith("libvpx"):
                codec_options.setdefault("b", "0")  # constant quality needs the bit-rate target off
        if codec in ("libx264", "libx265"):
            # x264's default "medium" preset costs as much CPU as a small model; "veryfast" keeps video real-time.
            codec_options.setdefault("preset", "veryfast")
            # Its frame threads compete with the model for the same cores (sources.codec_threads).
            codec_options.setdefault("threads", str(codec_threads()))
            # No look-ahead and no B-frames: at 1080p x264's look-ahead held 173 MB against 45 MB, which decides
            # whether `peopleseg infer` on 1080p fits in 1 GB. Files come out about 40% bigger at about the same
            # CPU; options={"tune": "film"} (any other tune) trades back.
            codec_options.setdefault("tune", "zerolatency")
        stream = self._container.add_stream(codec, rate=self._rate, options=codec_options)
        stream.width = self.output_width
        stream.height = self.output_height
        stream.pix_fmt = pixel_format
        self._yuv420 = pixel_format == "yuv420p"  # frames then go in already converted (see `write`)
        if not probe.is_rgb:
            context = stream.codec_context
            context.color_primaries = context.color_trc = context.colorspace = BT601_SMPTE170M
            context.color_range = RANGE_TV
        if codec not in CRF_CODECS:
            stream.bit_rate = _bit_rate(self.output_width, self.output_height, self.fps)
        self._video = stream
        self._time_base = time_base or Fraction(self._rate.denominator, self._rate.numerator)
        if time_base is not None:
            stream.codec_context.time_base = time_base
        # Ticks of one frame at the nominal rate: where a source's time stalls or jumps back, frames go on at this step.
        self._step = max(1, round(1 / (self._rate * self._time_base)))

    def _pick_codec(self, codec: str) -> str:
        try:
            canonical = av.Codec(codec, "w").canonical_name
        except (ValueError, av.FFmpegError):
            raise DataError(f"{self.path}: unknown video encoder '{codec}'") from None
        supported = self._container.supported_codecs
        if not supported or canonical in supported:
            return codec
        if codec == DEFAULT_CODEC:
            for fallback in FALLBACK_CODECS:
                if fallback in av.codecs_available and av.Codec(fallback, "w").canonical_name in supported:
                    return fallback
        raise DataError(f"{self.path}: a {self.path.suffix} file cannot hold {codec} video; pick another codec")

    def _setup_audio(self, audio_from: str | os.PathLike[str]) -> None:
        spec = os.fspath(audio_from)
        if url_scheme(spec):
            self._audio_url = redact(spec)
            try:
                audio_in = sources._open_container(spec, **network_open_kwargs(spec))
            except (av.FFmpegError, OSError) as exc:
                self._report(f"{self.path}: audio left out: cannot open {self._audio_url} ({_one_line(exc)})")
                return
        else:
            source = Path(spec)
            if not source.exists():
                raise DataError(f"{source}: no such file (audio_from)")
            try:
                audio_in = av.open(str(source))
            except (av.FFmpegError, OSError) as exc:
                raise DataError(f"{source}: cannot read audio ({_one_line(exc)})") from None
        if not audio_in.streams.audio:
            audio_in.close()  # nothing to keep: the output is silent, as the source was
            return
        self._audio_in = audio_in
        in_stream = audio_in.streams.audio[0]
        # Output time 0 is the source's first video frame; shift the audio by the same amount.
        if audio_in.streams.video and audio_in.streams.video[0].start_time is not None:
            video = audio_in.streams.video[0]
            self._audio_offset_s = float(video.start_time * video.time_base)
        supported = self._container.supported_codecs
        if not supported or in_stream.codec_context.name in supported:
            self._audio_out = self._container.add_stream_from_template(in_stream)
            self._audio_copy = True
        else:
            target = "aac" if "aac" in supported else self._container.default_audio_codec
            rates = av.Codec(target, "w").audio_rates or ()
            rate = in_stream.rate if not rates or in_stream.rate in rates else max(rates)
            # The default layout for the channel count: an "unspecified order" layout (AVI, WAV) makes AAC refuse.
            channels = in_stream.layout.nb_channels
            layout = in_stream.layout.name
            if layout.endswith("channels"):
                layout = DEFAULT_LAYOUTS.get(channels, "stereo")
            self._audio_out = self._container.add_stream(target, rate=rate, layout=layout)
            # AAC tops out at 6 bits per sample per channel: 128 kb/s would not open for 8 kHz mono speech.
            self._audio_out.bit_rate = min(64_000 * channels, 5 * rate * channels)
        self._audio_packets = audio_in.demux(in_stream)

    # -- writing ------------------------------------------------------------------------------------------------------

    def write(self, image: np.ndarray, time_s: float | None = None) -> None:
        """Append one RGB uint8 [height, width, 3] frame, shown at source time `time_s` (seconds; see the module
        docstring) or, without it, one frame step after the previous one."""
        if self._closed:
            raise DataError(f"{self.path}: write after close")
        if image.dtype != np.uint8 or image.shape != (self.height, self.width, 3):
            raise DataError(
                f"{self.path}: frame {self.frames_written} is {'x'.join(map(str, image.shape))} {image.dtype}, "
                f"expected {self.height}x{self.width}x3 uint8"
            )
        pad_h, pad_w = self.output_height - self.height, self.output_width - self.width
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        image = np.ascontiguousarray(image)
        if self._yuv420:
            # OpenCV's SIMD conversion, then a plain copy into the frame: 0.3 ms a 768x576 frame, against 2.8 ms for
            # an RGB frame that the encoder converts with swscale. Both use the BT.601 limited-range matrix.
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        else:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        pts = self._next_pts(time_s)
        frame.pts = pts
        frame.time_base = self._time_base
        try:
            for packet in self._video.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1
            self._last_pts = pts
            self._end_s = float((pts + self._step) * self._time_base)
            self._pump_audio(self._end_s)
        except (av.FFmpegError, OSError) as exc:
            raise DataError(f"{self.path}: frame {self.frames_written}: cannot encode ({_one_line(exc)})") from None

    def _next_pts(self, time_s: float | None) -> int:
        """The frame's pts on the writer's clock: its source time since the first frame, strictly increasing."""
        if time_s is None:
            return self._last_pts + self._step
        if self._first_time_s is None:
            self._first_time_s = time_s
            if time_s > 1e-6 and not self._audio_trim:
                # The first frame came late (frames before it skipped): the audio starts with it, not before.
                self._audio_offset_s += time_s
                self._audio_trim = True
        pts = round((time_s - self._first_time_s) / self._time_base)
        return pts if pts > self._last_pts else self._last_pts + self._step

    def _pump_audio(self, until_s: float) -> None:
        """Mux the source's audio up to `until_s` of output time, so audio and video stay interleaved."""
        if self._audio_packets is None:
            return
        while True:
            if self._audio_next is None:
                self._audio_next = self._next_audio_packet()
                if self._audio_next is None:
                    self._audio_packets = None
                    return
            packet = self._audio_next
            if packet.dts is None and packet.pts is None:
                self._audio_next = None  # the demuxer's final empty packet
                continue
            start = packet.pts if packet.pts is not None else packet.dts
            at = float(start * packet.time_base) - self._audio_offset_s
            if at >= until_s:
                return
            self._audio_next = None
            if self._audio_trim and at < 0:
                continue  # sound from before the first frame written
            shift = round(self._audio_offset_s / packet.time_base)
            if self._audio_copy:
                if packet.pts is not None:
                    packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                packet.stream = self._audio_out
                self._container.mux(packet)
            else:
                for frame in packet.decode():
                    if frame.pts is not None:
                        frame.pts -= shift
                    for out in self._audio_out.encode(frame):
                        self._container.mux(out)

    def _next_audio_packet(self) -> av.Packet | None:
        packets: Iterator[av.Packet] = self._audio_packets  # type: ignore[assignment]
        if self._audio_url is None:
            return next(packets, None)
        try:
            return next(packets, None)
        except (av.FFmpegError, OSError) as exc:
            # A network hiccup: the frames go on without sound rather than the run failing for it.
            self._report(f"{self.path}: audio from {self._audio_url} stops at {self._end_s:.1f} s ({_one_line(exc)})")
            return None

    # -- finishing ----------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Flush the encoder, write the trailer and move the file into place. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.frames_written == 0:
            # Nothing to play (a source with no readable frame): FFmpeg would leave an empty, unplayable file.
            self._discard()
            return
        try:
            self._pump_audio(self._end_s)
            for packet in self._video.encode(None):
                self._container.mux(packet)
            if self._audio_out is not None and not self._audio_copy:
                for packet in self._audio_out.encode(None):
                    self._container.mux(packet)
            self._container.close()
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._discard()
            raise DataError(f"{self.path}: cannot finish writing video ({_one_line(exc)})") from None
        except BaseException:
            self._discard()
            raise
        self._close_audio_in()
        self._atomic.__exit__(None, None, None)  # rename into place

    def abort(self) -> None:
        """Discard the output: nothing appears at `path`."""
        if self._closed:
            return
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        self._closed = True
        container = getattr(self, "_container", None)
        if container is not None:
            with contextlib.suppress(av.FFmpegError, OSError, ValueError):
                container.close()  # the file is deleted next; a failed trailer does not matter
        self._close_audio_in()
        self._atomic.__exit__(_Aborted, _Aborted(), None)  # deletes the temp file

    def _close_audio_in(self) -> None:
        if self._audio_in is not None:
            audio_in, self._audio_in = self._audio_in, None
            audio_in.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # An error or Ctrl-C inside the block: keep what was written as a playable file, then let the error go on.
        with contextlib.suppress(Exception):
            self.close()  # on failure close() discards the file; the original exception is the one to report

    def __repr__(self) -> str:
        return f"VideoWriter({str(self.path)!r}, {self.width}x{self.height} @ {self.fps:g} fps)"


def _bit_rate(width: int, height: int, fps: float) -> int:
    """A bit rate for encoders without constant quality (mpeg4, ...): ~0.2 bit per pixel, enough to look clean."""
    return max(200_000, int(width * height * fps * 0.2))


def _one_line(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split())) or type(exc).__name__


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)
