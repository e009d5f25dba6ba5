"""The training recipe as typed sections. Defaults follow the SegFormer/TAO recipe (mmseg's segformer configs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peopleseg.resize_policy import BATCHABLE


@dataclass
class ModelSection:
    arch: str = "segformer_b0"
    classes: list[str] = field(default_factory=lambda: ["background", "person"])
    # Where the starting weights come from: "random", "default" (the bundled model) or a weights path (ours,
    # HF, NVlabs/mmseg, TAO). `backbone_only` takes just the encoder from that file (e.g. an ImageNet MiT).
    init: str = "random"
    backbone_only: bool = False
    input_size: tuple[int, int] = (512, 512)
    # 0-255 scale; None keeps the architecture's default (ImageNet statistics) or the init file's own.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # How images meet the network in validation and, saved with the weights, at inference: "letterbox" (the
    # training crops keep each image's aspect ratio, so the model learns unstretched people) or "resize" (stretch,
    # as TAO trains).
    resize: str = "letterbox"
    drop_path_rate: float | None = None


@dataclass
class SplitSection:
    """One split: a folder pair (images + masks), COCO annotations (`coco` JSON + `images`), or WebDataset shards
    (`shards: "data/shard-{000000..000009}.tar"`)."""

    images: str | None = None
    masks: str | None = None
    coco: str | None = None
    list_file: str | None = None
    subsets_csv: str | None = None
    subset_from_subfolder: bool = False
    shards: str | None = None


@dataclass
class AugmentSection:
    crop_size: tuple[int, int] = (512, 512)
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    photometric: bool = True
    degrade: float = 0.0  # probability of each of blur, noise and JPEG artefacts
    copy_paste: float = 0.0  # probability of pasting a person cut out of another training image


@dataclass
class DataSection:
    train: SplitSection = field(default_factory=SplitSection)
    val: SplitSection | None = None
    # TAO-style palette: [{seg_class: person, label_id: 1, rgb: [255, 0, 0]}, …] for colour masks.
    palette: list[dict[str, Any]] | None = None
    binary_255: bool = False  # masks stored as 0/255 (255 = person) instead of label ids
    skip_bad: bool = False
    workers: int = 2
    augment: AugmentSection = field(default_factory=AugmentSection)
    shuffle_buffer: int = 1000


@dataclass
class OptimSection:
    lr: float = 6e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    head_lr_mult: float = 10.0
    warmup_steps: int = 1500
    warmup_ratio: float = 1e-6  # the learning rate starts at lr * warmup_ratio
    poly_power: float = 1.0
    min_lr: float = 0.0
    grad_clip: float | None = None


@dataclass
class LossSection:
    ignore_index: int = 255
    class_weights: list[float] | None = None
    dice_weight: float = 0.0


# Lightning's names; "auto" picks bf16-mixed where the GPU has bf16, else 32-true.
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "64-true", "64", "transformer-engine")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


@dataclass
class TrainSection:
    out_dir: str = "runs/segformer"
    max_steps: int = 160_000
    # Train for about this many minutes: after a short probe the step count (and so the lr decay) is fitted to the
    # measured speed, with max_steps as the ceiling (peopleseg.engine.time_budget). None: run max_steps.
    max_minutes: float | None = None
    batch_size: int = 8
    accumulate: int = 1
    val_every: int = 4000  # training batches between validations
    checkpoint_every: int = 1000  # training batches between `last.ckpt` saves
    log_every: int = 50
    precision: str = "auto"  # auto: bf16-mixed where the GPU has bf16, else 32-true
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    sync_bn: bool = True  # converted to SyncBatchNorm when several GPU processes train (it cannot run on CPU)
    seed: int = 0
    deterministic: bool = False


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field out of range, before a run writes or builds anything (torch,
        the DataLoader or Lightning would otherwise fail later, with their own words, or not at all)."""
        model, data, augment, optim, loss, train = (
            self.model,
            self.data,
            self.data.augment,
            self.optim,
            self.loss,
            self.train,
        )
        if len(model.classes) < 2 or len(set(model.classes)) != len(model.classes) or not all(model.classes):
            _bad("model.classes", "at least two distinct, non-empty names", model.classes)
        if model.resize not in BATCHABLE:  # validation batches its images: sliding windows cannot
            _bad("model.resize", f"one of {', '.join(BATCHABLE)}", model.resize)
        if model.drop_path_rate is not None:
            _check("model.drop_path_rate", model.drop_path_rate, 0, 1, high_open=True)
        _check("data.workers", data.workers, 0, integer=True)
        _check("data.shuffle_buffer", data.shuffle_buffer, 0, integer=True)
        for index, side in enumerate(augment.crop_size):
            _check(f"data.augment.crop_size[{index}]", side, 1, integer=True)
        low, high = augment.scale_range
        if not 0 < low <= high:
            _bad("data.augment.scale_range", "0 < low <= high", list(augment.scale_range))
        _check("data.augment.cat_max_ratio", augment.cat_max_ratio, 0, 1, low_open=True)
        for name in ("hflip", "degrade", "copy_paste"):
            _check(f"data.augment.{name}", getattr(augment, name), 0, 1)
        if augment.copy_paste > 0 and "person" not in model.classes:
            _bad(
                "data.augment.copy_paste", "0 unless model.classes names a 'person' class to paste", augment.copy_paste
            )
        _check("optim.lr", optim.lr, 0, low_open=True)
        _check("optim.weight_decay", optim.weight_decay, 0)
        for index, beta in enumerate(optim.betas):
            _check(f"optim.betas[{index}]", beta, 0, 1, high_open=True)
        _check("optim.head_lr_mult", optim.head_lr_mult, 0, low_open=True)
        _check("optim.warmup_steps", optim.warmup_steps, 0, integer=True)
        _check("optim.warmup_ratio", optim.warmup_ratio, 0, 1)  # 0: the warm-up starts from lr 0
        _check("optim.poly_power", optim.poly_power, 0)
        _check("optim.min_lr", optim.min_lr, 0)
        if optim.grad_clip is not None:
            _check("optim.grad_clip", optim.grad_clip, 0, low_open=True)
        if loss.ignore_index != 255:
            # Masks, crop padding and resizing all mark ignored pixels 255; another value would reach the loss
            # as an out-of-range class.
            _bad("loss.ignore_index", "255 (the value masks and padding use for ignored pixels)", loss.ignore_index)
        if loss.class_weights is not None:
            if len(loss.class_weights) != len(model.classes):
                _bad("loss.class_weights", f"one weight per class ({len(model.classes)})", loss.class_weights)
            for index, weight in enumerate(loss.class_weights):
                _check(f"loss.class_weights[{index}]", weight, 0)
        _check("loss.dice_weight", loss.dice_weight, 0)
        _check("train.seed", train.seed, 0, integer=True)
        if train.precision not in PRECISIONS:
            _bad("train.precision", f"one of {', '.join(PRECISIONS)}", train.precision)
        if train.accelerator not in ACCELERATORS:
            _bad("train.accelerator", f"one of {', '.join(ACCELERATORS)}", train.accelerator)
        devices = train.devices
        if not (
            devices == "auto"
            or (isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1))
            or (isinstance(devices, list) and devices and all(isinstance(d, int) and d >= 0 for d in devices))
        ):
            _bad("train.devices", "'auto', a count >= 1, -1 (all) or a list of device ids", devices)
        if not isinstance(train.strategy, str) or not train.strategy:
            _bad("train.strategy", "a Lightning strategy name such as auto, ddp or fsdp", train.strategy)
        for name in (
            "max_steps",
            "batch_size",
            "accumulate",
            "val_every",
            "checkpoint_every",
            "log_every",
            "num_nodes",
        ):
            _check(f"train.{name}", getattr(train, name), 1, integer=True)


def _check(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    kind = "an integer" if integer else "a number"
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    # bools are ints to Python; NaN and infinity are no setting (an infinite lr trains a model of NaNs)
    if isinstance(value, bool) or not number or value != value or value in (float("inf"), float("-inf")):
        _bad(name, f"a finite {kind.removeprefix('a ').removeprefix('an ')}" if number else kind, value)
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lower = f"> {low:g}" if low_open else f">= {low:g}"
        upper = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
        _bad(name, f"{kind} {lower}{upper}", value)


def _bad(name: str, expected: str, value: Any) -> None:
    from peopleseg.errors import ConfigError

    raise ConfigError(f"{name}: must be {expected}, got {value!r}")
