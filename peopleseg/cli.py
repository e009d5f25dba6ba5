"""`peopleseg <command>`: one entry point for every job. Errors print as one line and exit non-zero."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from peopleseg.argtypes import non_negative_float, positive_int
from peopleseg.errors import PeoplesegError
from peopleseg.resize_policy import CHOICES

TTA_HELP = "test-time augmentation: average views, e.g. flip or flip,1.5,sliding (several times the compute)"


@contextlib.contextmanager
def _extra(command: str, extra: str) -> Iterator[None]:
    """A command's imports: a missing optional package is a one-line error naming the extra that brings it, as
    `peopleseg serve` says (serve/command.py)."""
    try:
        yield
    except ImportError as exc:
        raise PeoplesegError(
            f"peopleseg {command} needs the {extra} extra ({exc.name} is missing): pip install 'peopleseg[{extra}]'"
        ) from None


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
    from peopleseg.infer.run import (
        expand_inputs,
        is_video,
        output_stems,
        parse_outputs,
        segment_images,
        segment_video,
    )
    from peopleseg.infer.segmenter import RANDOM_INIT_WARNING, Segmenter
    from peopleseg.infer.sources import redact

    outputs = parse_outputs(args.output)
    _writable_folder(Path(args.output_dir), "-o")  # before the model loads and any input is read
    inputs = expand_inputs(args.inputs, output_dir=args.output_dir)  # a run's outputs are not the next run's inputs
    if len(inputs) == 1:
        _check_single_input(inputs[0], args.max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # said once below, in the CLI's own words
        segmenter = Segmenter(
            args.model,
            backend=args.backend,
            device=args.device,
            resize=args.resize,
            threads=args.threads,
            precision=args.precision,
            batch_size=args.batch,
            min_person_area=args.min_area,
            tta=args.tta,
            max_pixels=args.max_pixels,
        )
    if segmenter.is_random_init:
        print(f"WARNING: {RANDOM_INIT_WARNING}.", file=sys.stderr)
    images = [item for item in inputs if not is_video(item)]
    videos = [item for item in inputs if is_video(item)]
    failed: list[str] = []
    if images:
        # A bad file among many is reported and skipped; a single bad file is the command's one-line error.
        summary = segment_images(
            segmenter, images, args.output_dir, outputs, progress=not args.quiet, skip_bad=len(inputs) > 1
        )
        failed += summary.failed
        if len(summary.records) <= 10:
            for path, record in summary.records:
                print(
                    f"{path}: {record['width']}x{record['height']}, {record['people_count']} person region(s), "
                    f"person pixels {100 * record['person_fraction']:.1f}%"
                )
        print(f"{summary.images} image(s) -> {args.output_dir} ({summary.fps:.1f} images/s)")
    stems = output_stems(videos)  # videos that share a name (talk.mp4, talk.mkv) must not overwrite each other
    for spec in videos:
        try:
            summary = segment_video(
                segmenter,
                spec,
                args.output_dir,
                outputs,
                batch_size=args.batch,
                smoothing=not args.no_smooth,
                alpha=args.smooth_alpha,
                max_frames=args.max_frames,
                progress=not args.quiet,
                stem=stems[spec],
            )
        except PeoplesegError as exc:
            if len(inputs) == 1:
                raise  # a single input's failure is the command's one-line error
            print(f"skipped {exc}", file=sys.stderr)  # as a bad photo among many: reported, and the run goes on
            failed.append(spec)
            continue
        failed += summary.failed
        names = ", ".join(str(p) for p in summary.written) or "nothing written"
        print(f"{redact(spec)}: {summary.frames} frames at {summary.fps:.1f} FPS -> {names}")
    if failed:
        print(f"error: {len(failed)} input(s) or frame(s) could not be read and were skipped", file=sys.stderr)
        return 1
    return 0


def _check_single_input(spec: str, max_pixels: int | None = None) -> None:
    """A single input that is not an image or a video is the command's error: say so before the model loads, which
    on a first run builds the fast graph for seconds. Only regular files are looked at (headers, nothing decoded):
    pipes can be read once, and streams and cameras are the pipeline's to open."""
    from peopleseg.data.image_io import decode_file
    from peopleseg.infer.run import is_video
    from peopleseg.infer.sources import open_source

    if not Path(spec).is_file():
        return
    if is_video(spec):
        open_source(spec, reconnect=False).close()
    else:
        decode_file(Path(spec), header_only=True, max_pixels=max_pixels)


