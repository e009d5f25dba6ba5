"""The fast CPU path: a weights file becomes a lean ONNX graph for onnxruntime, built on first use and cached.

On a CPU, the same SegFormer runs about twice as fast in onnxruntime as in eager PyTorch once its graph is lean
(`models/lean.py`: decoder folded, layout rewritten; in INT8 also its stages summed coarse to fine) and its matrix
products take INT8 weights with dynamically quantised activations (onnxruntime's DynamicQuantizeMatMul: no
calibration set needed, so any user's model gets it).
`benchmarks/` and `peopleseg benchmark` measure it against HF transformers and our fp32 model, agreement included.

The graph is built once per weights file (keyed by the file's SHA-256, the recipe and the precision) into
`$PEOPLESEG_CACHE`, else `$XDG_CACHE_HOME/peopleseg`, else `~/.cache/peopleseg`, written atomically. Where no cache
folder is writable, it is built into a temporary folder for this process only.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from peopleseg.atomic import atomic_path
from peopleseg.errors import ConfigError, ModelError

# Bump when the rewrite, the export or the quantisation changes: old cache entries are then never reused.
RECIPE = "lean2-cf12-mha-clhead-dq8pc-casc8"
# Argmax agreement on a random batch below which a build fails: a rewrite or export bug lands far below it.
PARITY_FLOOR = 0.999
FAST_PRECISIONS = ("fp32", "int8")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tlt")

log = logging.getLogger("peopleseg.fast_path")


def cache_dir() -> Path:
    explicit = os.environ.get("PEOPLESEG_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "peopleseg"


def fast_path_available() -> bool:
    """onnxruntime and onnx (to export and quantise) are both importable."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def is_weights_source(model: object) -> bool:
    """A weights file or HF folder the fast path can build from (not an .onnx, an engine or a registry name)."""
    if not isinstance(model, (str, os.PathLike)):
        return False
    path = Path(model)
    if path.is_dir():
        return True
    return path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES


def fast_onnx(weights: str | os.PathLike[str], precision: str = "int8") -> Path:
    """The cached lean ONNX for `weights` at `precision` ("int8": INT8 weights, dynamic activations; "fp32"),
    building it first when it is not cached yet."""
    source = Path(weights)
    key = _digest(source, precision)
    name = f"{source.stem or 'model'}-{key[:16]}-{precision}.onnx"
    for folder in (cache_dir() / "onnx", _process_temp_dir()):
        target = folder / name
        if target.is_file():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".{name}.probe"
            probe.touch()
            probe.unlink()
        except OSError:
            continue  # not writable: try the per-process folder
        build_fast_onnx(source, target, precision)
        return target
    raise ModelError(f"{source}: no writable folder for the fast CPU graph (set PEOPLESEG_CACHE)")


def build_fast_onnx(weights: str | os.PathLike[str], target: str | os.PathLike[str], precision: str = "int8") -> Path:
    """Build the fast-path graph for `weights` into `target` (atomically), without the cache."""
    from peopleseg.export.onnx_export import export_onnx
    from peopleseg.models.weights import load_model

    if precision not in FAST_PRECISIONS:
        raise ConfigError(f"the onnxruntime fast path runs {' or '.join(FAST_PRECISIONS)}, not '{precision}'")
    source = Path(weights)
    model = load_model(source)  # first, so a bad file is named before anything is announced
    log.info("building the fast CPU graph for %s (%s), once: %s", source, precision, target)
    with tempfile.TemporaryDirectory(prefix="peopleseg_fast_") as work:
        fp32 = Path(work) / "fp32.onnx"
        if precision == "fp32":
            # The parity check runs the ONNX against the unrewritten model: a rewrite bug can never reach a user.
            agreement = export_onnx(model, fp32, check=True, slim=False, lean=True).argmax_agreement
        else:
            agreement = _export_cascaded(model, fp32)
        if not agreement >= PARITY_FLOOR:
            raise ModelError(f"{source}: the lean graph disagrees with the model ({agreement:.4%})")
        with atomic_path(target) as temp:
            if precision == "fp32":
                shutil.copyfile(fp32, temp)
            else:
                try:
                    _quantize_weights(fp32, temp)
                except Exception as exc:  # onnxruntime's quantiser raises assorted types
                    first = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
                    raise ModelError(
                        f"{source}: INT8 quantisation of the fast graph failed ({first}); "
                        "use precision 'fp32' or backend 'torch'"
                    ) from None
    return Path(target)


def _export_cascaded(model: Any, path: Path) -> float:
    """Export the lean graph with the decoder's coarse-to-fine sum, which INT8 runs (`models/lean.py`: faster, and
    close to the model but not equal). Returns the lower of two argmax agreements on random batches: of the ONNX
    with the same network in torch (the export is faithful), and of the exact rewrite with the model (the rewrite
    is right). The sum itself is measured in the tests and the model card, on real images."""
    import torch

    from peopleseg.export.onnx_export import check_onnx_parity, export_onnx
    from peopleseg.models.lean import lean_network

    export_onnx(model, path, check=False, slim=False, lean=True, cascade_upsampling=True)
    _, exported = check_onnx_parity(lean_network(model, cascade_upsampling=True), path)
    pixels = torch.randn(2, 3, *model.info.input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        rewritten = (lean_network(model)(pixels).argmax(1) == model.eval()(pixels).argmax(1)).float().mean()
    return min(exported, float(rewritten))


def _quantize_weights(source: Path, target: Path) -> None:
    """INT8 per-channel weights for MatMul/Gemm; activations quantised on the fly (DynamicQuantizeMatMul)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # its "run pre-processing" advice
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    finally:
        logging.getLogger().disabled = was
    graph = onnx.load(str(target))
    del graph.metadata_props[:]
    meta.update(precision="int8", quantization="dynamic: int8 per-channel weights, uint8 activations")
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(target))


def _digest(source: Path, precision: str) -> str:
    digest = hashlib.sha256(f"{RECIPE}|{precision}|".encode())
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for path in files:
        if source.is_dir():
            digest.update(str(path.relative_to(source)).encode())
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


_TEMP_DIR: Path | None = None


def _process_temp_dir() -> Path:
    global _TEMP_DIR
    if _TEMP_DIR is None:
        _TEMP_DIR = Path(tempfile.mkdtemp(prefix="peopleseg_cache_"))
        atexit.register(shutil.rmtree, _TEMP_DIR, ignore_errors=True)
    return _TEMP_DIR
