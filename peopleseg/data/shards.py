"""WebDataset tar shards: pack any dataset of the sample contract into tars, and stream them back.

Each sample is three tar members: `<key>.jpg` or `<key>.png` (the source file's own bytes when it is a JPEG or
PNG, so nothing is re-encoded; other formats are stored as lossless PNG), `<key>.mask.png` (8-bit label ids) and
`<key>.json` (`{"path", "subset"}`). Keys are the dataset index, zero-padded.

`<prefix>-index.json` beside the shards records which samples each finished shard holds; it is what makes packing
resumable and what tells a reader how many samples there are.

Streaming suits training on data too large for loose files. For exact evaluation use a folder dataset: shards are
split across DataLoader workers and distributed ranks by whole shards, so ranks can see different sample counts,
and resampling repeats some samples and drops others.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image
from rich.progress import Progress
from torch.utils.data import Dataset, IterableDataset

from peopleseg.atomic import atomic_open, atomic_path
from peopleseg.data.folder import apply_transform
from peopleseg.data.image_io import pil_to_rgb
from peopleseg.data.masks import check_labels
from peopleseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "peopleseg-shards/1"
_KEEP_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}
_TAR_OVERHEAD = 3 * 512 + 1024  # three member headers plus worst-case padding: bytes beyond the payload


def pack_shards(
    dataset: Dataset,
    out_dir: str | os.PathLike[str],
    prefix: str = "shard",
    max_samples_per_shard: int = 1000,
    max_bytes: int = 1 << 30,
    *,
    resume: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Write `dataset` to `out_dir/<prefix>-000000.tar`, … and return every shard's path, in order.

    A shard is closed at `max_samples_per_shard` samples or before it would pass about `max_bytes`. Shards appear by
    rename once complete, so a crash never leaves half a shard. `resume=True` keeps the shards that the index
    lists and packs the rest (the dataset must be the same, in the same order); `resume=False` deletes this
    prefix's old shards and index first. A sample that fails to load stops packing with its DataError.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise ConfigError(f"prefix: '{prefix}' must be letters, digits, '_', '-' or '.'")
    if max_samples_per_shard < 1 or max_bytes < 1:
        raise ConfigError("max_samples_per_shard and max_bytes must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / f"{prefix}-index.json"
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise DataError(f"{out}: the dataset to pack is empty")
    shards = _resume_state(index_path, out, prefix, total) if resume else _clear(index_path, out, prefix)
    next_index = shards[-1]["first"] + shards[-1]["count"] if shards else 0
    meta = {
        "format": FORMAT,
        "samples": total,
        "class_count": int(getattr(dataset, "class_count", 2)),
        "subsets": list(getattr(dataset, "subsets", [])),
    }
    width = max(9, len(str(total - 1)))
    load: Callable[[int], dict[str, Any]] = getattr(dataset, "load", dataset.__getitem__)

    def write_index() -> None:
        with atomic_open(index_path, "w", encoding="utf-8") as stream:
            json.dump({**meta, "complete": next_index == total, "shards": shards}, stream, indent=1)

    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"packing {out}", total=total, completed=next_index)
        writer: _TarWriter | None = None
        try:
            while next_index < total:
                sample = load(next_index)
                members = _members(f"{next_index:0{width}d}", sample)
                size = sum(len(data) for _, data in members) + _TAR_OVERHEAD
                if writer is not None and (writer.count >= max_samples_per_shard or writer.bytes + size > max_bytes):
                    shards.append(writer.close())
                    writer = None
                    write_index()
                if writer is None:
                    writer = _TarWriter(out / f"{prefix}-{len(shards):06d}.tar", next_index)
                writer.add(members, size)
                next_index += 1
                bar.advance(task)
            if writer is not None:
                shards.append(writer.close())
                writer = None
        finally:
            if writer is not None:
                writer.abort()
    write_index()
    # Shards of an earlier, differently cut run would be read twice by anyone globbing the folder.
    kept = {shard["file"] for shard in shards}
    for path in _shard_files(out, prefix):
        if path.name not in kept:
            path.unlink()
    return [out / shard["file"] for shard in shards]


class ShardDataset(IterableDataset):
    """Stream samples `{"image", "mask", "path", "subset"}` from WebDataset shards.

    `urls`: a list of shard paths or URLs, a brace pattern (`shards/shard-{000000..000009}.tar`), a folder (its
    `*-index.json`, or else every `*.tar` in it) or an index file written by `pack_shards`.

    Shards are split by distributed rank, then by DataLoader worker (`wds.split_by_node`, `wds.split_by_worker`),
    in an order shuffled by `seed` and the epoch, identically on every rank. Samples pass through a shuffle buffer
    of `shuffle_buffer` (0 turns it off) seeded per rank and worker. Call `set_epoch(epoch)` each epoch; the order
    also changes on each new iteration of the same object. `resampled=True` draws shards with replacement, for
    ever: every rank gets data even with few shards, and the trainer bounds the epoch by steps.

    Not for exact evaluation (see the module docstring): use a folder dataset there.
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        shuffle_buffer: int = 1000,
        transform: Callable[..., Mapping[str, Any]] | None = None,
        seed: int = 0,
        resampled: bool = False,
        num_classes: int = 2,
    ) -> None:
        self.urls, index = _resolve_urls(urls)
        self.shuffle_buffer = shuffle_buffer
        self.transform = transform
        self.seed = seed
        self.resampled = resampled
        self.sample_count: int | None = index.get("samples") if index else None
        self.class_count: int = int(index.get("class_count", num_classes)) if index else num_classes
        self.num_classes = num_classes  # what the consumer's model predicts: every label must be below it
        self.subsets: list[str] = sorted(index.get("subsets", [])) if index else []
        self.epoch = 0
        self._iterations = 0
        # Anything with an int `step` (training's resume position): a resumed run seeds a stream it has not seen,
        # instead of replaying the one its first run started with.
        self.stream_position: Any = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world_size, worker, _ = wds.utils.pytorch_worker_info()
        if not self.resampled and world_size > len(self.urls):
            raise DataError(
                f"{self.urls[0]}: {len(self.urls)} shards cannot feed {world_size} ranks; "
                "pack smaller shards or use resampled=True"
            )
        self._iterations += 1
        # Same on every rank (so the split by rank is a partition); then distinct per rank and worker.
        step = int(getattr(self.stream_position, "step", 0))
        order_seed = _seed(self.seed, self.epoch, self._iterations, step)
        sample_seed = _seed(self.seed, self.epoch, self._iterations, step, rank, worker)
        if self.resampled:
            stages: list[Any] = [wds.ResampledShards(self.urls, seed=sample_seed, deterministic=True)]
        else:
            stages = [wds.SimpleShardList(self.urls, seed=order_seed), wds.split_by_node, wds.split_by_worker]
        stages.append(wds.tarfile_to_samples(handler=_raise_data_error))
        if self.shuffle_buffer > 0:
            initial = min(100, self.shuffle_buffer)
            stages.append(wds.shuffle(self.shuffle_buffer, initial, rng=random.Random(sample_seed)))
        stages.append(wds.map(self._decode))
        yield from wds.DataPipeline(*stages)

    def _decode(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        sample = decode_sample(raw)
        where = f"{raw.get('__url__', '?')}: sample {raw.get('__key__', '?')}"
        check_labels(sample["mask"], self.num_classes, where)  # an out-of-range label would crash the loss
        return apply_transform(self.transform, sample)


def decode_sample(raw: Mapping[str, Any]) -> dict[str, Any]:
    """One grouped tar sample (bytes by suffix, as webdataset yields them) → the sample contract."""
    where = f"{raw.get('__url__', '?')}: sample {raw.get('__key__', '?')}"
    image_bytes = raw.get("jpg") or raw.get("jpeg") or raw.get("png")
    if image_bytes is None:
        raise DataError(f"{where} has no .jpg or .png image")
    if raw.get("mask.png") is None:
        raise DataError(f"{where} has no .mask.png")
    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image.load()
            pixels = pil_to_rgb(image)
        with Image.open(io.BytesIO(raw["mask.png"])) as mask_image:
            if mask_image.mode not in ("L", "P"):
                raise DataError(f"{where}: mask is {mask_image.mode}, expected 8-bit label ids")
            mask = np.array(mask_image, dtype=np.uint8)
        meta = json.loads(raw["json"]) if raw.get("json") else {}
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode ({exc})") from None
    if mask.shape != pixels.shape[:2]:
        raise DataError(f"{where}: mask {mask.shape[1]}x{mask.shape[0]} ≠ image {pixels.shape[1]}x{pixels.shape[0]}")
    path = meta.get("path") or f"{raw.get('__url__', '')}#{raw.get('__key__', '')}"
    return {"image": pixels, "mask": mask, "path": str(path), "subset": str(meta.get("subset", ""))}


class _TarWriter:
    """One shard being written to a temporary file; `close()` renames it into place."""

    def __init__(self, path: Path, first: int) -> None:
        self.path, self.first, self.count, self.bytes = path, first, 0, 0
        self._stack = contextlib.ExitStack()
        temp = self._stack.enter_context(atomic_path(path))
        self._tar = self._stack.enter_context(tarfile.open(temp, "w", format=tarfile.USTAR_FORMAT))  # noqa: SIM115

    def add(self, members: list[tuple[str, bytes]], size: int) -> None:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: the same data gives the same tar
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1
        self.bytes += size

    def close(self) -> dict[str, Any]:
        self._stack.close()  # closes the tar, then renames the temporary file
        return {"file": self.path.name, "first": self.first, "count": self.count}

    def abort(self) -> None:
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)  # deletes the temporary file


