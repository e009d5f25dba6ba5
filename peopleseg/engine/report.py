"""Evaluation reports: a Markdown table like the model card's, metrics.json, a plain-text summary, and an HTML
gallery of the worst images (the picture, the prediction and the ground truth side by side)."""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from peopleseg.atomic import atomic_open, atomic_path
from peopleseg.data.image_io import read_image
from peopleseg.engine.evaluate import EvalResult, WorstImage
from peopleseg.engine.metrics import ALL, IGNORE_INDEX
from peopleseg.errors import PeoplesegError
from peopleseg.infer.render import overlay

THUMBNAIL = 320  # longest side of a gallery picture, in pixels
GALLERY_PICTURE = re.compile(r"\d{3}_(image|pred|truth)\.png")
IGNORE_COLOR = (128, 128, 128)


def markdown_table(result: EvalResult) -> str:
    """Rows: each subset, then "all". Columns: images, mIoU, the IoU of each class, pixel accuracy (percent)."""
    header = ["subset", "images", "mIoU", *(f"IoU {name}" for name in result.classes), "pixel acc"]
    lines = ["| " + " | ".join(_escape(h) for h in header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name, row in _rows(result):
        cells = [_escape(name), str(row.get("images", 0)), _percent(row["miou"])]
        cells += [_percent(v) for v in row["iou"]] + [_percent(row["acc"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(result: EvalResult) -> str:
    """A few plain lines for a terminal: speed, a fixed-width table, and the worst images."""
    lines = [headline(result)]
    header = ["subset", "images", "mIoU", *(f"IoU {name}" for name in result.classes), "pixel acc"]
    table = [header]
    for name, row in _rows(result):
        table.append(
            [name, str(row.get("images", 0)), _percent(row["miou"]), *map(_percent, row["iou"]), _percent(row["acc"])]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for cells in table:
        padded = [cell.rjust(width) for cell, width in zip(cells, widths, strict=True)]
        padded[0] = cells[0].ljust(widths[0])  # names left-aligned, numbers right-aligned
        lines.append("  ".join(padded).rstrip())
    if result.worst:
        lines.append(f"worst images ({result.score_name}):")
        lines += [f"  {_percent(w.score)}  {w.path}" for w in result.worst]
    return "\n".join(lines)


def write_reports(
    result: EvalResult, out_dir: str | os.PathLike[str], dataset: Any = None, thumbnail: int = THUMBNAIL
) -> list[Path]:
    """Write `metrics.json` and `metrics.md` (atomically) into `out_dir`, and, when the worst images can be read
    back (from `dataset` by index if it is map-style, else from their paths), `worst.html` with PNG thumbnails in
    `worst/`. Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_open(out / "metrics.json") as stream:
        json.dump(result.to_json(), stream, indent=2, allow_nan=False)
        stream.write("\n")
    written.append(out / "metrics.json")
    gallery = _write_gallery(result, out, dataset, thumbnail) if result.worst else []
    with atomic_open(out / "metrics.md") as stream:
        stream.write(_markdown(result, has_gallery=bool(gallery)))
    written.append(out / "metrics.md")
    _remove_stale_gallery(out, keep=set(gallery))
    return written + gallery


def _remove_stale_gallery(out: Path, keep: set[Path]) -> None:
    """An earlier run's gallery pictures (and page) that this run did not rewrite, so the folder shows one run.
    Only files named as the gallery names them are touched."""
    stale = [p for p in (out / "worst").glob("*.png") if GALLERY_PICTURE.fullmatch(p.name) and p not in keep]
    if out / "worst.html" not in keep and (out / "worst.html").is_file():
        stale.append(out / "worst.html")
    for path in stale:
        path.unlink(missing_ok=True)


# --- Markdown ------------------------------------------------------------------------------------------------------


def headline(result: EvalResult) -> str:
    """One line: how many images, how fast, and how they met the model."""
    return (
        f"{result.images} images in {result.seconds:.1f} s ({result.images_per_second:.2f} images/s), "
        f"protocol {result.protocol}{_tta_words(result)}"
    )


def _tta_words(result: EvalResult) -> str:
    return f", test-time views averaged: {', '.join(result.tta)}" if result.tta else ""


def _markdown(result: EvalResult, has_gallery: bool) -> str:
    parts = [
        "# Evaluation\n",
        f"{result.images} images, protocol `{result.protocol}`{_tta_words(result)}, {result.seconds:.1f} s "
        f"({result.images_per_second:.2f} images/s). mIoU is dataset-level: intersections and unions are summed over "
        "every pixel, and a class absent from both ground truth and prediction is left out of the mean.\n",
        markdown_table(result),
    ]
    if result.worst:
        parts.append(f"## Worst images ({result.score_name})\n")
        parts.append("".join(f"1. {_percent(w.score)} `{w.path}`\n" for w in result.worst))
        if has_gallery:
            parts.append("Side by side in [worst.html](worst.html).\n")
    return "\n".join(parts)


def _rows(result: EvalResult) -> list[tuple[str, Mapping[str, Any]]]:
    return [*result.subsets.items(), (ALL, result.overall)]


def _percent(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{100 * value:.2f}"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


# --- the gallery -----------------------------------------------------------------------------------------------------


def _write_gallery(result: EvalResult, out: Path, dataset: Any, thumbnail: int) -> list[Path]:
    person = result.classes.index("person") if "person" in result.classes else None
    folder = out / "worst"
    rows, written = [], []
    for rank, worst in enumerate(result.worst):
        image = _image_of(worst, dataset)
        if image is None or worst.pred is None:
            continue
        size = _thumbnail_size(image.shape[:2], thumbnail)
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        pictures = {"image": small, "pred": _overlay(small, _shrink(worst.pred, size), person)}
        if worst.target is not None and worst.target.shape == worst.pred.shape:
            pictures["truth"] = _overlay(small, _shrink(worst.target, size), person)
        names = {}
        for kind, picture in pictures.items():
            path = folder / f"{rank:03d}_{kind}.png"
            with atomic_path(path) as temp:
                Image.fromarray(picture).save(temp, format="PNG")
            written.append(path)
            names[kind] = f"worst/{path.name}"
        rows.append((rank, worst, names))
    if not rows:
        return []
    with atomic_open(out / "worst.html") as stream:
        stream.write(_html(result, rows))
    return [out / "worst.html", *written]


def _image_of(worst: WorstImage, dataset: Any) -> np.ndarray | None:
    """The evaluated picture, or None: from the dataset when it can be indexed, else re-read from its path."""
    image: Any = None
    if dataset is not None and worst.index >= 0 and hasattr(dataset, "__getitem__"):
        try:
            image = dataset[worst.index]["image"]
        except (IndexError, KeyError, TypeError, NotImplementedError):  # a stream, or not the samples' dataset
            image = None
    if image is None and Path(worst.path).is_file():
        try:
            image = read_image(worst.path)
        except PeoplesegError:
            return None
    if image is None:
        return None
    image = np.asarray(image)
    if worst.pred is None or image.dtype != np.uint8 or image.shape != (*worst.pred.shape, 3):
        return None  # not the picture that was evaluated (or not one the gallery can show)
    return image


def _thumbnail_size(shape: tuple[int, ...], longest: int) -> tuple[int, int]:
    height, width = shape[:2]
    scale = min(1.0, longest / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(np.ascontiguousarray(mask, dtype=np.uint8), size, interpolation=cv2.INTER_NEAREST)


def _overlay(image: np.ndarray, labels: np.ndarray, person: int | None) -> np.ndarray:
    """People tinted red (any non-background class when there is no person class); ignored pixels grey."""
    ignore = labels == IGNORE_INDEX
    shown = labels == person if person is not None else (labels > 0) & ~ignore
    picture = overlay(image, shown)
    if ignore.any():
        picture = overlay(picture, ignore, color=IGNORE_COLOR, outline=False)
    return picture


def _html(result: EvalResult, rows: list[tuple[int, WorstImage, dict[str, str]]]) -> str:
    head = (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>Worst images</title>\n<style>"
        "body{font-family:sans-serif;margin:1em}td{vertical-align:top;padding:4px}img{display:block}"
        "th{text-align:left}</style></head><body>\n"
        f"<h1>Worst {len(rows)} images by {html.escape(result.score_name)}</h1>\n"
        "<p>Red: person (prediction, then ground truth). Grey: ignored pixels.</p>\n"
        "<table><tr><th>#</th><th>image</th><th>prediction</th><th>ground truth</th></tr>\n"
    )
    body = []
    for rank, worst, names in rows:
        cells = "".join(
            f"<td><img src='{html.escape(names[kind])}' alt='{kind}'></td>" if kind in names else "<td></td>"
            for kind in ("image", "pred", "truth")
        )
        subset = f" ({html.escape(worst.subset)})" if worst.subset else ""
        caption = f"{rank + 1}. {_percent(worst.score)}<br><code>{html.escape(worst.path)}</code>{subset}"
        body.append(f"<tr><td>{caption}</td>{cells}</tr>\n")
    return head + "".join(body) + "</table></body></html>\n"
