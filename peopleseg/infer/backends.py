"""Inference backends behind one interface: PyTorch, onnxruntime and TensorRT.

A backend takes a normalised float32 batch [N, 3, H, W] and returns a torch tensor in one of three kinds:
`logits` [N, C, h, w] (any h, w: the postprocessor resizes), `probs` [N, C, H, W], or `labels` [N, H, W] class ids
(NVIDIA's deployable PeopleSemSegFormer ONNX gives these after an in-graph argmax).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from peopleseg.errors import ConfigError, ModelError
from peopleseg.models.fold import fold_decoder
from peopleseg.models.info import ModelInfo
from peopleseg.models.segformer import SegFormer

OutputKind = Literal["logits", "probs", "labels"]
BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


class Backend(Protocol):
    name: str
    info: ModelInfo
    output_kind: OutputKind
    device: torch.device

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    """Eager (or compiled) PyTorch. fp16/bf16 autocast on GPU; channels_last where it helps convolutions."""

    name = "torch"
    output_kind: OutputKind = "logits"

    def __init__(
        self,
        model: SegFormer,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        fold: bool = True,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device '{device}' asked for, but this torch has no CUDA device")
        if precision not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"precision must be fp32, fp16 or bf16, got '{precision}'")
        self.info = model.info
        self.model = model.to(self.device).eval()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        # The folded decoder shares the encoder and gives the same logits for less work (models/fold.py). It is
        # folded once, here: a Segmenter whose weights change afterwards must be built again.
        network = fold_decoder(self.model) if fold else self.model
        self._forward = torch.compile(network) if compile else network

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, non_blocking=True)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self._forward(pixels)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self._forward(pixels).float()


class OnnxRuntimeBackend:
    """Our exported ONNX, or NVIDIA's deployable PeopleSemSegFormer ONNX (input `input`, output `output`)."""

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        threads: int | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("the onnxruntime backend needs onnxruntime: pip install onnx onnxruntime") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such ONNX file")
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ModelError("the onnxruntime CUDA provider is not installed (pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        self._ort, self._threads, self._providers = ort, threads, providers
        # Between operators, onnxruntime's threads spin (busy-wait) for the next one. Alone, that made B0 10%
        # faster per image here; beside decoding, rendering and encoding on the same cores it cost video 10-20% of
        # its frame rate. So it is on by default, and video pipelines turn it off (`busy_wait = False`) while
        # they run; each setting has its own sessions.
        self.busy_wait = True
        self._batch_axis: str | None = None
        self.session = self._open(None)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: expected one image input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = "output" if any(o.name == "output" for o in outputs) else outputs[0].name
        self.fixed_batch = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else None
        # A symbolic batch axis is pinned per batch size in a session of its own: with every shape static,
        # onnxruntime folds the reshapes and picks static kernels (12-16% faster for B0 on a CPU here).
        batch_dim = inputs[0].shape[0]
        self._batch_axis = batch_dim if isinstance(batch_dim, str) and batch_dim else None
        # Sessions by (pinned batch size, or 0 for none; busy_wait).
        self._sessions: dict[tuple[int, bool], Any] = {(0, True): self.session}
        self.info = info or self._read_info(inputs[0].shape)
        output = next(o for o in outputs if o.name == self.output_name)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.output_kind = self._output_kind(output.type, meta)
        # Dynamic quantisation picks one activation scale per tensor, i.e. per batch: run such a graph one image at
        # a time, so that an image's mask never depends on the other images in its batch (on a CPU, batching
        # gained nothing measurable anyway).
        self.one_at_a_time = meta.get("quantization", "").startswith("dynamic")
        if self.one_at_a_time and self._batch_axis is not None and self.device.type == "cpu":
            # Only batch 1 will ever run: keep just its pinned session (each session holds its own weights).
            self.session = self._open(1)
            self._sessions = {(1, True): self.session}
        # An export with `--normalize-in-graph` takes 0-255 RGB: the Segmenter must not normalise again.
        self.normalized_in_graph = meta.get("normalized_in_graph") == "true"

    def _read_info(self, input_shape: list[Any]) -> ModelInfo:
        meta = self.session.get_modelmeta().custom_metadata_map
        if "peopleseg" in meta:
            return ModelInfo.from_dict(json.loads(meta["peopleseg"]), source=str(self.path))
        # A foreign file (e.g. NVIDIA's deployable): take the input size from the graph, and NVIDIA's 0.5/0.5
        # normalisation, which the deployable PeopleSemSegFormer is fed (DESIGN.md); pass `info` to override.
        from peopleseg.models.info import HALF_MEAN, HALF_STD

        height, width = input_shape[2], input_shape[3]
        if not (isinstance(height, int) and isinstance(width, int)):
            height, width = 512, 512
        return ModelInfo(arch="onnx", mean=HALF_MEAN, std=HALF_STD, input_size=(height, width))

    @staticmethod
    def _output_kind(onnx_type: str, meta: dict[str, str]) -> OutputKind:
        if "int" in onnx_type:
            return "labels"
        kind = meta.get("output_kind", "logits")
        return "probs" if kind == "probs" else "logits"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = pixels.detach().cpu().numpy().astype(np.float32, copy=False)
        if self.one_at_a_time or (self.fixed_batch and batch.shape[0] != self.fixed_batch):
            parts = [self._run(batch[i : i + 1]) for i in range(batch.shape[0])]
            return torch.cat(parts)
        return self._run(batch)

    def _open(self, batch: int | None) -> Any:
        """A session for the current `busy_wait` setting; with `batch`, the symbolic batch axis pinned to it."""
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self._threads:
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
        # Without a memory pattern onnxruntime reuses freed activation blocks instead of planning one block for
        # them all: B0 at 512x512 held 88 MB instead of 162 MB after a run here, at the same speed.
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.busy_wait else "0")
        if batch is not None and self._batch_axis is not None:
            options.add_free_dimension_override_by_name(self._batch_axis, batch)
        try:
            return self._ort.InferenceSession(str(self.path), options, providers=self._providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") from None

    def _session_for(self, batch: int) -> Any:
        if self.device.type != "cpu":
            return self.session
        key = (batch if self._batch_axis is not None else 0, self.busy_wait)
        session = self._sessions.get(key)
        if session is None:
            pinned = sum(1 for size, _ in self._sessions if size)
            if key[0] and pinned >= 2:  # each session holds its own weights: pin two, then fall back
                return self.session
            session = self._sessions[key] = self._open(key[0] or None)
        return session

    def _run(self, batch: np.ndarray) -> torch.Tensor:
        session = self._session_for(batch.shape[0])
        out = torch.from_numpy(session.run([self.output_name], {self.input_name: batch})[0])
        if self.output_kind == "labels":
            # [N, 1, H, W] (deployable PeopleSemSegFormer) or [N, H, W, 1] (TAO 5.0 export) or [N, H, W].
            if out.ndim == 4:
                out = out[:, 0] if out.shape[1] == 1 else out[..., 0]
            return out.long()
        return out.float()


class TensorRTBackend:
    """A serialized TensorRT engine (.engine/.plan), run on CUDA with torch tensors as the I/O buffers."""

    name = "tensorrt"
    output_kind: OutputKind = "logits"

    def __init__(self, path: str | os.PathLike[str], info: ModelInfo | None = None, device: str = "cuda") -> None:
        from peopleseg.export.tensorrt import read_engine_sidecar

        # The engine carries no metadata: its export settings come from "<engine>.json", written when it was built.
        settings = read_engine_sidecar(path) or {}
        if info is None and "info" not in settings:
            raise ConfigError(
                f"{path}: a TensorRT engine carries no metadata and has no .json settings beside it: pass the model "
                "info (normalisation, classes)"
            )
        try:
            import tensorrt as trt
        except ImportError:
            raise ModelError(
                "the tensorrt backend needs NVIDIA TensorRT: pip install tensorrt (on a machine with an NVIDIA GPU)"
            ) from None
        if not torch.cuda.is_available():
            raise ModelError("the tensorrt backend needs a CUDA GPU, and torch sees none")
        self.path = Path(path)
        self.device = torch.device(device)
        self.info = info or settings["info"]
        # Without settings: today's guesses (normalised outside the graph, float output = logits).
        self.normalized_in_graph = bool(settings.get("normalized_in_graph", False))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelError(f"{self.path}: TensorRT could not deserialize the engine (built by another version?)")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = "input", "output"
        dtype = self.engine.get_tensor_dtype(self.output_name)
        kind = "probs" if settings.get("output_kind") == "probs" else "logits"
        self.output_kind = "labels" if dtype in (trt.int32, trt.int64) else kind
        self._torch_dtype = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int32: torch.int32,
            trt.int64: torch.int64,
        }[dtype]

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device, torch.float32).contiguous()
        self.context.set_input_shape(self.input_name, tuple(pixels.shape))
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=self._torch_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, pixels.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        if self.output_kind == "labels":
            return (out[:, 0] if out.ndim == 4 and out.shape[1] == 1 else out).long()
        return out.float()