def _members(key: str, sample: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    image, mask = sample["image"], sample["mask"]
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
        raise ConfigError("pack_shards: the dataset must yield uint8 arrays; pack it without a transform")
    source = Path(str(sample["path"]))
    suffix = _KEEP_SUFFIXES.get(source.suffix.lower())
    if suffix is not None and source.is_file():
        image_bytes = source.read_bytes()  # decodes (EXIF orientation included) to exactly the dataset's pixels
    else:
        suffix, image_bytes = "png", _png(image)
    meta = json.dumps({"path": str(sample["path"]), "subset": str(sample.get("subset", ""))}).encode()
    return [(f"{key}.{suffix}", image_bytes), (f"{key}.mask.png", _png(mask)), (f"{key}.json", meta)]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard_files(out: Path, prefix: str) -> list[Path]:
    pattern = re.compile(re.escape(prefix) + r"-\d{6}\.tar")
    return sorted(p for p in out.iterdir() if pattern.fullmatch(p.name))


def _clear(index_path: Path, out: Path, prefix: str) -> list[dict[str, Any]]:
    for path in _shard_files(out, prefix):
        path.unlink()
    index_path.unlink(missing_ok=True)
    return []


def _resume_state(index_path: Path, out: Path, prefix: str, total: int) -> list[dict[str, Any]]:
    """The finished shards an earlier run of the same packing left, from its index."""
    if not index_path.exists():
        if _shard_files(out, prefix):
            raise DataError(f"{index_path}: missing, but {prefix}-*.tar shards exist; pack with resume=False")
        return []
    index = _read_index(index_path)
    if index.get("samples") != total:
        raise DataError(
            f"{index_path}: written for {index.get('samples')} samples, this dataset has {total}; "
            "pack with resume=False or into a new folder"
        )
    shards: list[dict[str, Any]] = []
    for shard in index.get("shards", []):
        expected_first = shards[-1]["first"] + shards[-1]["count"] if shards else 0
        if shard.get("first") != expected_first or not (out / shard["file"]).is_file():
            break  # keep the unbroken run of shards from the start; repack the rest
        shards.append(shard)
    return shards


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable shard index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path}: not a peopleseg shard index (format {FORMAT})")
    return index


