"""A folder of images and a parallel folder of PNG masks, as TAO and mmseg lay them out.

`images/a/b.jpg` pairs with `masks/a/b.png`. A list file (TAO's `train.txt`) can pick the split, and a subset tag
(camera height, scene, …) can come from the first sub-folder or from a CSV, so metrics can be reported per subset.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from peopleseg.data.image_io import IMAGE_SUFFIXES, read_image
from peopleseg.data.masks import BINARY_WITH_PALETTE, IGNORE_INDEX, Palette, mask_size_mismatch, read_mask
from peopleseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Transform = Callable[..., Mapping[str, Any]]


@dataclass(frozen=True)
class FolderSample:
    """One image, its mask file (None when unlabelled) and its subset tag ("" when none)."""

    image: Path
    mask: Path | None
    subset: str = ""


@dataclass
class FolderScan:
    """What a folder holds, before any pixel is read: the split's samples and those whose mask file is missing."""

    samples: list[FolderSample]
    missing_masks: list[FolderSample]


def scan_folder(
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str] | None,
    *,
    list_file: str | os.PathLike[str] | None = None,
    subsets_csv: str | os.PathLike[str] | None = None,
    subset_from_subfolder: bool = False,
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> FolderScan:
    """Pair images with masks and tag subsets. Layout errors raise; missing masks are returned, not raised,
    so `check_dataset` can list them all."""
    images = Path(images)
    if not images.is_dir():
        raise DataError(f"{images}: no such folder")
    if subset_from_subfolder and subsets_csv is not None:
        raise ConfigError("subsets: give subsets_csv or subset_from_subfolder, not both")
    suffixes = {s.lower() if s.startswith(".") else f".{s.lower()}" for s in image_suffixes}
    found = sorted(
        path.relative_to(images)
        for path in images.rglob("*")
        if path.suffix.lower() in suffixes
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(images).parts)
    )
    index = _NameIndex(images, found)
    if list_file is not None:
        chosen = [index.match(entry, f"{list_file}:{line}") for line, entry in _read_list(Path(list_file))]
        if not chosen:
            raise DataError(f"{list_file}: lists no images")
    else:
        chosen = found
    if not chosen:
        raise DataError(f"{images}: no images found")
    subsets = _read_subsets(Path(subsets_csv), index) if subsets_csv is not None else {}
    samples, missing = [], []
    for rel in chosen:
        subset = subsets.get(rel, "")
        if subset_from_subfolder:
            subset = rel.parts[0] if len(rel.parts) > 1 else ""
            if subset == "all":  # the name of the whole dataset's row in every report
                raise DataError(f"{images / subset}: a subset folder may not be named 'all'; rename it")
        mask = Path(masks) / rel.with_suffix(".png") if masks is not None else None
        sample = FolderSample(images / rel, mask, subset)
        samples.append(sample)
        if mask is not None and not mask.is_file():
            missing.append(sample)
    return FolderScan(samples, missing)


