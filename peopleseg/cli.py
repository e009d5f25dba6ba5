"""`peopleseg <command>`: one entry point for every job. Errors print as one line and exit non-zero."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from peopleseg.errors import PeoplesegError

# Commands whose implementation lands with a later part of the roadmap: they exist, document themselves, and say so.
_PLANNED = {
    "train": "fine-tune a model on your own images and masks",
    "evaluate": "mIoU per class and per content subset on a labelled folder",
    "benchmark": "speed and memory of models and backends, side by side",
    "serve": "an HTTP service with a web page",
    "autolabel": "label images or video with a teacher model, for distillation",
}

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from peopleseg.models.complexity import count_macs, count_params
    from peopleseg.models.registry import list_models

    table = Table(title=f"peopleseg models (2 classes, {args.size}x{args.size} input)")
    for column in ("name", "encoder", "params (M)", "GMACs", "GFLOPs", "about"):
        table.add_column(column, justify="right" if column in ("params (M)", "GMACs", "GFLOPs") else "left")
    for entry in list_models():
        params = count_params(entry.name) / 1e6
        macs = count_macs(entry.name, args.size, args.size) / 1e9 if not args.no_flops else float("nan")
        table.add_row(
            entry.name,
            f"{entry.family} {entry.variant}",
            f"{params:.2f}",
            f"{macs:.1f}",
            f"{2 * macs:.1f}",
            entry.summary,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped or captured: don't squeeze the table into 80 columns
    console.print(table)
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np

    from peopleseg.data.image_io import read_image, write_image
    from peopleseg.infer.segmenter import RANDOM_INIT_WARNING, Segmenter

    inputs = _expand_inputs(args.inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # said once below, in the CLI's own words
        segmenter = Segmenter(args.model, device=args.device)
    if segmenter.is_random_init:
        print(f"WARNING: {RANDOM_INIT_WARNING}.", file=sys.stderr)
    out_dir = Path(args.output_dir)
    person = segmenter.classes.index("person") if "person" in segmenter.classes else 1
    for path in inputs:
        image = read_image(path)
        mask = segmenter.predict(image)
        stem = path.stem
        if args.output in ("mask", "all"):
            write_image(out_dir / f"{stem}_mask.png", mask)
        if args.output in ("overlay", "all"):
            write_image(out_dir / f"{stem}_overlay.png", _overlay(image, mask == person))
        fraction = float(np.mean(mask == person))
        print(f"{path}: {image.shape[1]}x{image.shape[0]}, person pixels {100 * fraction:.1f}% -> {out_dir}")
    return 0


def _overlay(image, person_mask):  # type: ignore[no-untyped-def]
    import numpy as np

    tint = np.array([255, 40, 40], dtype=np.float32)
    blended = image.astype(np.float32)
    blended[person_mask] = 0.5 * blended[person_mask] + 0.5 * tint
    return blended.round().astype(np.uint8)


def _expand_inputs(items: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif not path.exists():
            raise PeoplesegError(f"{path}: no such file or folder")
        else:
            paths.append(path)
    if not paths:
        raise PeoplesegError(f"no images found in {', '.join(items)}")
    return paths


def _cmd_export(args: argparse.Namespace) -> int:
    from peopleseg.export.onnx_export import export_onnx
    from peopleseg.models.weights import load_model

    model = load_model(args.model)
    result = export_onnx(model, args.output, batch=args.batch, opset=args.opset, check=not args.no_check)
    print(f"wrote {result.path} (opset {args.opset}); max |logit diff| vs torch {result.max_abs_diff:.2e}")
    return 0


def _planned(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise PeoplesegError(f"peopleseg {name}: not available in this version yet ({_PLANNED[name]})")

    return run


def build_parser() -> argparse.ArgumentParser:
    from peopleseg import __version__

    parser = argparse.ArgumentParser(
        prog="peopleseg", description="Find every person in images and video, pixel by pixel."
    )
    parser.add_argument("--version", action="version", version=f"peopleseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = commands.add_parser("models", help="list the models with parameters and compute")
    models.add_argument("--size", type=_positive_multiple_of_32, default=512, help="square input size (default 512)")
    models.add_argument("--no-flops", action="store_true", help="skip the compute count")
    models.set_defaults(run=_cmd_models)

    infer = commands.add_parser("infer", help="segment people in images or folders of images")
    infer.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    infer.add_argument("-o", "--output-dir", default="peopleseg_out", help="where results go (default peopleseg_out)")
    infer.add_argument("--output", choices=("mask", "overlay", "all"), default="all", help="what to write")
    infer.add_argument("-m", "--model", default="default", help="'default', a model name, or a weights path")
    infer.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    infer.set_defaults(run=_cmd_infer)

    export = commands.add_parser("export", help="export a model to ONNX")
    export.add_argument("model", help="a model name or a weights path")
    export.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    export.add_argument("--batch", type=int, default=1, help="batch size of the traced example (the axis is dynamic)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    export.set_defaults(run=_cmd_export)

    for name, about in _PLANNED.items():
        planned = commands.add_parser(name, help=f"{about} (not available yet)", description=about)
        planned.set_defaults(run=_planned(name))
    return parser


def _positive_multiple_of_32(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except PeoplesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("PEOPLESEG_DEBUG"):
            raise
        print(
            f"internal error: {exc.__class__.__name__}: {exc} (set PEOPLESEG_DEBUG=1 for a traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
