"""The `peopleseg infer` job as a library: expand inputs, then segment images and videos into the chosen outputs.

Outputs per image: `<stem>_mask.png`, `_overlay`, `_cutout.png` (RGBA), `_blur`, `_pixelate`, and `<stem>.json`.
Outputs per video or stream: `<stem>_overlay.mp4` / `_blur.mp4` / `_pixelate.mp4` (audio kept), a folder of mask
PNGs (`<stem>_masks/000000.png` …) or RGBA cut-outs, and `<stem>.jsonl` with per-frame people counts and occupancy.

`<stem>` is the input's file name stem, unless inputs of one run share it: see `output_stems`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peopleseg.atomic import atomic_open
from peopleseg.data.image_io import IMAGE_SUFFIXES, read_image, write_image
from peopleseg.errors import ConfigError, DataError
from peopleseg.infer.segmenter import SegmentationResult, Segmenter

OUTPUTS = ("mask", "overlay", "cutout", "blur", "pixelate-people", "json")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "webcam:", "lavfi:")
# Rendered video outputs; the other outputs of a video are frame folders or JSONL.
_VIDEO_RENDERS = {"overlay": "overlay", "blur": "blur", "pixelate-people": "pixelate"}
# Frame folders hold `000000.png`, `000001.png`, …: the only files a run tidies away there (`_tidy_frame_folder`).
FRAME_NAME = re.compile(r"\d{6}\.png")
# How many nice levels below the model the video pipeline's decode and render/encode threads run (pipeline.py): on a
# 2-core VM the model's threads were then no longer preempted mid-operator, and end-to-end FPS rose by a median 7-12%
# in two paired runs (no change in a third, on a quieter host).
VIDEO_SIDE_NICENESS = 10


@dataclass
class InferSummary:
    images: int = 0
    videos: int = 0
    frames: int = 0
    failed: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    fps: float = 0.0
    # Per image: (path, the JSON summary of its result): small, so a caller can print or aggregate them.
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def parse_outputs(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    outputs = [item.strip() for item in items if item.strip()]
    for item in outputs:
        if item not in OUTPUTS:
            raise ConfigError(f"unknown output '{item}'; choose from {', '.join(OUTPUTS)}")
    if not outputs:
        raise ConfigError("no output chosen")
    return outputs


def expand_inputs(items: Sequence[str], output_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Files, folders (recursive), globs, video files and stream specs, in a stable order. Each of a glob's matches
    is taken as if it was named: a file as it is, a folder walked. Nothing inside `output_dir`, the run's output
    folder, is found by walking a folder or by a glob (only a file named as such is taken), so a second run does not
    read the first one's outputs back in as inputs."""
    skip = Path(output_dir).resolve() if output_dir is not None else None
    media = set(IMAGE_SUFFIXES) | VIDEO_SUFFIXES

    def is_output(path: Path) -> bool:
        if skip is None:
            return False
        resolved = path.resolve()
        return resolved == skip or skip in resolved.parents

    def take(path: Path, item: str) -> list[str]:
        if path.is_dir():
            walked = sorted(path.rglob("*"))
            return [str(p) for p in walked if p.is_file() and p.suffix.lower() in media and not is_output(p)]
        return [item]

    found: list[str] = []
    for item in items:
        if item.startswith(STREAM_PREFIXES):
            found.append(item)
            continue
        path = Path(item)
        if path.exists():
            found += take(path, item)
        elif glob.has_magic(item):
            matches = [match for match in sorted(glob.glob(item, recursive=True)) if not is_output(Path(match))]
            if not matches:
                raise DataError(f"{item}: the pattern matches no files")
            # `**` matches a folder and the files in it: each file is taken once.
            expanded = [spec for match in matches for spec in take(Path(match), match)]
            found += list(dict.fromkeys(expanded))
        else:
            raise DataError(f"{item}: no such file or folder")
    if not found:
        raise DataError(f"no images or videos found in {', '.join(items)}")
    return found


def is_video(spec: str) -> bool:
    """A video file, a stream spec, or an animated GIF (segmented frame by frame, as a video)."""
    if spec.startswith(STREAM_PREFIXES):
        return True
    suffix = Path(spec).suffix.lower()
    return suffix in VIDEO_SUFFIXES or (suffix == ".gif" and is_animated(spec))


