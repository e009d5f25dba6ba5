"""peopleseg: find every person in images and video, pixel by pixel (an open SegFormer / PeopleSemSegFormer)."""

from peopleseg.errors import ConfigError, DataError, ModelError, PeoplesegError
from peopleseg.infer.segmenter import Segmenter
from peopleseg.models import ModelInfo, SegFormer, build_model, list_models, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "ModelError",
    "ModelInfo",
    "PeoplesegError",
    "SegFormer",
    "Segmenter",
    "__version__",
    "build_model",
    "list_models",
    "load_model",
    "save_model",
]