class SegmentationFolder(Dataset):
    """Images under `images` (recursively) with same-named `.png` masks under `masks`.

    Samples are `{"image": uint8 [H, W, 3] RGB, "mask": uint8 [H, W] ids (255 ignore), "path": str, "subset": str}`;
    `transform(image=, mask=)` replaces "image" and "mask" when given.

    - `masks=None`: unlabelled images (for inference or auto-labelling); every mask is all 255, so a loss or metric
      that sees them ignores every pixel.
    - `list_file`: one image per line, as a relative path with or without its suffix, or a bare file stem when that
      is unique; blank lines and `#` comments are skipped. Its order is kept, and so are repeated lines.
    - `subsets_csv`: columns `image,subset` (image as in a list file); images it does not name get "". Entries that
      match no image are ignored, so one CSV can serve every split.
    - `skip_bad=True`: a sample that fails to load is logged, counted in `.skipped` and replaced by the next index
      ((i + 1) % len, deterministically). The counter lives in each DataLoader worker process, so the main process
      sees only its own count.
    """

    def __init__(
        self,
        images: str | os.PathLike[str],
        masks: str | os.PathLike[str] | None,
        *,
        list_file: str | os.PathLike[str] | None = None,
        subsets_csv: str | os.PathLike[str] | None = None,
        subset_from_subfolder: bool = False,
        palette: Palette | Sequence[Mapping[str, Any]] | None = None,
        num_classes: int = 2,
        binary_255: bool = False,
        transform: Transform | None = None,
        skip_bad: bool = False,
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
    ) -> None:
        self.palette = check_label_options(palette, num_classes, binary_255)
        self.images = Path(images)
        self.masks = Path(masks) if masks is not None else None
        self.class_count = num_classes
        self.binary_255 = binary_255
        self.transform = transform
        self.skip_bad = skip_bad
        self.skipped = 0
        scan = scan_folder(
            self.images,
            self.masks,
            list_file=list_file,
            subsets_csv=subsets_csv,
            subset_from_subfolder=subset_from_subfolder,
            image_suffixes=image_suffixes,
        )
        if scan.missing_masks:
            first = scan.missing_masks[0]
            raise DataError(
                f"{first.mask}: missing mask for {first.image} "
                f"({len(scan.missing_masks)} of {len(scan.samples)} images have no mask)"
            )
        self.samples = scan.samples
        self.subsets = sorted({s.subset for s in self.samples if s.subset})

    @classmethod
    def from_split_dirs(cls, root: str | os.PathLike[str], split: str, **kwargs: Any) -> SegmentationFolder:
        """`root/images/<split>` + `root/masks/<split>`, or `root/<split>/images` + `root/<split>/masks`."""
        images, masks = find_split_dirs(root, split)
        return cls(images, masks, **kwargs)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.skip_bad:
            return self._apply(self.load(index))
        for attempt in range(len(self.samples)):
            current = (index + attempt) % len(self.samples)
            try:
                sample = self.load(current)
            except DataError as exc:
                self.skipped += 1
                log.warning("skipping a bad sample: %s", exc)
                continue
            return self._apply(sample)
        raise DataError(f"{self.images}: no sample could be loaded")

    def load(self, index: int) -> dict[str, Any]:
        """The sample before any transform; raises DataError naming the file at fault."""
        sample = self.samples[index]
        image, mask = read_pair(sample, self.palette, self.class_count, binary_255=self.binary_255)
        return {"image": image, "mask": mask, "path": str(sample.image), "subset": sample.subset}

    def _apply(self, sample: dict[str, Any]) -> dict[str, Any]:
        return apply_transform(self.transform, sample)


