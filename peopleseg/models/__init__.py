"""SegFormer models: encoders, the all-MLP decoder, the registry and weights I/O."""

from peopleseg.models.info import ModelInfo
from peopleseg.models.registry import REGISTRY, ModelEntry, build_model, list_models
from peopleseg.models.segformer import SegFormer
from peopleseg.models.weights import load_model, load_model_with_report, read_info, save_model

__all__ = [
    "REGISTRY",
    "ModelEntry",
    "ModelInfo",
    "SegFormer",
    "build_model",
    "list_models",
    "load_model",
    "load_model_with_report",
    "read_info",
    "save_model",
]
