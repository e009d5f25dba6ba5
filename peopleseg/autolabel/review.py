"""`peopleseg autolabel review`: a contact sheet of label overlays, to eyeball a labelled dataset's quality.

PNG: a grid of thumbnails (person green, unsure red). HTML: the same thumbnails with each sample's key, teacher and
confidence, embedded as data URIs so the single file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
import os
import random
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from peopleseg.atomic import atomic_open
from peopleseg.autolabel.run import MANIFEST, latest_samples, read_manifest
from peopleseg.data.image_io import read_image, write_image
from peopleseg.data.masks import IGNORE_INDEX, read_mask
from peopleseg.errors import ConfigError, DataError

THUMB = 256
PERSON = np.array([0, 200, 0], np.float32)
UNSURE = np.array([230, 30, 30], np.float32)


def manifest_samples(dataset: str | os.PathLike[str]) -> list[dict[str, Any]]:
    path = Path(dataset) / MANIFEST
    if not path.exists():
        raise DataError(f"{dataset}: no {MANIFEST}; is this a folder written by `peopleseg autolabel`?")
    return list(latest_samples(read_manifest(path)[0]).values())  # a redone sample's last record wins


def thumbnail(dataset: Path, record: dict[str, Any], size: int = THUMB) -> np.ndarray:
    """The sample's image with person pixels tinted green and unsure ones red, fitted in a size x size tile."""
    image = read_image(dataset / record["image"])
    labels = read_mask(dataset / record["mask"], num_classes=2)
    scale = size / max(image.shape[:2])
    dims = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    image = cv2.resize(image, dims, interpolation=cv2.INTER_AREA).astype(np.float32)
    labels = cv2.resize(labels, dims, interpolation=cv2.INTER_NEAREST)
    image[labels == 1] = 0.5 * image[labels == 1] + 0.5 * PERSON
    image[labels == IGNORE_INDEX] = 0.4 * image[labels == IGNORE_INDEX] + 0.6 * UNSURE
    tile = np.full((size, size, 3), 32, np.uint8)
    top, left = (size - dims[1]) // 2, (size - dims[0]) // 2
    tile[top : top + dims[1], left : left + dims[0]] = image.round().astype(np.uint8)
    return tile


def pick(records: list[dict[str, Any]], count: int, sort: str, seed: int) -> list[dict[str, Any]]:
    if sort == "confidence":
        records = sorted(records, key=lambda r: (r.get("confidence", 1.0), r["key"]))
    elif sort == "random":
        records = random.Random(seed).sample(records, len(records))
    elif sort == "name":
        records = sorted(records, key=lambda r: r["key"])
    else:
        raise ConfigError(f"sort must be confidence, random or name, got {sort!r}")
    return records[:count]


def write_review(
    dataset: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    count: int = 48,
    sort: str = "confidence",
    seed: int = 0,
    columns: int = 8,
) -> Path:
    """Write a contact sheet of `count` samples (least confident first by default) as PNG or HTML."""
    dataset, output = Path(dataset), Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise ConfigError(f"{output}: the review sheet must be .png or .html")
    samples = manifest_samples(dataset)
    # Samples whose files were deleted (or damaged) since are left out and counted, not fatal: the sheet is a look.
    present = [r for r in samples if (dataset / r["image"]).is_file() and (dataset / r["mask"]).is_file()]
    records, tiles, gone = [], [], len(samples) - len(present)
    for record in pick(present, len(present), sort, seed):
        if len(tiles) == count:
            break
        try:
            tiles.append(thumbnail(dataset, record))
            records.append(record)
        except DataError as exc:
            gone += 1
            print(f"peopleseg autolabel review: skipped {exc}", file=sys.stderr)
    if gone:
        print(f"peopleseg autolabel review: {gone} listed samples have missing or unreadable files", file=sys.stderr)
    if not tiles:
        raise DataError(f"{dataset}: the manifest lists no samples with their files yet")
    if suffix == ".png":
        rows = -(-len(tiles) // columns)
        sheet = np.full((rows * THUMB, min(columns, len(tiles)) * THUMB, 3), 32, np.uint8)
        for i, tile in enumerate(tiles):
            row, col = divmod(i, columns)
            sheet[row * THUMB : (row + 1) * THUMB, col * THUMB : (col + 1) * THUMB] = tile
        return write_image(output, sheet)
    cells = []
    for record, tile in zip(records, tiles, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(tile).save(buffer, format="JPEG", quality=85)
        data = base64.b64encode(buffer.getvalue()).decode()
        caption = (
            f"{html.escape(record['key'])}<br>{html.escape(record.get('teacher', ''))}<br>"
            f"sure {100 * record.get('confidence', 0):.1f}% · person {100 * record.get('person_fraction', 0):.1f}%"
        )
        cells.append(
            f'<figure><img src="data:image/jpeg;base64,{data}" alt=""><figcaption>{caption}</figcaption></figure>'
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>peopleseg labels</title>"
        "<style>body{font:13px sans-serif;background:#222;color:#ddd}main{display:flex;flex-wrap:wrap;gap:8px}"
        "figure{margin:0;width:256px}img{width:256px;height:256px}</style>"
        f"<h1>{html.escape(str(dataset))}: {len(records)} samples, sorted by {sort}</h1>"
        "<p>green: person · red: unsure (ignored in training)</p><main>" + "".join(cells) + "</main>"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(output, "w", encoding="utf-8") as handle:
        handle.write(page)
    return output