def read_pair(
    sample: FolderSample, palette: Palette | None = None, num_classes: int = 2, *, binary_255: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The sample's RGB image and its label ids (all 255 when unlabelled); DataError naming the file at fault,
    a mask of another size than its image included."""
    image = read_image(sample.image)
    if sample.mask is None:
        return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
    mask = read_mask(sample.mask, palette, num_classes, binary_255=binary_255)
    problem = mask_size_mismatch(sample.mask, mask.shape, sample.image, image.shape)
    if problem:
        raise DataError(problem)
    return image, mask


def apply_transform(transform: Transform | None, sample: dict[str, Any]) -> dict[str, Any]:
    """Run `transform(image=, mask=)` on a sample, keeping its "path" and "subset"."""
    if transform is None:
        return sample
    out = transform(image=sample["image"], mask=sample["mask"])
    return {**sample, "image": out["image"], "mask": out["mask"]}


def check_label_options(
    palette: Palette | Sequence[Mapping[str, Any]] | None, num_classes: int, binary_255: bool
) -> Palette | None:
    """Validate the label options shared by datasets and the checker; a config-style palette becomes a Palette."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= IGNORE_INDEX:
        raise ConfigError(f"num_classes: expected an integer 1..255, got {num_classes!r}")
    if palette is not None and not isinstance(palette, Palette):
        palette = Palette.from_config(palette)
    if palette is not None:
        if binary_255:
            raise ConfigError(BINARY_WITH_PALETTE)
        for i, entry in enumerate(palette.entries):
            if entry.label_id >= num_classes and entry.label_id != IGNORE_INDEX:
                raise ConfigError(f"palette[{i}].label_id: {entry.label_id} is not below num_classes {num_classes}")
    return palette


def find_split_dirs(root: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """The (images, masks) folders of a split in either common layout."""
    root = Path(root)
    layouts = [(root / "images" / split, root / "masks" / split), (root / split / "images", root / split / "masks")]
    for images, masks in layouts:
        if images.is_dir() and masks.is_dir():
            return images, masks
    tried = " or ".join(f"{i.relative_to(root)} + {m.relative_to(root)}" for i, m in layouts)
    raise DataError(f"{root}: no '{split}' split: expected {tried}")


class _NameIndex:
    """Finds an image from a list-file or CSV entry: relative path, path without suffix, or unique bare stem."""

    def __init__(self, root: Path, found: Iterable[Path]) -> None:
        self.root = root
        self.by_path: dict[str, Path] = {}
        self.by_key: dict[str, Path] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for rel in found:
            key = rel.with_suffix("").as_posix()
            if key in self.by_key:
                raise DataError(f"{root / rel}: shares its mask name with {root / self.by_key[key]}; rename one")
            self.by_path[rel.as_posix()] = rel
            self.by_key[key] = rel
            self.by_stem.setdefault(rel.stem, []).append(rel)

    def find(self, entry: str) -> Path | None:
        """The image for `entry`, or None; an ambiguous bare stem is an error."""
        if Path(entry).is_absolute():
            try:  # resolved both: the root may have been given relative to the working folder
                entry = Path(entry).resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                return None
        entry = entry.removeprefix("./")
        if entry in self.by_path:
            return self.by_path[entry]
        if entry in self.by_key:
            return self.by_key[entry]
        candidates = self.by_stem.get(entry, [])
        if len(candidates) > 1:
            raise DataError(f"'{entry}' names {len(candidates)} images under {self.root}; give the relative path")
        return candidates[0] if candidates else None

    def match(self, entry: str, where: str) -> Path:
        try:
            found = self.find(entry)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if found is None:
            raise DataError(f"{where}: '{entry}' matches no image under {self.root}")
        return found


def _read_list(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"{path}: no such list file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a BOM is not a name
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read list file ({exc})") from None
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip() and not line.strip().startswith("#")]


def _read_subsets(path: Path, index: _NameIndex) -> dict[Path, str]:
    if not path.is_file():
        raise DataError(f"{path}: no such subsets CSV")
    subsets: dict[Path, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:  # -sig: Excel writes a BOM
            reader = csv.DictReader(stream)
            fields = [name.strip() for name in reader.fieldnames or []]
            if "image" not in fields or "subset" not in fields:
                raise DataError(f"{path}: needs columns 'image' and 'subset', found {fields}")
            reader.fieldnames = fields
            for row in reader:
                where = f"{path}:{reader.line_num}"
                name, subset = (row.get("image") or "").strip(), (row.get("subset") or "").strip()
                if not name:
                    raise DataError(f"{where}: empty 'image' column")
                if subset == "all":
                    raise DataError(f"{where}: a subset may not be named 'all' (the whole dataset's row); rename it")
                try:
                    rel = index.find(name)
                except DataError as exc:
                    raise DataError(f"{where}: {exc}") from None
                if rel is None:
                    continue
                if subsets.get(rel, subset) != subset:
                    raise DataError(f"{where}: '{name}' is already in subset '{subsets[rel]}'")
                subsets[rel] = subset
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read subsets CSV ({exc})") from None
    if not subsets:
        raise DataError(f"{path}: names none of the images under {index.root}")
    return subsets