def is_animated(path: str | os.PathLike[str]) -> bool:
    """Whether an image file holds more than one frame (read from its header and frame markers, not decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return bool(getattr(image, "is_animated", False))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # unreadable: reading it will say so
        return False


def output_stems(specs: Sequence[str]) -> dict[str, Path]:
    """Each input's output stem, relative to the output folder, such that no two inputs of one run write the same
    file (compared case-insensitively, as macOS and Windows do).

    A stem no other input shares stays flat: `photos/x.jpg` -> `x` (`x_mask.png`, `x.json`). Inputs that share one
    mirror their folder below the inputs' common folder (`photos/a/x.png` -> `a/x`, `photos/b/x.png` -> `b/x`,
    `photos/x.jpg` -> `x`); any that still share it (same folder, another suffix) keep the suffix in the stem
    (`x_jpg`, `x_png`), and what then still clashes (two spellings of a suffix, streams named alike) is numbered
    (`x_2`). Two spellings of one file (`x.jpg`, `./x.jpg`) are one input with one stem.
    """
    # Per distinct input: its first spelling, and for a file its folder (absolute).
    first: dict[str, str] = {}
    folders: dict[str, str] = {}
    for spec in specs:
        key = _input_key(spec)
        if not spec.startswith(STREAM_PREFIXES):
            folders[key] = os.path.dirname(key)
        first.setdefault(key, spec)
    flat = {key: Path(stream_stem(spec)) for key, spec in first.items()}
    stems = dict(flat)
    try:
        root = os.path.commonpath(list(folders.values())) if folders else ""
    except ValueError:  # Windows paths on different drives share no folder
        root = ""
    for key in _clashing(stems):
        if key in folders:
            folder = os.path.dirname(os.path.abspath(first[key]))  # as spelt, not case-folded
            relative = os.path.relpath(folder, root) if root else os.path.splitdrive(folder)[1].lstrip("\\/")
            stems[key] = Path(relative) / stems[key]
    for key in _clashing(stems):
        suffix = Path(first[key]).suffix.lstrip(".") if key in folders else ""
        if suffix:
            stems[key] = stems[key].with_name(f"{stems[key].name}_{suffix}")
    changed = {key for key in stems if stems[key] != flat[key]}
    taken: set[str] = set()
    # Unchanged stems claim their names first, so an input whose flat name was free keeps it.
    for key in sorted(stems, key=lambda k: k in changed):
        stem, number = stems[key], 1
        while str(stem).casefold() in taken:
            number += 1
            stem = stems[key].with_name(f"{stems[key].name}_{number}")
        stems[key] = stem
        taken.add(str(stem).casefold())
    return {spec: stems[_input_key(spec)] for spec in specs}


def _input_key(spec: str) -> str:
    """What makes two inputs the same: the stream spec, or the file's absolute path (case-folded where the OS does)."""
    return spec if spec.startswith(STREAM_PREFIXES) else os.path.normcase(os.path.abspath(spec))


def _clashing(stems: Mapping[str, Path]) -> list[str]:
    """The keys whose stem another key shares, compared case-insensitively."""
    counts = Counter(str(stem).casefold() for stem in stems.values())
    return [key for key, stem in stems.items() if counts[str(stem).casefold()] > 1]


def _output_path(out_dir: Path, stem: Path, tail: str) -> Path:
    """`out_dir/a/x_mask.png` for stem `a/x` and tail `_mask.png`."""
    return out_dir / stem.parent / f"{stem.name}{tail}"


def render(image: np.ndarray, result: SegmentationResult, kind: str) -> np.ndarray:
    from peopleseg.infer import render as draw

    if kind == "overlay":
        return draw.overlay(image, result.person_mask)
    if kind == "cutout":
        return draw.cutout(image, result.person)
    if kind == "blur":
        return draw.blur_background(image, result.person)
    if kind == "pixelate-people":
        return draw.pixelate_people(image, result.person_mask)
    if kind == "mask":
        return result.mask
    raise ConfigError(f"output '{kind}' is not an image")