def _cmd_export(args: argparse.Namespace) -> int:
    from peopleseg.export.run import options_from_args, parity_table, run_export
    from peopleseg.models.weights import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = load_model(args.model)  # 'default' too: the bundled model
    summary = run_export(model, options_from_args(args))
    print(parity_table(summary))
    print("wrote: " + ", ".join(str(p) for p in summary.files))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from peopleseg.config import load_config, to_dict
    from peopleseg.engine.train_config import TrainConfig

    shortcuts = [f"model.init={args.init}"] if args.init else []
    shortcuts += ["data.skip_bad=true"] if args.skip_bad else []
    config = load_config(TrainConfig, args.config, [*args.set, *shortcuts])
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    if args.config is None and not args.set:
        raise PeoplesegError("peopleseg train: give a config file (see configs/) or --set overrides")
    with _extra("train", "train"):
        from peopleseg.engine.train import first_process, train

    summary = train(
        config, resume=args.resume if args.resume else False, progress=not args.quiet, overwrite=args.overwrite
    )
    best = f", best val mIoU {summary.best_miou:.2f}" if summary.best_miou is not None else ""
    if not first_process():  # every process of a multi-GPU run gets here: one summary is enough
        return 0
    print(
        f"trained {summary.steps} steps{best} -> {summary.out_dir} (weights: {summary.last_weights.name}"
        f"{', ' + summary.best_weights.name if summary.best_weights else ''})"
    )
    return 0


def _folder_dataset(args: argparse.Namespace, num_classes: int) -> object:
    from peopleseg.data.folder import SegmentationFolder

    return SegmentationFolder(
        args.images,
        args.masks,
        list_file=args.list_file,
        subsets_csv=args.subsets_csv,
        subset_from_subfolder=args.subset_from_subfolder,
        palette=_palette(args),
        num_classes=num_classes,
        binary_255=args.binary_255,
    )