def _resolve_urls(
    urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[list[str], dict[str, Any] | None]:
    index: dict[str, Any] | None = None
    if isinstance(urls, (str, os.PathLike)):
        path = Path(urls)
        if path.is_dir():
            indexes = sorted(path.glob("*-index.json"))
            if len(indexes) == 1:
                path = indexes[0]
            else:
                listed = [str(p) for p in sorted(path.glob("*.tar"))]
                if not listed:
                    raise DataError(f"{path}: no .tar shards in this folder")
                return listed, None
        if path.suffix == ".json" and path.is_file():
            index = _read_index(path)
            if not index.get("complete"):
                log.warning("%s: packing did not finish; reading the shards written so far", path)
            listed = [str(path.parent / shard["file"]) for shard in index.get("shards", [])]
        else:
            listed = wds.shardlists.expand_urls(str(urls))
    else:
        listed = [str(url) for url in urls]
    if not listed:
        raise DataError(f"{urls}: no shards")
    for url in listed:
        if "://" not in url and not url.startswith("pipe:") and not Path(url).is_file():
            raise DataError(f"{url}: no such shard")
    return listed, index


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


def _raise_data_error(exn: Exception) -> bool:
    """webdataset's error handler: re-raise tar and I/O errors as one-line DataErrors naming the shard."""
    if isinstance(exn, DataError):
        raise exn
    detail = " ".join(str(arg) for arg in exn.args).replace("\n", " ")
    raise DataError(f"cannot read shard: {type(exn).__name__}: {detail}") from None