def segment_images(
    segmenter: Segmenter,
    paths: Sequence[str],
    out_dir: str | Path,
    outputs: Sequence[str] = ("mask", "overlay"),
    report: Callable[[str], None] | None = None,
    progress: bool = True,
    skip_bad: bool = True,
    stems: Mapping[str, str | os.PathLike[str]] | None = None,
) -> InferSummary:
    """Segment image files into `out_dir`. A file that cannot be read, or whose outputs cannot be written, is
    reported and skipped (or, without `skip_bad`, raised). `stems` names each path's outputs (relative to `out_dir`);
    by default `output_stems(paths)`, so inputs that share a file name do not overwrite each other's outputs. Images
    over the segmenter's `max_pixels` are refused from their header. Of an animated GIF only the first frame is
    segmented here, with a notice: `segment_video` reads every frame (`is_video` sends animated GIFs there)."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out_dir = Path(out_dir)
    names = output_stems(paths) if stems is None else {path: Path(stem) for path, stem in stems.items()}
    summary = InferSummary()
    report = report or _stderr
    columns = [
        TextColumn("images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
    ]
    console = Console(stderr=True)  # stdout is for results: a bar there leaves a blank line in it
    with Progress(*columns, console=console, disable=not progress or len(paths) < 2, transient=True) as bar:
        task = bar.add_task("images", total=len(paths), rate="")
        start = time.perf_counter()

        def skip(path: str, message: str) -> None:
            summary.failed.append(str(path))
            report(f"skipped {message}")
            bar.advance(task)

        for path in paths:
            try:
                image = read_image(path, max_pixels=segmenter.max_pixels)
                result = segmenter.segment(image)
            except DataError as exc:  # a bad file; a bad option (ConfigError) is every image's problem: raised
                if not skip_bad:
                    raise
                skip(path, str(exc))
                continue
            if Path(path).suffix.lower() == ".gif" and is_animated(path):
                report(f"{path}: an animated GIF; only its first frame is segmented here")
            stem = names.get(path) or Path(Path(path).stem)
            try:
                summary.written += _write_image_outputs(Path(path), image, result, out_dir, outputs, stem)
            except OSError as exc:  # a full disk, a read-only folder, a name the file system refuses
                if not skip_bad:
                    raise
                skip(path, f"{path}: cannot write {exc.filename} ({exc.strerror})")
                continue
            summary.records.append((str(path), result.to_dict()))
            summary.images += 1
            elapsed = time.perf_counter() - start
            bar.update(task, advance=1, rate=f"{summary.images / elapsed:.1f} img/s" if elapsed else "")
        summary.fps = summary.images / max(time.perf_counter() - start, 1e-9)
    return summary


def _write_image_outputs(
    path: Path, image: np.ndarray, result: SegmentationResult, out_dir: Path, outputs: Sequence[str], stem: Path
) -> list[Path]:
    written = []
    photo_suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    for kind in outputs:
        if kind == "json":
            target = _output_path(out_dir, stem, ".json")
        else:
            suffix = ".png" if kind in ("mask", "cutout") else photo_suffix
            name = {"pixelate-people": "pixelate"}.get(kind, kind)
            target = _output_path(out_dir, stem, f"_{name}{suffix}")
        try:
            if kind == "json":
                with atomic_open(target) as stream:
                    json.dump({"image": str(path), **result.to_dict()}, stream, indent=2)
                    stream.write("\n")
            else:
                write_image(target, render(image, result, kind))
        except OSError as exc:
            # Name the output, not the temporary file beside it that the atomic write failed on.
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        written.append(target)
    return written


def stream_stem(spec: str) -> str:
    """A file-name stem for a video path or a stream spec (`rtsp://cam1/live` → `rtsp_cam1_live`). A URL's user name
    and password (`rtsp://user:pass@cam1/live`) are left out: file names are seen by all."""
    if spec.startswith(STREAM_PREFIXES):
        scheme, separator, rest = spec.partition("://")
        if separator:
            host, slash, path = rest.partition("/")
            spec = f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"
        return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")[:80] or "stream"
    return Path(spec).stem


def segment_video(
    segmenter: Segmenter,
    spec: str,
    out_dir: str | Path,
    outputs: Sequence[str] = ("blur",),
    batch_size: int = 4,
    smoothing: bool = True,
    alpha: float = 0.5,
    max_frames: int | None = None,
    progress: bool = True,
    report: Callable[[str], None] | None = None,
    side_niceness: int = VIDEO_SIDE_NICENESS,
    stem: str | os.PathLike[str] | None = None,
) -> InferSummary:
    """Segment a video file, stream (`rtsp://…`, `http://…`), `webcam:N` or `lavfi:GRAPH` into `out_dir`.

    Decoding, inference and encoding run as a pipeline of threads with bounded queues; frames go through the model
    `batch_size` at a time. With `smoothing` the person probability is averaged over time with hysteresis
    (`alpha` is the weight of the newest frame), which stops masks flickering on a still camera.
    A corrupt frame is reported and skipped. Ctrl-C (KeyboardInterrupt) still leaves valid, playable files.
    Decoding and rendering/encoding run `side_niceness` nice levels below the model (Linux; 0 keeps them level).
    Output video frames keep their source times (gaps and variable frame rates stay in step with the audio); frames
    whose size changes mid-stream are letterboxed into the video's first size. `stem` names the outputs (relative to
    `out_dir`; default `stream_stem(spec)`): give `output_stems(specs)[spec]` when a run has several inputs.
    """
    import cv2

    out_dir = Path(out_dir)
    report = report or _stderr
    stem = Path(stem) if stem is not None else Path(stream_stem(spec))
    # Rendering runs beside the model on the same cores: OpenCV's own thread pool would only fight it for them,
    # and neither should onnxruntime's threads busy-wait between operators (backends.py).
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    busy_wait = getattr(segmenter.backend, "busy_wait", None)
    if busy_wait is not None:
        segmenter.backend.busy_wait = False  # type: ignore[attr-defined]
    # torch itself runs on one thread beside onnxruntime inside every Segmenter call (`torch_threads_beside`).
    try:
        return _segment_video(
            segmenter,
            spec,
            out_dir,
            outputs,
            batch_size,
            smoothing,
            alpha,
            max_frames,
            progress,
            report,
            stem,
            side_niceness,
        )
    finally:
        cv2.setNumThreads(cv_threads)
        if busy_wait is not None:
            segmenter.backend.busy_wait = busy_wait  # type: ignore[attr-defined]


def _segment_video(
    segmenter: Segmenter,
    spec: str,
    out_dir: Path,
    outputs: Sequence[str],
    batch_size: int,
    smoothing: bool,
    alpha: float,
    max_frames: int | None,
    progress: bool,
    report: Callable[[str], None],
    stem: Path,
    side_niceness: int,
) -> InferSummary:
    from peopleseg.infer.people import PeopleTracker
    from peopleseg.infer.pipeline import run_pipeline
    from peopleseg.infer.smoothing import TemporalSmoother
    from peopleseg.infer.sources import open_source, redact
    from peopleseg.infer.video_writer import VideoWriter

    name = redact(spec)  # what messages show: never a stream's password
    smoother = TemporalSmoother(alpha=alpha) if smoothing else None
    tracker = PeopleTracker()
    summary = InferSummary(videos=1)
    skipped: list[int] = []

    def on_skip(index: int, reason: str) -> None:
        skipped.append(index)
        report(f"{name}: frame {index}: {reason}; skipped")

    with ExitStack() as stack:
        source = stack.enter_context(open_source(spec, on_skip=on_skip, max_frames=max_frames))
        fps = source.fps or 25.0
        writers: dict[str, Any] = {}
        for kind in outputs:
            if kind in _VIDEO_RENDERS:
                target = _output_path(out_dir, stem, f"_{_VIDEO_RENDERS[kind]}.mp4")
                audio = spec if source.has_audio and not source.is_live else None
                writer = VideoWriter(
                    target,
                    fps,
                    source.width,
                    source.height,
                    audio_from=audio,
                    time_base=source.time_base,
                    report=report,
                )
                writers[kind] = stack.enter_context(writer)
                summary.written.append(target)
        frame_dirs = {}
        new_dirs = []  # frame folders this run made: left empty (no readable frame), they are removed again
        for kind, folder in (("mask", "masks"), ("cutout", "cutouts")):
            if kind in outputs:
                frame_dirs[kind] = _output_path(out_dir, stem, f"_{folder}")
                if not frame_dirs[kind].exists():
                    new_dirs.append(frame_dirs[kind])
                frame_dirs[kind].mkdir(parents=True, exist_ok=True)
                summary.written.append(frame_dirs[kind])
        jsonl = None
        if "json" in outputs:
            target = _output_path(out_dir, stem, ".jsonl")
            target.parent.mkdir(parents=True, exist_ok=True)
            # Line by line, flushed: an interrupted or crashed run keeps every frame it finished.
            jsonl = stack.enter_context(open(target, "w", buffering=1))
            summary.written.append(target)

        def process(frames: list[Any]) -> list[SegmentationResult]:
            return segmenter.segment_batch([f.image for f in frames], people=False)

        resized: list[int] = []  # the first frame whose size differs from the video's, once found
        frames_done = [0]  # frames written to every output so far (indices run 0, 1, 2, ... in order)

        def consume(frame: Any, result: SegmentationResult) -> None:
            result = segmenter.follow(result, smoother, tracker, people=jsonl is not None, image=frame.image)
            height, width = frame.image.shape[:2]
            if writers and (width, height) != (source.width, source.height) and not resized:
                resized.append(frame.index)
                report(
                    f"{name}: frame {frame.index} is {width}x{height}, the video started at "
                    f"{source.width}x{source.height}; such frames are letterboxed into the output video"
                )
            for kind, writer in writers.items():
                image = _fit(render(frame.image, result, kind), writer.width, writer.height)
                writer.write(image, frame.time_s)
            for kind, folder in frame_dirs.items():
                write_image(folder / f"{frame.index:06d}.png", render(frame.image, result, kind))
            if jsonl is not None:
                record = {"frame": frame.index, "time_s": round(frame.time_s, 4), **result.to_dict()}
                record["occupancy"] = record.pop("person_fraction")
                record["total_people_seen"] = tracker.total_seen
                jsonl.write(json.dumps(record) + "\n")
            frames_done[0] = frame.index + 1

        stats = run_pipeline(
            source,
            process,
            consume,
            batch_size=batch_size,
            # Enough decoded frames queued for the next batch, and no more: at 1080p each queued frame and result
            # holds about 17 MB, and the model is the slow stage, so deeper queues only cost memory.
            queue_size=batch_size + 1,
            progress=progress,
            total=source.frame_count,
            description=stem.name,
            side_niceness=side_niceness,
        )
    summary.frames, summary.fps = stats.frames, stats.fps
    for folder in frame_dirs.values():
        _tidy_frame_folder(folder, frames_done[0], report)
    # A video writer that got no frame leaves no file (video_writer.py), and neither does a frame folder: list only
    # what is there.
    for folder in new_dirs:
        if not any(folder.iterdir()):
            folder.rmdir()
    summary.written = [path for path in summary.written if path.exists()]
    if skipped:
        summary.failed += [f"{name}: frame {i}" for i in skipped]
    return summary


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The frame scaled to fit `width` x `height`, aspect ratio kept, centred on black; as it is when it fits."""
    if image.shape[:2] == (height, width):
        return image
    import cv2

    from peopleseg.infer.resolution import letterbox_box

    top, left, inner_height, inner_width = letterbox_box(image.shape[:2], (height, width))
    shrink = inner_height < image.shape[0]
    inner = cv2.resize(image, (inner_width, inner_height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    canvas = np.zeros((height, width, *image.shape[2:]), image.dtype)
    canvas[top : top + inner_height, left : left + inner_width] = inner
    return canvas


def _tidy_frame_folder(folder: Path, frames: int, report: Callable[[str], None]) -> None:
    """After a run that wrote `frames` frames (000000.png to frames - 1) into `folder`: remove the frames an earlier,
    longer run left beyond them, so the folder matches this run's video and JSONL, and say so in one line. Nothing
    else is touched: other files are the user's, and are only counted. A run that wrote no frame changes nothing."""
    if frames == 0 or not folder.is_dir():
        return
    stale: list[Path] = []
    others = 0
    for path in folder.iterdir():
        if FRAME_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            if int(path.stem) >= frames:
                stale.append(path)
        elif not path.name.startswith("."):
            others += 1
    if stale:
        stale.sort()
        for path in stale:
            path.unlink(missing_ok=True)
        report(
            f"{folder}: removed {len(stale)} frame(s) of an earlier, longer run ({stale[0].name} to {stale[-1].name})"
        )
    if others:
        report(f"{folder}: also holds {others} file(s) that are not frames of this run; left as they are")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