def _palette(args: argparse.Namespace) -> object:
    from peopleseg.data.masks import Palette

    if not args.palette:
        return None
    import yaml

    try:
        return Palette.from_config(yaml.safe_load(Path(args.palette).read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise PeoplesegError(f"{args.palette}: cannot read the palette ({exc.__class__.__name__})") from None


def _writable_folder(path: Path, flag: str) -> None:
    """A one-line error naming `flag` unless the results folder `path` can be written (or made) there. Nothing is
    created: a run that fails later leaves no empty folder behind."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == path.absolute() else f"{existing} is a file, not a folder"
        raise PeoplesegError(f"{flag} {path}: {what}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise PeoplesegError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Python warnings raised inside, each printed as one `WARNING:` line on stderr (not file:line: UserWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for warning in caught:
        print(f"WARNING: {warning.message}", file=sys.stderr)


def _cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from peopleseg.models.weights import load_model_with_report, save_model

    if not args.output.endswith(".safetensors"):
        raise PeoplesegError(f"-o {args.output}: weights are saved as .safetensors")
    if (args.mean is None) != (args.std is None):
        raise PeoplesegError("--mean and --std go together: a checkpoint's normalisation needs both")
    overrides = {"mean": args.mean, "std": args.std} if args.mean is not None else None
    with _warnings_as_lines():
        model, report = load_model_with_report(
            args.source, strict=not args.not_strict, allow_pickle=args.allow_pickle, info_overrides=overrides
        )
    written = save_model(model, args.output, dtype=torch.float16 if args.fp16 else None)
    info = model.info
    print(
        f"{args.source} -> {written}: {info.arch}, classes {', '.join(info.classes)}, "
        f"input {info.input_size[0]}x{info.input_size[1]}, mean {list(info.mean)}, std {list(info.std)}"
        + (f", {report.summary()}" if report is not None and not report.clean else "")
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    with _extra("evaluate", "train"):  # the metrics are torchmetrics'
        from peopleseg.engine.evaluate import EvalConfig, evaluate
    from peopleseg.engine.report import headline, markdown_table, write_reports
    from peopleseg.infer.segmenter import Segmenter

    if args.out:  # before the run, not after it: a report folder that cannot be made would waste the evaluation
        _writable_folder(Path(args.out), "--out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        segmenter = Segmenter(args.model, backend=args.backend, device=args.device, threads=args.threads, tta=args.tta)
    if segmenter.is_random_init:
        print("WARNING: evaluating a model with random weights.", file=sys.stderr)
    dataset = _folder_dataset(args, len(segmenter.classes))
    config = EvalConfig(protocol=args.protocol, batch_size=args.batch, max_images=args.max_images, worst=args.worst)
    with _warnings_as_lines():
        result = evaluate(segmenter, dataset, config, progress=not args.quiet)
    print(headline(result))
    print(markdown_table(result))
    if args.out:
        written = write_reports(result, args.out, dataset=dataset)
        pages = [p.name for p in written if p.suffix != ".png"]
        print(f"reports in {args.out}: {', '.join(pages)}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from peopleseg.data.check import check_dataset

    # Folders, not a dataset object: building a dataset stops at the first missing mask, a check reports them all.
    report = check_dataset(
        (args.images, args.masks),
        args.num_classes,
        palette=_palette(args),
        binary_255=args.binary_255,
        subset_from_subfolder=args.subset_from_subfolder,
        subsets_csv=args.subsets_csv,
        list_file=args.list_file,
        progress=not args.quiet,
    )
    print(report.summary())
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


def _cmd_data_pack(args: argparse.Namespace) -> int:
    from peopleseg.data.shards import pack_shards

    shards = pack_shards(
        _folder_dataset(args, args.num_classes),
        args.output,
        prefix=args.prefix,
        max_samples_per_shard=args.shard_size,
        progress=not args.quiet,
    )
    print(f"{len(shards)} shard(s) -> {args.output}")
    return 0


def _add_folder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--masks", required=True, help="folder of PNG masks with the images' relative names")
    parser.add_argument("--list-file", help="text file of image names that make up the split")
    parser.add_argument(
        "--subset-from-subfolder",
        action="store_true",
        help="tag each image with its first sub-folder (images/5ft/a.jpg is in subset 5ft)",
    )
    parser.add_argument("--subsets-csv", help="CSV with image,subset columns")
    parser.add_argument("--palette", help="YAML list of {seg_class, label_id, rgb} for colour masks (as TAO)")
    parser.add_argument("--binary-255", action="store_true", help="masks are 0/255 (255 = person), not label ids")


def _cmd_autolabel(args: argparse.Namespace) -> int:
    from peopleseg.autolabel.run import AutolabelConfig, autolabel, plan_inputs

    config = AutolabelConfig(
        background_below=args.background_below,
        person_above=args.person_above,
        prior_masks=args.prior_masks,
        video_every=args.video_every,
        max_video_frames=args.max_frames,
        max_side=args.max_side,
        min_confidence=args.min_confidence,
        relabel=args.relabel,
    )
    # The inputs first: a missing file is the user's first problem, before a teacher is loaded (or found missing).
    plan_inputs(args.inputs, config.prior_masks, exclude=args.output)
    if args.ray is not None:
        from peopleseg.autolabel.ray_runner import autolabel_on_ray

        summary = autolabel_on_ray(
            args.inputs,
            args.output,
            args.teacher,
            config,
            tta=args.tta,
            address=args.ray or None,
            workers=args.ray_workers,
            progress=not args.quiet,
        )
    else:
        # Specs, not a teacher: autolabel builds it and closes it (an RVM Node process) when done.
        summary = autolabel(args.inputs, args.output, args.teacher, config, progress=not args.quiet, tta=args.tta)
    agreement = ""
    if summary.prior_agreement:
        agreement = (
            f", person IoU with the prior masks {100 * sum(summary.prior_agreement) / len(summary.prior_agreement):.1f}"
        )
    print(
        f"labelled {summary.labelled} samples in {summary.seconds:.1f} s ({summary.per_second:.2f}/s), "
        f"{summary.skipped_done} inputs already done (a photo or a whole video each), "
        f"{summary.dropped_low_confidence} dropped as unsure, "
        f"{len(summary.failed)} failed{agreement} -> {args.output}"
    )
    if args.shards:
        from peopleseg.data.folder import SegmentationFolder
        from peopleseg.data.shards import pack_shards

        dataset = SegmentationFolder(Path(args.output) / "images", Path(args.output) / "masks")
        # The shards mirror the folder: when this run changed it, they are packed again, not resumed.
        changed = summary.labelled or summary.dropped_low_confidence or config.relabel
        pack_shards(dataset, args.shards, resume=not changed, progress=not args.quiet)
        print(f"shards -> {args.shards}")
    return 1 if summary.failed and not summary.labelled else 0


def _cmd_autolabel_review(args: argparse.Namespace) -> int:
    from peopleseg.autolabel.review import write_review

    path = write_review(args.dataset, args.output, count=args.count, sort=args.sort, seed=args.seed)
    print(f"review sheet -> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from peopleseg import __version__
    from peopleseg.infer.image_input import DEFAULT_MAX_PIXELS

    parser = argparse.ArgumentParser(
        prog="peopleseg", description="Find every person in images and video, pixel by pixel."
    )
    parser.add_argument("--version", action="version", version=f"peopleseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = commands.add_parser("models", help="list the models with parameters and compute")
    models.add_argument("--size", type=_positive_multiple_of_32, default=512, help="square input size (default 512)")
    models.add_argument("--no-flops", action="store_true", help="skip the compute count")
    models.set_defaults(run=_cmd_models)

    converter = commands.add_parser(
        "convert",
        help="turn any checkpoint peopleseg loads (HF, NVlabs, mmseg, TAO) into peopleseg safetensors",
        description="Load a checkpoint as load_model does and write it as .safetensors with its metadata sidecar: "
        "it then loads fast and safely in every command (infer, evaluate, export, serve, benchmark, train's "
        "model.init).",
    )
    converter.add_argument("source", help="checkpoint file or HF folder")
    converter.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    converter.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a .pth that pickles Python objects besides tensors (runs code from it: trusted sources only)",
    )
    converter.add_argument("--not-strict", action="store_true", help="load what matches and report the rest")
    converter.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation mean, 0-255")
    converter.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="normalisation std, 0-255")
    converter.add_argument("--fp16", action="store_true", help="store floating tensors as fp16 (half the file)")
    converter.set_defaults(run=_cmd_convert)

    infer = commands.add_parser(
        "infer",
        help="segment people in photos, folders, videos, streams and webcams",
        description="Segment people in photos, folders (recursive), globs, video files, rtsp:// or http:// streams, "
        "webcam:N cameras and lavfi:GRAPH virtual sources.",
    )
    infer.add_argument("inputs", nargs="+", help="images, folders, globs, videos, rtsp://…, http://…, webcam:0")
    infer.add_argument("-o", "--output-dir", default="peopleseg_out", help="where results go (default peopleseg_out)")
    infer.add_argument(
        "--output",
        default="mask,overlay",
        help="comma-separated: mask, overlay, cutout, blur, pixelate-people, json (default mask,overlay)",
    )
    infer.add_argument("-m", "--model", default="default", help="'default', a model name, a weights path or .onnx")
    infer.add_argument(
        "--backend",
        default="auto",
        help="auto (a weights file on CPU: onnxruntime fast path; else by file type), torch, onnxruntime or tensorrt",
    )
    infer.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    infer.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "int8", "fp16", "bf16"),
        help="auto (INT8 fast path on CPU, else fp32), fp32, int8 (onnxruntime), fp16 or bf16 (torch on GPU)",
    )
    infer.add_argument("--threads", type=positive_int, default=None, help="CPU threads for the model")
    infer.add_argument(
        "--resize",
        default="auto",
        choices=CHOICES,
        help="how images meet the network input size (default auto: the model's own; the bundled model letterboxes)",
    )
    infer.add_argument("--batch", type=positive_int, default=4, help="frames per forward pass (default 4)")
    infer.add_argument("--tta", default="", help=TTA_HELP)
    infer.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest photo accepted, in pixels (default {DEFAULT_MAX_PIXELS:,}), read from its header before it is "
        "decoded: a guard against decompression bombs",
    )
    infer.add_argument(
        "--min-area",
        type=non_negative_float,
        default=0.0005,
        help="smallest person region counted: pixels, or a fraction of the image if < 1",
    )
    infer.add_argument("--no-smooth", action="store_true", help="video: turn temporal smoothing off")
    infer.add_argument("--smooth-alpha", type=float, default=0.5, help="video: weight of the newest frame (0-1]")
    infer.add_argument("--max-frames", type=positive_int, default=None, help="video: stop after N frames")
    infer.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    infer.set_defaults(run=_cmd_infer)

    export = commands.add_parser(
        "export",
        help="export to ONNX (fp32, INT8, FP16), TensorRT, DeepStream and Triton",
        description="Export a model to ONNX in the TAO/DeepStream layout (input 'input', output 'output'), check it "
        "against PyTorch, and optionally quantise it and write deployment files.",
    )
    export.add_argument("model", help="a model name or a weights path")
    export.add_argument("-o", "--output", required=True, help="the fp32 .onnx file; variants go beside it")
    export.add_argument(
        "--output-kind",
        default="logits",
        choices=("logits", "argmax", "probs"),
        help="logits [N,C,H/4,W/4] (default), argmax int64 [N,1,H,W] as NVIDIA's deployable, or probs",
    )
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.add_argument("--batch", type=positive_int, default=1, help="batch of the traced example (axis is dynamic)")
    export.add_argument("--dynamic-hw", action="store_true", help="make height and width dynamic too")
    export.add_argument(
        "--normalize-in-graph",
        action="store_true",
        help="the graph takes 0-255 RGB and normalises itself (default: normalise outside, as TAO)",
    )
    export.add_argument(
        "--input-size",
        type=_positive_multiple_of_32,
        nargs=2,
        metavar=("H", "W"),
        help="network input size to export at (default: the model's)",
    )
    export.add_argument("--no-slim", action="store_true", help="skip the onnxslim graph simplification")
    export.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    export.add_argument("--int8", action="store_true", help="also write <name>.int8.onnx (static QDQ quantisation)")
    export.add_argument("--calib", help="folder of real images for INT8 calibration")
    export.add_argument("--calib-count", type=positive_int, default=64, help="calibration images to use")
    export.add_argument("--calib-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    export.add_argument("--no-per-channel", action="store_true", help="per-tensor instead of per-channel weights")
    export.add_argument(
        "--quantize-all",
        action="store_true",
        help="quantise softmax, layer norms, the first patch embed and the classifier too",
    )
    export.add_argument("--fp16", action="store_true", help="also write <name>.fp16.onnx (float32 inputs/outputs)")
    export.add_argument("--val-images", help="labelled images: report each variant's mIoU and its drop")
    export.add_argument("--val-masks", help="masks for --val-images")
    export.add_argument("--tensorrt", metavar="ENGINE", help="build a TensorRT engine (needs tensorrt and a GPU)")
    export.add_argument("--max-batch", type=positive_int, default=32, help="largest batch for TensorRT/Triton")
    export.add_argument("--deepstream", metavar="DIR", help="write DeepStream nvinfer config, labels and README")
    export.add_argument("--triton", metavar="DIR", help="write a Triton model repository")
    export.add_argument("--triton-name", default="peopleseg", help="model name in the Triton repository")
    export.set_defaults(run=_cmd_export)

    trainer = commands.add_parser(
        "train",
        help="fine-tune a model on your own images and masks",
        description="Train with a YAML config (see configs/). Any key can be overridden: --set optim.lr=1e-4. "
        "Multi-GPU and multi-node runs use the same command under torchrun or SLURM.",
    )
    trainer.add_argument("config", nargs="?", help="YAML config file")
    trainer.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    trainer.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CKPT",
        help="continue <out_dir>/checkpoints/last.ckpt, or the given checkpoint",
    )
    trainer.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an out_dir that holds a run (its checkpoints and weights are deleted; logs stay)",
    )
    trainer.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from these weights: 'default' (the bundled model) or a path (model.init)",
    )
    trainer.add_argument(
        "--skip-bad", action="store_true", help="skip and count unreadable samples instead of stopping (data.skip_bad)"
    )
    trainer.add_argument("--print-config", action="store_true", help="print the full config and exit")
    trainer.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    trainer.set_defaults(run=_cmd_train)

    evaluator = commands.add_parser(
        "evaluate",
        help="mIoU per class and per content subset on a labelled folder",
        description="Score a model (weights, name or .onnx) against masks: mIoU, per-class IoU, pixel accuracy, "
        "per-subset rows, and optionally a gallery of the worst images.",
    )
    evaluator.add_argument("model", help="'default', a model name, a weights path or an .onnx file")
    _add_folder_arguments(evaluator)
    evaluator.add_argument(
        "--protocol",
        default="auto",
        choices=("auto", "resize", "letterbox", "whole", "sliding"),
        help="auto (default: the model's own policy, as infer runs it), resize (NVIDIA's model card's), letterbox, "
        "whole image, or windows",
    )
    evaluator.add_argument("--tta", default="", help=TTA_HELP)
    evaluator.add_argument("--out", help="write metrics.json, metrics.md and (with --worst) worst.html here")
    evaluator.add_argument("--worst", type=int, default=0, help="keep the N worst images for the gallery")
    evaluator.add_argument("--batch", type=positive_int, default=4)
    evaluator.add_argument("--max-images", type=positive_int, default=None)
    evaluator.add_argument(
        "--backend",
        default="auto",
        help="auto (what infer runs: on a CPU, the INT8 fast path for a weights file), torch (exact fp32), onnxruntime",
    )
    evaluator.add_argument("--device", default="cpu")
    evaluator.add_argument("--threads", type=positive_int, default=None)
    evaluator.add_argument("-q", "--quiet", action="store_true")
    evaluator.set_defaults(run=_cmd_evaluate)

    data = commands.add_parser("data", help="check a dataset, or pack it into WebDataset shards")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_commands.add_parser("check", help="find unreadable images, missing or wrong masks, bad labels")
    _add_folder_arguments(check)
    check.add_argument("--num-classes", type=positive_int, default=2)
    check.add_argument("-q", "--quiet", action="store_true")
    check.set_defaults(run=_cmd_data_check)
    pack = data_commands.add_parser("pack", help="write a folder dataset as WebDataset tar shards")
    _add_folder_arguments(pack)
    pack.add_argument("-o", "--output", required=True, help="folder for the shards")
    pack.add_argument("--prefix", default="shard")
    pack.add_argument("--shard-size", type=positive_int, default=1000, help="samples per shard")
    pack.add_argument("--num-classes", type=positive_int, default=2)
    pack.add_argument("-q", "--quiet", action="store_true")
    pack.set_defaults(run=_cmd_data_pack)

    labeler = commands.add_parser(
        "autolabel",
        help="label images or video with teacher models, for distillation (`autolabel review` to inspect)",
        description="Label images, folders, globs and videos with one or more teachers into a folder dataset "
        "(images/, masks/ with 255 = unsure, probs/, manifest.jsonl). Re-running resumes. "
        "`peopleseg autolabel review DATASET -o sheet.html` writes a contact sheet of the labels.",
    )
    labeler.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, globs or video files")
    labeler.add_argument("-o", "--output", required=True, help="the dataset folder to write (or resume)")
    labeler.add_argument(
        "-t",
        "--teacher",
        action="append",
        required=True,
        help="KIND[:ARG][,key=value]: rvm[:DIR][,ratio=R], mediapipe[:landscape|general], onnx:PATH, "
        "peopleseg:MODEL; add weight=W; repeat for an ensemble",
    )
    labeler.add_argument("--tta", default="", help="test-time views to average, e.g. flip,0.75,1.25")
    labeler.add_argument("--background-below", type=float, default=0.3, help="p <= this is background (default 0.3)")
    labeler.add_argument(
        "--person-above", type=float, default=0.7, help="p >= this is person; between is 255 (default 0.7)"
    )
    labeler.add_argument("--prior-masks", help="folder of masks the images already have: merged, disagreement ignored")
    labeler.add_argument("--video-every", type=positive_int, default=5, help="keep every Nth video frame (default 5)")
    labeler.add_argument("--max-frames", type=positive_int, help="stop each video after this many frames")
    labeler.add_argument(
        "--max-side", type=int, default=1024, help="downscale stored samples to this side (default 1024; 0: keep)"
    )
    labeler.add_argument(
        "--min-confidence", type=float, default=0.0, help="drop samples with fewer sure pixels (a fraction; default 0)"
    )
    labeler.add_argument(
        "--relabel", action="store_true", help="label every input again, even over labels made with other settings"
    )
    labeler.add_argument("--shards", help="also pack the dataset into WebDataset shards in this folder")
    labeler.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (a local one when no address is given); needs `pip install peopleseg[ray]`",
    )
    labeler.add_argument("--ray-workers", type=positive_int, default=2, help="labelling actors on Ray (default 2)")
    labeler.add_argument("-q", "--quiet", action="store_true")
    labeler.set_defaults(run=_cmd_autolabel)
    review = commands.add_parser(
        "autolabel-review",
        prog="peopleseg autolabel review",
        help="contact sheet of labels",
        description="Write a contact sheet (PNG or self-contained HTML) of a labelled dataset's overlays: people "
        "green, unsure pixels red, least confident first.",
    )
    review.add_argument("dataset", help="a folder written by `peopleseg autolabel`")
    review.add_argument("-o", "--output", required=True, help="sheet.png or sheet.html")
    review.add_argument("--count", type=positive_int, default=48, help="samples on the sheet")
    review.add_argument(
        "--sort",
        choices=["confidence", "random", "name"],
        default="confidence",
        help="confidence puts the least sure labels first",
    )
    review.add_argument("--seed", type=int, default=0)
    review.set_defaults(run=_cmd_autolabel_review)
    # Reached as `autolabel review` (main() rewrites it); keep the internal name out of the command list.
    commands._choices_actions = [a for a in commands._choices_actions if a.dest != "autolabel-review"]

    from peopleseg.bench.command import add_benchmark_parser
    from peopleseg.serve.command import add_serve_parser

    add_serve_parser(commands)
    add_benchmark_parser(commands)

    return parser


def _positive_multiple_of_32(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32, got {value}")
    return value


def _say_when_building_the_fast_path() -> None:
    """The first CPU run of a weights file builds its fast graph (seconds for B0, longer for big models): say so."""
    import logging

    log = logging.getLogger("peopleseg.fast_path")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["autolabel", "review"]:  # a sub-action of autolabel, parsed by its own parser
        argv = ["autolabel-review", *argv[2:]]
    args = parser.parse_args(argv)
    _say_when_building_the_fast_path()
    try:
        return int(args.run(args) or 0)
    except PeoplesegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)  # training says where it stood
        return 130
    except OSError as exc:  # the machine's doing (a full disk, a read-only folder, a file in a folder's place)
        if os.environ.get("PEOPLESEG_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("PEOPLESEG_DEBUG"):
            raise
        print(
            f"internal error: {exc.__class__.__name__}: {exc} (set PEOPLESEG_DEBUG=1 for a traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
