"""The `peopleseg export` job: ONNX (fp32), then optionally INT8, FP16, a TensorRT engine, DeepStream and Triton
files, with a parity row for every file produced."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peopleseg.errors import ConfigError
from peopleseg.models.segformer import SegFormer


@dataclass
class ExportOptions:
    output: Path
    output_kind: str = "logits"
    opset: int = 17
    batch: int = 1
    dynamic_hw: bool = False
    normalize_in_graph: bool = False
    input_size: tuple[int, int] | None = None
    slim: bool = True
    check: bool = True
    int8: bool = False
    calib: Path | None = None
    calib_count: int = 64
    calib_method: str = "minmax"
    per_channel: bool = True
    quantize_all: bool = False  # also quantise softmax, layer norms, the first patch embed and the classifier
    fp16: bool = False
    tensorrt: Path | None = None
    max_batch: int = 32
    deepstream: Path | None = None
    triton: Path | None = None
    triton_name: str = "peopleseg"
    val_images: Path | None = None
    val_masks: Path | None = None


@dataclass
class ParityRow:
    variant: str
    path: Path
    reference: str
    max_abs_diff: float
    agreement: float
    miou: float | None = None

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6 if self.path.exists() else float("nan")


@dataclass
class ExportSummary:
    rows: list[ParityRow] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}.{tag}{path.suffix}")


def run_export(model: SegFormer, options: ExportOptions, report: Callable[[str], None] = print) -> ExportSummary:
    from peopleseg.export.onnx_export import check_opset, export_onnx
    from peopleseg.models.info import ModelInfo

    if options.output.suffix != ".onnx":
        raise ConfigError(f"{options.output}: the output file must end in .onnx")
    if options.int8 and options.calib is None:
        raise ConfigError("--int8 needs calibration images: --calib DIR")
    check_opset(options.opset)
    summary = ExportSummary()
    # Every folder is checked before anything is written: a typo must not cost a finished fp32 export.
    calibration, images = _check_folders(options, summary)
    if options.input_size is not None:
        info = dataclasses.replace(model.info, input_size=tuple(options.input_size))
        model.info = ModelInfo.from_dict(info.to_dict(), source="--input-size")
    result = export_onnx(
        model,
        options.output,
        batch=options.batch,
        opset=options.opset,
        check=options.check,
        output_kind=options.output_kind,
        normalize_in_graph=options.normalize_in_graph,
        dynamic_hw=options.dynamic_hw,
        slim=options.slim,
    )
    summary.files.append(result.path)
    summary.rows.append(ParityRow("fp32", result.path, "torch", result.max_abs_diff, result.argmax_agreement))
    variants: list[tuple[str, Path]] = []
    deploying = any(p is not None for p in (options.tensorrt, options.deepstream, options.triton))
    if options.int8:
        from peopleseg.export.quantize import QuantizeConfig, quantize_int8

        keep = () if options.quantize_all else QuantizeConfig().keep_float
        config = QuantizeConfig(
            method=options.calib_method,
            calibration_count=options.calib_count,
            per_channel=options.per_channel,
            keep_float=keep,
            # TensorRT (and so DeepStream, and Triton's TensorRT paths) takes symmetric int8 Q/DQ only.
            activation_type="int8" if deploying else "uint8",
        )
        path = quantize_int8(options.output, _sibling(options.output, "int8"), calibration, model.info, config)
        variants.append(("int8", path))
        if deploying:
            summary.notes.append(f"{path.name}: int8 activations with zero point 0, as TensorRT needs")
    if options.fp16:
        from peopleseg.export.fp16 import convert_fp16

        variants.append(("fp16", convert_fp16(options.output, _sibling(options.output, "fp16"))))
    reference = "fp32 onnx" if options.val_images else "fp32 onnx (calib images)"
    for name, path in variants:
        summary.files.append(path)
        if images:
            from peopleseg.export.quantize import agreement

            found = agreement(options.output, path, images, model.info)
            summary.rows.append(ParityRow(name, path, reference, found["max_abs_diff"], found["agreement"]))
        else:
            summary.rows.append(ParityRow(name, path, "fp32 onnx", float("nan"), float("nan")))
    if variants and not images:
        summary.notes.append("no images to compare the variants with fp32 on (n/a): add --val-images or --calib")
    if options.int8 and images and not options.val_images:
        summary.notes.append(
            "int8 agreement is measured on the calibration images themselves (optimistic); add --val-images"
        )
    if options.val_images and options.val_masks:
        _add_miou(summary, options, model)
    deploy_file = variants[0][1] if variants else options.output
    precision = variants[0][0] if variants else "fp32"
    if options.deepstream is not None:
        from peopleseg.export.deepstream import write_deepstream

        summary.files += write_deepstream(
            options.deepstream,
            deploy_file,
            model.info,
            options.output_kind,
            precision=precision,
            normalized_in_graph=options.normalize_in_graph,
            batch_size=options.batch,
        )
    if options.triton is not None:
        from peopleseg.export.triton import write_triton_repository

        summary.files += write_triton_repository(
            options.triton,
            options.triton_name,
            deploy_file,
            model.info,
            options.output_kind,
            max_batch_size=options.max_batch,
        )
    if options.tensorrt is not None:  # last: the slowest step, and the one most often impossible here
        _tensorrt(summary, options, deploy_file, precision, model.info.input_size)
    return summary


def _tensorrt(
    summary: ExportSummary, options: ExportOptions, onnx_file: Path, precision: str, size: tuple[int, int]
) -> None:
    """Build the engine, or without the tensorrt package note the trtexec command that builds it elsewhere."""
    import importlib.util

    from peopleseg.export.tensorrt import build_engine, check_symmetric_qdq, trtexec_command, write_engine_sidecar

    assert options.tensorrt is not None
    if importlib.util.find_spec("tensorrt") is not None:
        summary.files.append(build_engine(onnx_file, options.tensorrt, precision, size, max_batch=options.max_batch))
        return
    check_symmetric_qdq(onnx_file)
    command = trtexec_command(onnx_file, options.tensorrt, precision, size, max_batch=options.max_batch)
    # The settings go beside the engine-to-be, so the engine built elsewhere runs with the right normalisation.
    sidecar = write_engine_sidecar(onnx_file, options.tensorrt, precision)
    if sidecar is not None:
        summary.files.append(sidecar)
    summary.notes.append(f"TensorRT is not installed here; build {options.tensorrt.name} on the GPU machine: {command}")


def _check_folders(options: ExportOptions, summary: ExportSummary) -> tuple[list[Path], list[Path]]:
    """(calibration images, images for the INT8/FP16 agreement rows), checked before the export writes anything.

    The calibration minimum applies to --calib only; the agreement rows use the validation images (any number),
    else the calibration ones.
    """
    from peopleseg.errors import DataError
    from peopleseg.export.quantize import calibration_images, find_images

    calibration: list[Path] = []
    if options.calib is not None and not options.int8:
        calibration = find_images(options.calib)[: options.calib_count]  # only compared on: no minimum
    elif options.calib is not None:
        calibration = calibration_images(options.calib, options.calib_count)
        if len(calibration) < options.calib_count:
            summary.notes.append(
                f"{options.calib}: calibrating on {len(calibration)} images, fewer than --calib-count "
                f"{options.calib_count}"
            )
    if options.val_masks is not None and not options.val_masks.is_dir():
        raise DataError(f"{options.val_masks}: no such folder (--val-masks)")
    if options.val_images is None:
        return calibration, calibration[:: max(1, -(-len(calibration) // 32))]
    found = find_images(options.val_images)
    if not found:
        raise DataError(f"{options.val_images}: no images (--val-images)")
    # Up to 32 evenly spaced images: enough for an agreement figure, cheap enough for every export.
    return calibration, [found[i * len(found) // min(32, len(found))] for i in range(min(32, len(found)))]


def _add_miou(summary: ExportSummary, options: ExportOptions, model: SegFormer) -> None:
    from peopleseg.data.folder import SegmentationFolder
    from peopleseg.engine.evaluate import EvalConfig, evaluate
    from peopleseg.infer.segmenter import Segmenter

    dataset = SegmentationFolder(options.val_images, options.val_masks, num_classes=model.info.num_classes)
    for row in summary.rows:
        segmenter = Segmenter(row.path)
        row.miou = evaluate(segmenter, dataset, EvalConfig(), progress=False).overall["miou"] * 100


def parity_table(summary: ExportSummary) -> str:
    lines = [
        "| variant | file | MB | compared with | max abs diff | argmax agreement | val mIoU |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    fp32 = next((r.miou for r in summary.rows if r.variant == "fp32"), None)
    for row in summary.rows:
        miou = "" if row.miou is None else f"{row.miou:.2f}"
        if row.miou is not None and fp32 is not None and row.variant != "fp32":
            miou += f" ({row.miou - fp32:+.2f})"
        lines.append(
            f"| {row.variant} | {row.path.name} | {row.size_mb():.1f} | {row.reference} | {_num(row.max_abs_diff)} "
            f"| {_pct(row.agreement)} | {miou} |"
        )
    lines += [f"note: {note}" for note in summary.notes]
    return "\n".join(lines)


def _num(value: float) -> str:
    return "n/a" if value != value else f"{value:.2e}"


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.4f}%"


def options_from_args(args: Any) -> ExportOptions:
    return ExportOptions(
        output=Path(args.output),
        output_kind=args.output_kind,
        opset=args.opset,
        batch=args.batch,
        dynamic_hw=args.dynamic_hw,
        normalize_in_graph=args.normalize_in_graph,
        input_size=tuple(args.input_size) if args.input_size else None,
        slim=not args.no_slim,
        check=not args.no_check,
        int8=args.int8,
        calib=Path(args.calib) if args.calib else None,
        calib_count=args.calib_count,
        calib_method=args.calib_method,
        per_channel=not args.no_per_channel,
        quantize_all=args.quantize_all,
        fp16=args.fp16,
        tensorrt=Path(args.tensorrt) if args.tensorrt else None,
        max_batch=args.max_batch,
        deepstream=Path(args.deepstream) if args.deepstream else None,
        triton=Path(args.triton) if args.triton else None,
        triton_name=args.triton_name,
        val_images=Path(args.val_images) if args.val_images else None,
        val_masks=Path(args.val_masks) if args.val_masks else None,
    )
