"""Teachers named on the command line: `KIND[:ARG][,key=value...]`.

    rvm[:DIR][,ratio=1.0][,max_side=1024]     RVM via Node (DIR holds its node_modules; else PEOPLESEG_RVM_DIR)
    mediapipe[:landscape|general]             MediaPipe selfie segmentation
    onnx:PATH[,resize=letterbox]              any ONNX model peopleseg can run (ours, NVIDIA's)
    peopleseg:PATH_OR_NAME[,device=cuda]      any peopleseg model (self-training)
    …,tta=flip+1.5+sliding                    (onnx, peopleseg) the Segmenter's own views (`infer/tta.py`)

Every kind also takes `weight=W` (its share in an ensemble).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from peopleseg.autolabel.ensemble import EnsembleTeacher, TTATeacher, parse_tta
from peopleseg.autolabel.teacher import Teacher
from peopleseg.errors import ConfigError

KINDS = ("rvm", "mediapipe", "onnx", "peopleseg")


@dataclass(frozen=True)
class TeacherSpec:
    kind: str
    arg: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        kind, _, rest = text.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise ConfigError(f"--teacher {text!r}: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
        arg = None
        options: dict[str, str] = {}
        for part in (p for p in rest.split(",") if p.strip()) if rest else ():
            key, eq, value = part.partition("=")
            if eq:
                options[key.strip()] = value.strip()
            elif arg is None:
                arg = part.strip()
            else:
                raise ConfigError(f"--teacher {text!r}: two positional values ({arg!r} and {part!r})")
        weight = _number(text, options.pop("weight", "1"), "weight")
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"--teacher {text!r}: weight must be a finite number >= 0, got {weight}")
        if kind == "rvm":  # checked here too, so a driver (--ray) refuses it before any worker starts
            _rvm_numbers(text, options)
        if kind in ("onnx", "peopleseg") and not arg:
            raise ConfigError(f"--teacher {text!r}: {kind} needs a model, as {kind}:PATH")
        return cls(kind, arg, options, weight)

    def build(self) -> Teacher:
        options = dict(self.options)
        text = self.kind + (f":{self.arg}" if self.arg else "")
        if self.kind == "rvm":
            from peopleseg.autolabel.rvm import RvmTeacher

            ratio, max_side = _rvm_numbers(text, options)
            for key in ("ratio", "max_side"):
                options.pop(key, None)
            _no_more(text, options)
            return RvmTeacher(self.arg, downsample_ratio=ratio, max_side=max_side)
        if self.kind == "mediapipe":
            from peopleseg.autolabel.mediapipe_teacher import MediaPipeTeacher

            _no_more(text, options)
            return MediaPipeTeacher(self.arg or "landscape")
        from peopleseg.autolabel.segmenter_teacher import SegmenterTeacher

        assert self.arg is not None
        kwargs: dict[str, object] = {}
        for key in ("resize", "device", "backend", "tta"):
            if key in options:
                kwargs[key] = options.pop(key)
        if self.kind == "onnx":
            kwargs["backend"] = "onnxruntime"
        _no_more(text, options)
        return SegmenterTeacher(self.arg, kind=self.kind, **kwargs)


def _number(text: str, value: str, key: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--teacher {text!r}: {key} must be a number, got {value!r}") from None


def _rvm_numbers(text: str, options: dict[str, str]) -> tuple[float, int]:
    ratio = _number(text, options.get("ratio", "1.0"), "ratio")
    max_side = _number(text, options.get("max_side", "1024"), "max_side")
    if not 0.05 <= ratio <= 1.0:  # also false for nan
        raise ConfigError(f"--teacher {text!r}: ratio must be in 0.05..1, got {ratio}")
    if not (math.isfinite(max_side) and max_side >= 32):  # RVM downsamples 32x: anything smaller has no pixels
        raise ConfigError(f"--teacher {text!r}: max_side must be >= 32, got {options.get('max_side')}")
    return ratio, int(max_side)


def _no_more(text: str, options: dict[str, str]) -> None:
    if options:
        raise ConfigError(f"--teacher {text!r}: unknown option {sorted(options)[0]!r}")


def build_teacher(specs: Sequence[str | TeacherSpec], tta: str = "") -> Teacher:
    """One teacher, or a weighted ensemble of several, each optionally under test-time augmentation."""
    parsed = [s if isinstance(s, TeacherSpec) else TeacherSpec.parse(s) for s in specs]
    if not parsed:
        raise ConfigError("autolabel: give at least one --teacher")
    views = parse_tta(tta) if tta else [(False, 1.0)]
    teachers: list[Teacher] = []
    try:
        for spec in parsed:
            factory: Callable[[], Teacher] = spec.build
            teachers.append(TTATeacher(factory, views) if len(views) > 1 else factory())
    except BaseException:
        for teacher in teachers:
            teacher.close()
        raise
    if len(teachers) == 1:
        return teachers[0]
    return EnsembleTeacher(teachers, [s.weight for s in parsed])
