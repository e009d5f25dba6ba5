"""The training recipe as typed sections. Defaults follow the SegFormer/TAO recipe (mmseg's segformer configs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    sync_bn: bool = True  # converted to SyncBatchNorm only when more than one process trains
    seed: int = 0
    deterministic: bool = False


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)
