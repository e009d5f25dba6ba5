"""`peopleseg autolabel`: label images and videos with a teacher into a folder dataset ready for `peopleseg train`.

Layout of OUT (each source gets a sub-folder, so `subset_from_subfolder` reports metrics per source):

    OUT/images/<source>/<name>.jpg     the image (or video frame), possibly downscaled to `max_side`
    OUT/masks/<source>/<name>.png      0 background, 1 person, 255 uncertain (ignored by the loss)
    OUT/probs/<source>/<name>.png      the teacher's person probability x255, to re-threshold without relabelling
    OUT/manifest.jsonl                 one record per label: teacher, confidence, person fraction, source file

Re-running skips what the manifest already holds; a video resumes after its last labelled frame, warming the
teacher's recurrent state up on the frames just before it. The manifest's first record holds the settings the labels
were made with; resuming with other settings is refused unless `relabel` is set. A redone sample appends a new record
(the last record per key wins; `{"dropped": key}` means the sample was dropped as unsure).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from peopleseg.autolabel.labels import LabelPolicy, LabelStats, agreement_iou, with_prior
from peopleseg.autolabel.teacher import Teacher, check_probabilities
from peopleseg.data.image_io import IMAGE_SUFFIXES, read_image, write_image
from peopleseg.data.masks import mask_size_mismatch, read_mask
from peopleseg.errors import ConfigError, DataError, PeoplesegError
from peopleseg.infer.run import VIDEO_SUFFIXES, is_video

MANIFEST = "manifest.jsonl"


@dataclass
class AutolabelConfig:
    """How labels are made and stored.

    `prior_masks`: a folder of masks the images already have (paired by relative path and stem, 0/1 or 0/255):
    teacher and prior are merged, keeping pixels where they agree (`labels.with_prior`).
    `video_every`: keep every Nth video frame as a sample (the teacher still sees every frame, for its state).
    `video_warmup`: frames re-run before the resume point of an interrupted video, to rebuild that state.
    `max_side`: downscale stored images and labels so their longer side is at most this (0 keeps them).
    `min_confidence`: drop samples where fewer than this fraction of pixels got a confident label.
    `relabel`: label every input again even when the output folder holds labels made with other settings.
    """

    background_below: float = 0.3
    person_above: float = 0.7
    prior_masks: str | None = None
    video_every: int = 5
    video_warmup: int = 10
    max_video_frames: int | None = None
    max_side: int = 1024
    min_confidence: float = 0.0
    jpeg_quality: int = 95
    save_probs: bool = True
    relabel: bool = False

    def __post_init__(self) -> None:
        LabelPolicy(self.background_below, self.person_above)  # validates the thresholds
        if self.video_every < 1:
            raise ConfigError(f"video_every must be >= 1, got {self.video_every}")
        if self.video_warmup < 0:
            raise ConfigError(f"video_warmup must be >= 0, got {self.video_warmup}")
        if self.max_side < 0:
            raise ConfigError(f"max_side must be >= 0, got {self.max_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"min_confidence must be in 0..1, got {self.min_confidence}")

    @property
    def policy(self) -> LabelPolicy:
        return LabelPolicy(self.background_below, self.person_above)

    def settings(self, teacher: str) -> dict[str, Any]:
        """What the labels depend on: a resume with other values would mix two kinds of labels in one dataset."""
        return {
            "teacher": teacher,  # includes any TTA views, e.g. "red+tta(flip)"
            "background_below": self.background_below,
            "person_above": self.person_above,
            "video_every": self.video_every,
            "max_side": self.max_side,  # (not max_video_frames: it limits how much is labelled, not how)
            "prior_masks": str(Path(self.prior_masks).resolve()) if self.prior_masks else None,
            "min_confidence": self.min_confidence,  # which samples are kept
        }


# Settings recorded since a later release, with the value that means "as before" for manifests written without them.
_SETTINGS_ADDED_LATER: dict[str, Any] = {"prior_masks": None, "min_confidence": 0.0}


@dataclass
class AutolabelSummary:
    labelled: int = 0
    skipped_done: int = 0
    dropped_low_confidence: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    prior_agreement: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class WorkItem:
    """One still to label: its file, the sample key (`<source>/<relative stem>`) and its prior mask if any."""

    path: str
    key: str
    prior: str | None = None


OUTPUT_PARTS = ("images", "masks", "probs", "manifest.jsonl")


def set_aside_old_labels(out: Path) -> Path | None:
    """Before a relabel: move the labels already in `out` into `out/replaced-<time>/`, so the new run starts clean
    (no stale sample from the old settings stays among the new ones) and nothing of the old run is lost."""
    present = [out / part for part in OUTPUT_PARTS if (out / part).exists()]
    if not present:
        return None
    aside = out / time.strftime("replaced-%Y%m%d-%H%M%S")
    aside.mkdir()
    for path in present:
        path.rename(aside / path.name)
    print(f"{out}: the earlier labels were moved to {aside} (relabel)", file=sys.stderr)
    return aside


def plan_inputs(
    inputs: Sequence[str], prior_masks: str | None = None, exclude: str | os.PathLike[str] | None = None
) -> tuple[list[WorkItem], list[tuple[str, str]]]:
    """Stills as `WorkItem`s and videos as (spec, source name), from files, folders (recursive) and globs.

    Files under `exclude` (the output folder) are skipped, so an output inside an input is not labelled as input.
    """
    import glob

    # Only what autolabel writes there: a user's own files under the output folder may still be inputs.
    skip = [Path(exclude).resolve() / part for part in OUTPUT_PARTS] if exclude is not None else []
    stills: list[WorkItem] = []
    videos: list[tuple[str, Path | None]] = []
    for item in inputs:
        path = Path(item)
        if is_video(item) and not path.is_dir():
            if "://" not in item and not path.exists():
                raise DataError(f"{item}: no such file")
            videos.append((item, path if "://" not in item else None))
            continue
        if path.is_dir():
            root, files = path, sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            root, files = path.parent, [path]
        elif glob.has_magic(item):
            files = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not files:
                raise DataError(f"{item}: the pattern matches no files")
            root = Path(os.path.commonpath([str(p.parent) for p in files]))
        else:
            raise DataError(f"{item}: no such file or folder")
        if skip:
            files = [f for f in files if not any(f.resolve().is_relative_to(part) for part in skip)]
        source = _source_name(root)
        for file in files:
            suffix = file.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                videos.append((str(file), file))
            elif suffix in IMAGE_SUFFIXES:
                relative = file.relative_to(root).with_suffix("")
                prior = _find_prior(prior_masks, relative) if prior_masks else None
                stills.append(WorkItem(str(file), f"{source}/{relative.as_posix()}", prior))
    if not stills and not videos:
        raise DataError(f"no images or videos found in {', '.join(inputs)}")
    named = _video_sources(videos, {w.key.split("/", 1)[0] for w in stills})
    _check_unique([w.key for w in stills], [source for _, source in named])
    return stills, named


def _video_sources(videos: list[tuple[str, Path | None]], still_sources: set[str]) -> list[tuple[str, str]]:
    """Each video's sample folder: its stem, or where that clashes with another video or a photo folder, the stem
    under its parent folder (`day1/cam`), as photos mirror theirs, so no two sources share (and resume) one folder."""
    plain = [_safe(path.stem) if path is not None else "stream" for _, path in videos]
    taken = Counter(plain)
    named = []
    for (spec, path), name in zip(videos, plain, strict=True):
        if path is not None and (taken[name] > 1 or name in still_sources):
            name = f"{_source_name(path.parent)}/{name}"
        named.append((spec, name))
    return named


def _check_unique(still_keys: list[str], video_sources: list[str]) -> None:
    """One check over all samples: two stills with one key, or a video folder shared with another video or stills."""
    seen: set[str] = set()
    for key in still_keys:
        if key in seen:
            raise DataError(f"two inputs map to the same sample {key!r}; give their folders different names")
        seen.add(key)
    folders = {"/".join(key.split("/")[:depth]) for key in still_keys for depth in range(1, key.count("/") + 1)}
    for source in video_sources:
        if source in folders:
            raise DataError(f"two inputs map to the same sample folder {source!r}; give their files different names")
        folders.add(source)


# Folder names that say nothing about where the pictures came from: the parent names the source instead.
_GENERIC = {"images", "imgs", "image", "img", "jpegimages", "frames", "photos", "train", "val", "test", "data"}


def _source_name(root: Path) -> str:
    root = root.resolve()
    if root.name.lower() in _GENERIC and root.parent.name:
        root = root.parent
    return _safe(root.name or "images")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "source"


def _find_prior(folder: str, relative: Path) -> str | None:
    """The mask beside `relative` in `folder` (same sub-path and stem, any image suffix), or flat by stem."""
    import glob

    base = Path(folder)
    for where in (base / relative.parent, base):
        matches = sorted(p for p in where.glob(glob.escape(relative.name) + ".*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if matches:
            return str(matches[0])
    return None


def read_manifest(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a manifest, in order, and the byte length of its complete lines.

    Only the last line can be cut by a crash (it has no newline yet): it is left out, so its sample is redone.
    Damage anywhere before it is a DataError naming the line.
    """
    records: list[dict[str, Any]] = []
    complete = 0
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{path}:{number}: not a JSON record") from None
            complete += len(line)
    return records, complete


