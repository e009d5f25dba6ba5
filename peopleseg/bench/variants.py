"""Build each benchmark variant as a `Segmenter`, so every timed call runs the same pre- and postprocessing.

Exported files (ONNX fp32, INT8, FP16, a TensorRT engine) go to the run's temporary folder. A variant that cannot
be built here (no TensorRT, no CUDA provider for onnxruntime, no HF mirror of the encoder) becomes a `Skipped`
with the reason, and the others go on.
"""

from __future__ import annotations

import copy
import importlib.util
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peopleseg.bench.config import BenchmarkConfig
from peopleseg.bench.hf_baseline import HFBackend, build_hf_segformer, hf_unavailable_reason
from peopleseg.errors import PeoplesegError
from peopleseg.infer.segmenter import Segmenter
from peopleseg.models.segformer import SegFormer

# Variants whose CUDA memory goes through torch's allocator, so that torch.cuda.max_memory_allocated sees it.
TORCH_ALLOCATED = ("hf", "torch", "torch-compile")


@dataclass
class Variant:
    name: str
    segmenter: Segmenter
    setup_s: float  # export, quantisation, engine build or model copy; compilation happens in the warm-up
    notes: list[str] = field(default_factory=list)
    exact_weights: bool = True  # False: random weights (an HF mirror that could not take ours), agreement is n/a


@dataclass
class Skipped:
    model: str
    variant: str
    reason: str
    failed: bool = False  # built, then raised while running (as opposed to unavailable here)


class VariantBuilder:
    """Builds the variants of one model; the fp32 ONNX file is exported once and shared by the ONNX variants."""

    def __init__(self, model: SegFormer, config: BenchmarkConfig, work_dir: Path, images: list[Path]) -> None:
        self.model, self.config, self.work_dir, self.images = model, config, work_dir, images
        self._onnx: Path | None = None

    def build(self, name: str) -> Variant:
        """The variant, ready to time; raises `PeoplesegError` (or ImportError) when it cannot be built here."""
        builders: dict[str, Callable[[], Variant]] = {
            "hf": self._hf,
            "torch": lambda: self._torch("torch", compile=False),
            "torch-compile": lambda: self._torch("torch-compile", compile=True),
            "ort": self._ort,
            "ort-int8": self._ort_int8,
            "ort-fp16": self._ort_fp16,
            "fast-fp32": lambda: self._fast("fast-fp32", "fp32"),
            "fast": lambda: self._fast("fast", "int8"),
            "tensorrt": self._tensorrt,
        }
        start = time.perf_counter()
        variant = builders[name]()
        variant.setup_s = time.perf_counter() - start
        return variant

    def unavailable(self, name: str) -> str | None:
        """Why `name` cannot run here, found without building anything; None when it may."""
        if name == "hf":
            return hf_unavailable_reason(self.model)
        if name.startswith(("ort", "fast")) and importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnx onnxruntime)"
        if name == "tensorrt":
            if importlib.util.find_spec("tensorrt") is None:
                return "TensorRT is not installed (pip install tensorrt, on a machine with an NVIDIA GPU)"
            if not self.config.device.startswith("cuda"):
                return "TensorRT needs --device cuda"
        return None

    def _segmenter(self, model: object, **options: object) -> Segmenter:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the random-weights notice: the report says it once
            return Segmenter(
                model,  # type: ignore[arg-type]
                device=self.config.device,
                resize=self.config.resize,
                threads=self.config.threads,
                batch_size=max(self.config.batch_sizes),
                **options,  # type: ignore[arg-type]
            )

    def _torch(self, name: str, compile: bool) -> Variant:
        return Variant(name, self._segmenter(self.model, backend="torch", compile=compile), 0.0)

    def _hf(self) -> Variant:
        hf, copied = build_hf_segformer(self.model)
        backend = HFBackend(hf, self.model.info, self.config.device)
        notes = [] if copied else ["our weights do not map onto HF's layout: random weights, agreement n/a"]
        return Variant("hf", self._segmenter(self.model, backend=backend), 0.0, notes, exact_weights=copied)

    def onnx_fp32(self) -> Path:
        if self._onnx is None:
            from peopleseg.export.onnx_export import export_onnx

            # A copy: export moves the model to the CPU, and the torch variants may hold it on the GPU.
            path = self.work_dir / f"{self.model.info.arch}.onnx"
            export_onnx(copy.deepcopy(self.model).cpu(), path, check=False)
            self._onnx = path
        return self._onnx

    def _ort(self) -> Variant:
        return Variant("ort", self._segmenter(self.onnx_fp32(), backend="onnxruntime"), 0.0)

    def _ort_int8(self) -> Variant:
        from peopleseg.export.quantize import QuantizeConfig, quantize_int8

        count = min(64, len(self.images))
        target = self.onnx_fp32().with_suffix(".int8.onnx")
        config = QuantizeConfig(calibration_count=count)
        quantize_int8(self.onnx_fp32(), target, self.images, self.model.info, config, progress=False)
        note = f"calibrated (minmax, per-channel QDQ) on {count} benchmark image(s)"
        return Variant("ort-int8", self._segmenter(target, backend="onnxruntime"), 0.0, [note])

    def _fast(self, name: str, precision: str) -> Variant:
        """What `Segmenter` runs by default on a CPU (infer/fast_path.py), built here rather than in the cache."""
        from peopleseg.infer.fast_path import build_fast_onnx
        from peopleseg.models.weights import save_model

        weights = save_model(copy.deepcopy(self.model).cpu(), self.work_dir / f"{self.model.info.arch}.safetensors")
        target = build_fast_onnx(weights, self.work_dir / f"{self.model.info.arch}.fast-{precision}.onnx", precision)
        return Variant(name, self._segmenter(target, backend="onnxruntime"), 0.0)

    def _ort_fp16(self) -> Variant:
        from peopleseg.export.fp16 import convert_fp16

        target = self.onnx_fp32().with_suffix(".fp16.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # ops kept in float32 are part of the variant, not news
            convert_fp16(self.onnx_fp32(), target)
        notes = [] if self.config.device.startswith("cuda") else ["onnxruntime has few fp16 CPU kernels: a GPU format"]
        return Variant("ort-fp16", self._segmenter(target, backend="onnxruntime"), 0.0, notes)

    def _tensorrt(self) -> Variant:
        from peopleseg.export.tensorrt import build_engine

        reason = self.unavailable("tensorrt")
        if reason is not None:
            raise PeoplesegError(reason)
        engine = build_engine(
            self.onnx_fp32(),
            self.onnx_fp32().with_suffix(".fp16.engine"),
            precision="fp16",
            input_size=self.model.info.input_size,
            max_batch=max(self.config.batch_sizes),
        )
        segmenter = self._segmenter(engine, backend="tensorrt", info=self.model.info)
        return Variant("tensorrt", segmenter, 0.0, ["FP16 engine built from the fp32 ONNX"])
