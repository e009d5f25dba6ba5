"""`check_dataset`: read every file of a dataset once and report everything wrong with it, not just the first thing.

It reports, one line each and naming the file: unreadable images, missing masks, masks whose size differs from
their image, label values outside the class set (255 is always allowed), colours outside a palette and empty
splits. It also counts pixels per class (class balance), images per class and images per subset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress
from torch.utils.data import Dataset

from peopleseg.data.folder import (
    FolderSample,
    SegmentationFolder,
    check_label_options,
    scan_folder,
)
from peopleseg.data.image_io import IMAGE_SUFFIXES, read_image
from peopleseg.data.masks import IGNORE_INDEX, Palette, bad_label_values, load_mask_labels, mask_size_mismatch
from peopleseg.errors import ConfigError, DataError

PathLike = str | os.PathLike
Source = Dataset | PathLike | tuple[PathLike, PathLike]


@dataclass
class SplitStats:
    """What one split holds. `class_pixels[c]` counts label c; `ignore_pixels` counts 255."""

    name: str
    num_classes: int
    images: int = 0
    bad_images: int = 0
    class_pixels: list[int] = field(default_factory=list)
    images_with_class: list[int] = field(default_factory=list)
    ignore_pixels: int = 0
    subsets: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_pixels = self.class_pixels or [0] * self.num_classes
        self.images_with_class = self.images_with_class or [0] * self.num_classes

    def add(self, labels: np.ndarray) -> None:
        counts = np.bincount(labels.ravel(), minlength=256)
        for c in range(self.num_classes):
            self.class_pixels[c] += int(counts[c])
            self.images_with_class[c] += int(counts[c] > 0)
        self.ignore_pixels += int(counts[IGNORE_INDEX])


@dataclass
class CheckReport:
    """`ok` is True when nothing is wrong; `problems` holds one line per problem, each naming its file."""

    num_classes: int
    class_names: list[str]
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, max_problems: int = 20) -> str:
        """A short plain-text table per split, then the first `max_problems` problems."""
        headers = ["split", "images", "bad", *self.class_names, "ignore", "subsets"]
        rows = []
        for stats in self.splits.values():
            labelled = sum(stats.class_pixels)
            everything = labelled + stats.ignore_pixels
            pairs = zip(stats.class_pixels, stats.images_with_class, strict=True)
            shares = [f"{_percent(pixels, labelled)} ({images} img)" for pixels, images in pairs]
            subsets = ", ".join(f"{name}: {count}" for name, count in sorted(stats.subsets.items())) or "-"
            ignore = _percent(stats.ignore_pixels, everything)
            rows.append([stats.name, str(stats.images), str(stats.bad_images), *shares, ignore, subsets])
        widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [headers, *rows]
        ]
        lines.append("class shares are of labelled pixels; ignore is of all pixels")
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {problem}" for problem in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  … and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


def check_dataset(
    dataset_or_dirs: Source | Mapping[str, Source],
    num_classes: int | None = None,
    *,
    palette: Palette | Sequence[Mapping[str, Any]] | None = None,
    binary_255: bool = False,
    class_names: Sequence[str] | None = None,
    subset_from_subfolder: bool = False,
    subsets_csv: PathLike | None = None,
    list_file: PathLike | None = None,
    progress: bool = True,
) -> CheckReport:
    """Check one dataset or several named splits.

    `dataset_or_dirs` is a `SegmentationFolder` (its files are checked one by one), any other dataset of the
    sample contract (e.g. `CocoPersonDataset`; every sample is loaded), an `(images, masks)` pair of folders, a
    root folder holding `images/<split>` + `masks/<split>` or `<split>/images` + `<split>/masks` (or plain
    `images` + `masks`), or a mapping of split name to any of these. `num_classes` defaults to the dataset's.
    The label, subset and list-file options apply to folders given as paths; a dataset object brings its own.
    A split whose masks hold 255 but no pixel of any class other than the first is a problem too: most often
    0/255 person masks read without `binary_255`, where every person would be ignored.
    """
    sources = _splits(dataset_or_dirs)
    if num_classes is None:
        num_classes = next((getattr(s, "class_count", None) for s in sources.values() if isinstance(s, Dataset)), 2)
    palette = check_label_options(palette, num_classes, binary_255)
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"class_names: {len(class_names)} names for {num_classes} classes")
    default = ["background", "person"] if num_classes == 2 else [f"class {c}" for c in range(num_classes)]
    names = list(class_names) if class_names is not None else default
    report = CheckReport(num_classes, names)
    with Progress(disable=not progress) as bar:
        for name, source in sources.items():
            stats = report.splits[name] = SplitStats(name, num_classes)
            if isinstance(source, SegmentationFolder):
                samples = source.samples
                _check_files(samples, source.palette, source.binary_255, stats, report, bar)
            elif isinstance(source, Dataset):
                _check_dataset_samples(source, stats, report, bar)
            else:
                images, masks = source
                if not Path(masks).is_dir():
                    report.problems.append(f"{masks}: no such masks folder (for {images})")
                    masks = None
                try:
                    scan = scan_folder(
                        images,
                        masks,
                        list_file=list_file,
                        subsets_csv=subsets_csv,
                        subset_from_subfolder=subset_from_subfolder,
                    )
                except DataError as exc:  # no such folder, no images found
                    report.problems.append(str(exc))
                    continue
                _check_files(scan.samples, palette, binary_255, stats, report, bar)
            if stats.ignore_pixels and not any(stats.class_pixels[1:]):
                ignored = _percent(stats.ignore_pixels, stats.ignore_pixels + stats.class_pixels[0])
                report.problems.append(
                    f"{name}: no pixel of any class but {names[0]}, and {ignored} are 255 (ignore): if these are "
                    "0/255 person masks, read them with --binary-255 (binary_255=True)"
                )
    return report


def looks_like_0_255(masks: Sequence[PathLike], sample: int = 8) -> bool:
    """True when up to `sample` masks spread over `masks` all hold 255 and none holds any id but 0: people marked
    255 in masks read as ids, where training would ignore every person."""
    if not masks:
        return False
    picked = [masks[i * len(masks) // min(sample, len(masks))] for i in range(min(sample, len(masks)))]
    for path in picked:
        try:
            values = np.unique(load_mask_labels(path))
        except DataError:
            return False  # a bad file is reported where it is read, with its own message
        if IGNORE_INDEX not in values or np.any((values != 0) & (values != IGNORE_INDEX)):
            return False
    return True


def _check_files(
    samples: Sequence[FolderSample],
    palette: Palette | None,
    binary_255: bool,
    stats: SplitStats,
    report: CheckReport,
    bar: Progress,
) -> None:
    task = bar.add_task(f"checking {stats.name}", total=len(samples))
    for sample in samples:
        bar.advance(task)
        stats.images += 1
        if sample.subset:
            stats.subsets[sample.subset] = stats.subsets.get(sample.subset, 0) + 1
        problems_before = len(report.problems)
        try:
            image_shape = read_image(sample.image).shape[:2]
        except DataError as exc:
            report.problems.append(str(exc))
            image_shape = None
        if sample.mask is not None and sample.mask.is_file():
            try:
                labels = load_mask_labels(sample.mask, palette, binary_255=binary_255)
            except DataError as exc:
                report.problems.append(str(exc))
            else:
                bad = bad_label_values(labels, stats.num_classes)
                if bad:
                    report.problems.append(
                        f"{sample.mask}: label value {', '.join(map(str, bad[:5]))} outside 0..{stats.num_classes - 1} "
                        "(and 255 for ignore)"
                    )
                problem = image_shape and mask_size_mismatch(sample.mask, labels.shape, sample.image, image_shape)
                if problem:
                    report.problems.append(problem)
                if len(report.problems) == problems_before:
                    stats.add(labels)  # class balance counts only the samples a trainer could use
        elif sample.mask is not None:
            report.problems.append(f"{sample.mask}: missing mask for {sample.image}")
        stats.bad_images += len(report.problems) > problems_before


def _check_dataset_samples(dataset: Dataset, stats: SplitStats, report: CheckReport, bar: Progress) -> None:
    load = getattr(dataset, "load", dataset.__getitem__)
    count = len(dataset)  # type: ignore[arg-type]
    if count == 0:
        report.problems.append(f"{stats.name}: no images found")
    task = bar.add_task(f"checking {stats.name}", total=count)
    for index in range(count):
        bar.advance(task)
        stats.images += 1
        try:
            sample = load(index)
        except DataError as exc:
            report.problems.append(str(exc))
            stats.bad_images += 1
            continue
        mask = np.asarray(sample["mask"])
        if sample.get("subset"):
            stats.subsets[sample["subset"]] = stats.subsets.get(sample["subset"], 0) + 1
        bad = bad_label_values(mask.astype(np.uint8), stats.num_classes)
        if bad:
            values = ", ".join(map(str, bad[:5]))
            report.problems.append(f"{sample['path']}: label value {values} outside 0..{stats.num_classes - 1}")
            stats.bad_images += 1
            continue
        stats.add(mask.astype(np.uint8))


def _splits(source: Source | Mapping[str, Source]) -> dict[str, Source | tuple[Path, Path]]:
    if isinstance(source, Mapping):
        return {str(name): _one(value) for name, value in source.items()}
    if isinstance(source, (str, os.PathLike)):
        return _discover(Path(source))
    if isinstance(source, Dataset):
        return {str(getattr(source, "images", "dataset")): source}
    return {str(Path(source[0])): _one(source)}


def _one(source: Source) -> Source | tuple[Path, Path]:
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        found = _discover(Path(source))
        if len(found) != 1:
            raise DataError(f"{source}: holds {len(found)} splits; name them one by one")
        return next(iter(found.values()))
    images, masks = source
    return Path(images), Path(masks)


def _discover(root: Path) -> dict[str, Source | tuple[Path, Path]]:
    """Splits under `root` in either layout; a missing masks folder is kept so the check reports it."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    images, masks = root / "images", root / "masks"
    if images.is_dir():
        splits = sorted(d.name for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
        if splits and masks.is_dir() and all((masks / s).is_dir() for s in splits):
            return {s: (images / s, masks / s) for s in splits}
        if splits and not any(images.glob(f"*{suffix}") for suffix in IMAGE_SUFFIXES):
            return {s: (images / s, masks / s) for s in splits}
        return {root.name: (images, masks)}
    splits = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "images").is_dir())
    if not splits:
        raise DataError(f"{root}: found neither images/<split> + masks/<split> nor <split>/images + <split>/masks")
    return {s: (root / s / "images", root / s / "masks") for s in splits}


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