def latest_samples(
    records: Sequence[dict[str, Any]] | str | os.PathLike[str],
) -> dict[str, dict[str, Any]]:
    """The samples a manifest holds now: the last record per key wins, and a later `dropped` record removes one.

    `records` are the manifest's records (`read_manifest`), or the path of a manifest or of a labels folder."""
    if isinstance(records, (str, os.PathLike)):
        path = Path(records)
        path = path / MANIFEST if path.is_dir() else path
        if not path.is_file():
            raise DataError(f"{path}: no such manifest")
        records = read_manifest(path)[0]
    samples: dict[str, dict[str, Any]] = {}
    for record in records:
        if "key" in record:
            samples[record["key"]] = record
        elif "dropped" in record:
            samples.pop(record["dropped"], None)
    return samples


class Manifest:
    """The append-only record of finished samples; the source of truth for resuming."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / MANIFEST
        self.records: dict[str, dict[str, Any]] = {}
        self.dropped: set[str] = set()
        self.videos_done: dict[str, int | None] = {}  # spec -> the frame cap it was labelled under (None: all)
        self.settings: dict[str, Any] | None = None
        if self.path.exists():
            self._load()
        out.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the whole run

    def _load(self) -> None:
        records, complete = read_manifest(self.path)
        for record in records:
            self._book(record)
        if complete < self.path.stat().st_size:  # drop the line a crash cut, so appends start on a fresh line
            with open(self.path, "r+b") as handle:
                handle.truncate(complete)

    def _book(self, record: dict[str, Any]) -> None:
        if "key" in record:
            self.records[record["key"]] = record
            self.dropped.discard(record["key"])
        elif "dropped" in record:
            self.records.pop(record["dropped"], None)
            self.dropped.add(record["dropped"])
        elif "video_done" in record:
            self.videos_done[record["video_done"]] = record.get("max_frames")
        elif "video_redo" in record:
            self.videos_done.pop(record["video_redo"], None)
        elif "settings" in record:
            self.settings = record["settings"]

    def use_settings(self, settings: dict[str, Any]) -> None:
        """Record the settings of this run; a ConfigError if the labels already here were made with others (a
        relabel sets those aside first: `set_aside_old_labels`)."""
        if self.settings is not None:
            self.settings = {**_SETTINGS_ADDED_LATER, **self.settings}
        if self.settings is not None and self.settings != settings:
            changed = ", ".join(
                f"{k} {self.settings.get(k)!r} -> {v!r}" for k, v in settings.items() if self.settings.get(k) != v
            )
            raise ConfigError(
                f"{self.path}: labelled with other settings ({changed}); "
                "use a new output folder, or relabel=True (--relabel) to label everything again"
            )
        if self.settings != settings:
            self.add({"settings": settings})

    def done(self, key: str) -> bool:
        """Labelled with its files in place, or dropped as unsure (not worth a teacher pass again)."""
        if key in self.dropped:
            return True
        record = self.records.get(key)
        return record is not None and (self.out / record["mask"]).exists() and (self.out / record["image"]).exists()

    def add(self, record: dict[str, Any]) -> None:
        self._book(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class SampleWriter:
    """Turns teacher probabilities into a stored sample and its manifest record."""

    def __init__(self, out: Path, config: AutolabelConfig, teacher_name: str) -> None:
        self.out = out
        self.config = config
        self.policy = config.policy
        self.teacher_name = teacher_name

    def write(
        self, key: str, image: np.ndarray, probs: np.ndarray, source: str, prior: np.ndarray | None = None
    ) -> dict[str, Any] | None:
        image, probs, prior = self._downscale(image, probs, prior)
        labels = self.policy.to_label(probs)
        record: dict[str, Any] = {"key": key, "source": source, "teacher": self.teacher_name}
        if prior is not None:
            record["prior_agreement"] = round(agreement_iou(labels, prior), 4)
            labels = with_prior(labels, prior)
            record["teacher"] += "+prior"
        stats = LabelStats.of(labels)
        record |= {"confidence": round(stats.confidence, 4), "person_fraction": round(stats.person_fraction, 4)}
        if stats.confidence < self.config.min_confidence:
            # Recorded, so a resume skips it and a redone sample's older record stops counting.
            return {"dropped": key, "source": source, "confidence": record["confidence"]}
        record |= {"image": f"images/{key}.jpg", "mask": f"masks/{key}.png"}
        write_image(self.out / record["image"], image, quality=self.config.jpeg_quality)
        write_image(self.out / record["mask"], labels)
        if self.config.save_probs:
            record["probs"] = f"probs/{key}.png"
            write_image(self.out / record["probs"], np.round(probs * 255).astype(np.uint8))
        return record

    def _downscale(
        self, image: np.ndarray, probs: np.ndarray, prior: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        limit = self.config.max_side
        height, width = image.shape[:2]
        if not limit or max(height, width) <= limit:
            return image, probs, prior
        scale = limit / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        probs = cv2.resize(probs, size, interpolation=cv2.INTER_AREA)
        if prior is not None:
            prior = cv2.resize(prior, size, interpolation=cv2.INTER_NEAREST)
        return image, probs, prior


def read_prior(path: str, shape: tuple[int, ...], image: str = "its image") -> np.ndarray:
    """A dataset's own mask as 0/1/255 labels.

    0/1 ids (255 kept as ignore, as this project writes them), else 0/255 or greyscale foreground (above 127 is a
    person). Only the presence of 1 tells 0/1/255 labels from a 0/255 mask.
    """
    raw = read_mask(path, num_classes=256)
    values = set(np.unique(raw).tolist())
    ids = values <= {0, 1} or (values <= {0, 1, 255} and 1 in values)
    labels = raw.astype(np.uint8) if ids else (raw > 127).astype(np.uint8)
    problem = mask_size_mismatch(path, labels.shape, image, shape)
    if problem:
        raise DataError(problem)
    return labels


Progress = Callable[[int], None]


def autolabel(
    inputs: Sequence[str],
    out: str | os.PathLike[str],
    teacher: Teacher | Sequence[str],
    config: AutolabelConfig | None = None,
    *,
    progress: bool = True,
    tta: str = "",
) -> AutolabelSummary:
    """Label `inputs` (images, folders, globs, videos) with `teacher` into the folder dataset `out`.

    `teacher` is a Teacher (left open: the caller owns it) or teacher specs with `tta`, built here and closed after.
    """
    config = config or AutolabelConfig()
    out = Path(out)
    stills, videos = plan_inputs(inputs, config.prior_masks, exclude=out)
    if config.relabel:
        set_aside_old_labels(out)
    manifest = Manifest(out)
    built = None
    try:
        if not isinstance(teacher, Teacher):
            from peopleseg.autolabel.specs import build_teacher

            teacher = built = build_teacher(list(teacher), tta=tta)
        manifest.use_settings(config.settings(teacher.name))
    except BaseException:
        manifest.close()
        raise
    writer = SampleWriter(out, config, teacher.name)
    summary = AutolabelSummary()
    start = time.perf_counter()
    todo = [w for w in stills if not manifest.done(w.key)]
    summary.skipped_done = len(stills) - len(todo)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"))
    try:
        with Progress(*columns, TimeElapsedColumn(), disable=not progress) as bar:
            task = bar.add_task("images", total=len(todo), rate="")
            for item in todo:
                _label_still(item, teacher, writer, manifest, summary)
                rate = summary.labelled / max(1e-9, time.perf_counter() - start)
                bar.update(task, advance=1, rate=f"{rate:.2f} img/s")
            for spec, source in videos:
                if video_done(spec, source, manifest, config.max_video_frames):
                    summary.skipped_done += 1
                    continue
                task = bar.add_task(f"{source}", total=config.max_video_frames, rate="")
                advance = lambda n, t=task: bar.update(t, advance=n)  # noqa: E731
                label_video(spec, source, teacher, writer, manifest, summary, config, advance)
    finally:
        if built is not None:
            built.close()
        manifest.close()
        summary.seconds = time.perf_counter() - start
    return summary


def video_done(spec: str, source: str, manifest: Manifest, max_frames: int | None = None) -> bool:
    """Marked done with every labelled frame's files in place; a done video missing some is relabelled from there.
    One done under a frame cap below `max_frames` (None: no cap) is not done: it goes on past its last frame."""
    if spec not in manifest.videos_done:
        return False
    cap = manifest.videos_done[spec]
    if cap is not None and (max_frames is None or max_frames > cap):
        return False
    prefix = f"{source}/"
    if all(manifest.done(key) for key in manifest.records if key.startswith(prefix)):
        return True
    manifest.add({"video_redo": spec})
    return False


def label_still(item: WorkItem, teacher: Teacher, writer: SampleWriter) -> dict[str, Any]:
    """Label one still and store it; its manifest record (`dropped` when unsure). DataError names the file."""
    image = read_image(item.path)
    prior = read_prior(item.prior, image.shape[:2], item.path) if item.prior else None
    teacher.reset()
    probs = check_probabilities(teacher.label([image])[0], image, teacher.name)
    return writer.write(item.key, image, probs, item.path, prior)


def _label_still(
    item: WorkItem, teacher: Teacher, writer: SampleWriter, manifest: Manifest, summary: AutolabelSummary
) -> None:
    try:
        record = label_still(item, teacher, writer)
    except DataError as exc:
        summary.failed.append(str(exc))
        _warn(f"skipped: {exc}")
        return
    count_record(record, manifest, summary)


def count_record(record: dict[str, Any], manifest: Manifest, summary: AutolabelSummary) -> None:
    """Book one labelled sample (or one dropped as unsure) into the manifest and the summary."""
    manifest.add(record)
    if "dropped" in record:
        summary.dropped_low_confidence += 1
        return
    summary.labelled += 1
    if "prior_agreement" in record:
        summary.prior_agreement.append(record["prior_agreement"])


def label_video(
    spec: str,
    source: str,
    teacher: Teacher,
    writer: SampleWriter,
    manifest: Manifest,
    summary: AutolabelSummary,
    config: AutolabelConfig,
    advance: Progress,
) -> None:
    from peopleseg.infer.sources import open_source

    prefix = f"{source}/"
    keys = [k for k in [*manifest.records, *manifest.dropped] if k.startswith(prefix) and k[len(prefix) :].isdigit()]
    labelled = {int(k[len(prefix) :]): k for k in keys}
    missing = [i for i, key in labelled.items() if not manifest.done(key)]
    # Resume after the last frame, or at the first whose files are gone (the state must reach it in order).
    resume_at = min(missing) if missing else max(labelled, default=-1) + 1
    warm_from = max(0, resume_at - config.video_warmup) if resume_at else 0

    def on_skip(index: int, reason: str) -> None:
        summary.failed.append(f"{spec}: frame {index}: {reason}")
        _warn(f"{spec}: skipped a damaged frame before frame {index} ({reason})")

    teacher.reset()
    try:
        with open_source(spec, reconnect=False, on_skip=on_skip, max_frames=config.max_video_frames) as frames:
            for frame in _frames_from(frames, warm_from):
                probs = teacher.label([frame.image])[0]
                advance(1)
                if frame.index < resume_at or frame.index % config.video_every:
                    continue
                key = f"{source}/{frame.index:06d}"
                record = writer.write(key, frame.image, check_probabilities(probs, frame.image, teacher.name), spec)
                if "key" in record:
                    record["frame"] = frame.index
                count_record(record, manifest, summary)
    except DataError as exc:
        summary.failed.append(str(exc))
        _warn(f"stopped: {exc}")
        return
    manifest.add({"video_done": spec, "max_frames": config.max_video_frames})


def _frames_from(frames: Any, first: int) -> Iterator[Any]:
    for frame in frames:
        if frame.index >= first:
            yield frame


def _warn(message: str) -> None:
    print(f"peopleseg autolabel: {message}", file=sys.stderr)


__all__ = ["AutolabelConfig", "AutolabelSummary", "Manifest", "PeoplesegError", "autolabel", "plan_inputs"]