def make_backend(
    model: str | os.PathLike[str] | SegFormer,
    backend: str | Backend = "auto",
    device: str = "cpu",
    threads: int | None = None,
    precision: str = "auto",
    compile: bool = False,
    info: ModelInfo | None = None,
) -> Backend:
    """Pick the backend from the file and the device unless told.

    - `.onnx` → onnxruntime; `.engine`/`.plan` → tensorrt;
    - a weights file on a CPU → onnxruntime through the fast path (`infer/fast_path.py`: a lean graph with INT8
      weights, built once and cached), unless `compile` asks for torch or onnxruntime is missing;
    - anything else (a registry name, an in-memory model, a GPU) → torch.

    `precision`: "auto" (int8 on the fast path, fp32 in torch), "fp32", "int8" (the fast path), or "fp16"/"bf16"
    (torch autocast on GPU). A ready backend object (anything with `info`, `output_kind`, `device` and `__call__`)
    is used as it is.
    """
    from peopleseg.infer.fast_path import fast_onnx, fast_path_available, is_weights_source
    from peopleseg.models.weights import load_model

    if not isinstance(backend, str):
        return backend
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    suffix = Path(str(model)).suffix.lower() if not isinstance(model, SegFormer) else ""
    weights = is_weights_source(model)
    if backend == "auto":
        backend = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}.get(suffix, "torch")
        fast = weights and torch.device(device).type == "cpu" and not compile and precision in ("auto", "fp32", "int8")
        if backend == "torch" and fast and fast_path_available():
            backend = "onnxruntime"
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if threads:
        torch.set_num_threads(threads)
    if backend == "onnxruntime":
        if suffix != ".onnx":
            if not weights:
                raise ConfigError(f"the onnxruntime backend runs an .onnx file or a weights file (got '{model}')")
            model = fast_onnx(model, "int8" if precision == "auto" else precision)  # type: ignore[arg-type]
        return OnnxRuntimeBackend(model, device=device, threads=threads, info=info)  # type: ignore[arg-type]
    if precision == "int8":
        raise ConfigError("int8 runs in onnxruntime: use backend 'onnxruntime' (or 'auto') on a CPU")
    if backend == "tensorrt":  # it reads the engine's settings file, and asks for `info` when there is none
        if suffix not in (".engine", ".plan"):
            raise ConfigError(
                f"the tensorrt backend runs a TensorRT engine (.engine or .plan), got '{model}': build one with "
                "`peopleseg export MODEL -o model.onnx --tensorrt model.engine` on the GPU that will run it"
            )
        return TensorRTBackend(model, info=info, device=device if device != "cpu" else "cuda")  # type: ignore[arg-type]
    network = model if isinstance(model, SegFormer) else load_model(model)
    torch_precision = "fp32" if precision == "auto" else precision
    return TorchBackend(network, device=device, precision=torch_precision, compile=compile)
