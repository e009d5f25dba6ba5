"""Inference: the Segmenter (preprocess, model, postprocess)."""

from peopleseg.infer.segmenter import Segmenter

__all__ = ["Segmenter"]
