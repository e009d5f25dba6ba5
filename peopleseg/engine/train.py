"""`peopleseg train`: Lightning from one CPU to many GPUs and nodes, with atomic checkpoints and exact resume.

The same command runs everywhere: `devices`/`num_nodes`/`strategy` go to Lightning, which reads torchrun's and
SLURM's environment for multi-node jobs. BatchNorm becomes SyncBatchNorm only when more than one process trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from peopleseg.atomic import atomic_path
from peopleseg.config import save_config
from peopleseg.engine.module import ResumePosition, SegFormerModule
from peopleseg.engine.train_config import SplitSection, TrainConfig
from peopleseg.errors import ConfigError, DataError
from peopleseg.models.info import ModelInfo
from peopleseg.models.registry import build_model
from peopleseg.models.segformer import SegFormer
from peopleseg.models.weights import first_non_finite, load_model_with_report, save_model
from peopleseg.resize_policy import single_input_policy

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    out_dir: Path
    steps: int
    best_miou: float | None
    last_weights: Path
    best_weights: Path | None


# --- model --------------------------------------------------------------------------------------------------------


def build_training_model(config: TrainConfig) -> SegFormer:
    config.validate()
    # Loaded weights come back in eval mode (ready for inference); training needs drop-path and batch-norm
    # statistics on, and Lightning keeps whatever mode the modules start in.
    return _build_training_model(config).train()


def _build_training_model(config: TrainConfig) -> SegFormer:
    section = config.model
    options: dict[str, Any] = {}
    if section.drop_path_rate is not None:
        options["drop_path_rate"] = section.drop_path_rate
    if section.init in ("random", "default"):
        if section.init == "default":
            from peopleseg.assets import default_weights_path

            weights = default_weights_path()
            if weights is None:
                raise ConfigError("model.init: 'default' asks for the bundled model, but this version bundles none")
            return _from_weights(str(weights), config)
        info = _info_for(section.arch, config, ModelInfo(arch=section.arch))
        return build_model(section.arch, info=info, **options)
    return _from_weights(section.init, config)


def _from_weights(path: str, config: TrainConfig) -> SegFormer:
    section = config.model
    # An ImageNet encoder file may lack a few tensors only the segmentation encoder has: those start fresh, and
    # load_model_with_report warns, naming them.
    model, _ = load_model_with_report(path, backbone_only=section.backbone_only, strict=not section.backbone_only)
    if model.info.arch != section.arch:
        raise ConfigError(f"model.init: {path} holds a {model.info.arch}, but model.arch is {section.arch}")
    info = _info_for(section.arch, config, model.info)
    # The file's architecture options, with the config's drop-path rate (a training-time setting) on top.
    options = dict(model.info.arch_options)
    if section.drop_path_rate is not None:
        options["drop_path_rate"] = section.drop_path_rate
    if info.classes != model.info.classes or section.backbone_only:
        # A new class list, renamed or reordered too (the head's outputs mean its classes): keep the encoder only.
        fresh = build_model(section.arch, info=info, **options)
        fresh.backbone.load_state_dict(model.backbone.state_dict())
        return fresh
    if options != model.info.arch_options:
        fresh = build_model(section.arch, info=info, **options)
        fresh.load_state_dict(model.state_dict())
        return fresh
    model.info = info
    return model


def _info_for(arch: str, config: TrainConfig, base: ModelInfo) -> ModelInfo:
    section = config.model
    info = dataclasses.replace(base, arch=arch, classes=list(section.classes), input_size=tuple(section.input_size))
    if section.mean is not None:
        info.mean = tuple(section.mean)  # type: ignore[assignment]
    if section.std is not None:
        info.std = tuple(section.std)  # type: ignore[assignment]
    info.resize = section.resize  # one of BATCHABLE (TrainConfig.validate)
    return ModelInfo.from_dict(info.to_dict(), source="model config")


# --- data ---------------------------------------------------------------------------------------------------------


class EpochSampler(Sampler[int]):
    """A seeded shuffle per epoch, split across ranks (padded by wrapping, fine for training), that can skip the
    samples a resumed run has already trained on in this epoch. It yields draw ids `epoch * size + index`, which
    `SeededDraws` turns back into the index and a per-draw augmentation seed."""

    def __init__(self, size: int, seed: int, batch_size: int, resume: ResumePosition, shuffle: bool = True) -> None:
        self.size, self.seed, self.batch_size, self.resume, self.shuffle = size, seed, batch_size, resume, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return math.ceil(self.size / self._rank()[1])

    def __iter__(self) -> Iterator[int]:
        rank, world = self._rank()
        skip = 0
        if self.resume.pending:
            # The first pass after a resume places itself from the checkpoint, not from set_epoch: with worker
            # processes, Lightning starts the resumed epoch's iterator before it sets the sampler's epoch. Only the
            # interrupted epoch is shortened; a checkpoint from an epoch's last batch resumes into the next, whole.
            self.resume.pending = False
            if self.resume.skip_batches >= len(self) // self.batch_size:
                self.epoch = self.resume.epoch + 1
            else:
                self.epoch = self.resume.epoch
                skip = self.resume.skip_batches * self.batch_size
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist() if self.shuffle else list(range(self.size))
        per_rank = len(self)
        order = (order * (per_rank * world // max(len(order), 1) + 1))[: per_rank * world]
        mine = [self.epoch * self.size + index for index in order[rank::world]]
        return iter(mine[skip:])


class SeededDraws(Dataset):
    """Map-style training data whose augmentation randomness is a function of (seed, draw id) alone: the same
    epoch and index give the same crop and flip in any worker and after any resume. With `copy_paste` > 0 (and a
    dataset that can `load` raw samples) a person from another random sample is pasted in first, as seeded."""

    def __init__(self, dataset: Dataset, seed: int, copy_paste: float = 0.0, person_id: int = 1) -> None:
        self.dataset, self.seed, self.copy_paste, self.person_id = dataset, seed, copy_paste, person_id

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, draw: int) -> Any:
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "seed_sample"):
            transform.seed_sample((self.seed, draw))  # type: ignore[union-attr]
        index = draw % len(self)
        if self.copy_paste and hasattr(self.dataset, "load"):
            rng = np.random.default_rng((self.seed, draw, 1))
            if rng.random() < self.copy_paste:
                return self._pasted(index, rng, transform)
        return self.dataset[index]

    def _pasted(self, index: int, rng: np.random.Generator, transform: Any) -> Any:
        from peopleseg.data.copy_paste import paste_person
        from peopleseg.data.folder import apply_transform

        try:
            sample = self.dataset.load(index)  # type: ignore[attr-defined]
        except DataError:
            return self.dataset[index]  # the dataset's own skip_bad policy decides
        try:
            donor = self.dataset.load(int(rng.integers(len(self))))  # type: ignore[attr-defined]
        except DataError as exc:
            if not getattr(self.dataset, "skip_bad", False):
                raise  # a bad file is an error that names it, donor or not
            self.dataset.skipped += 1  # type: ignore[attr-defined]
            log.warning("skipping a bad copy-paste donor: %s", exc)
            return apply_transform(transform, sample)
        return apply_transform(transform, paste_person(sample, donor, rng, person_id=self.person_id))


class ShardSampler(Sampler[int]):
    """Validation indices split across ranks without padding, so no image is counted twice (the metrics' sums
    across ranks then cover each image exactly once; DistributedSampler would pad with duplicates)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def _indices(self) -> range:
        from peopleseg.engine.evaluate import shard_indices

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return shard_indices(self.size, torch.distributed.get_rank(), torch.distributed.get_world_size())
        return range(self.size)

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())


class _EveryRankValidates(pl.Callback):
    """Refuses, on every rank alike, a validation set smaller than the number of processes: a rank with no image
    would skip validation while the others wait for it in the metrics' sum, for ever."""

    def __init__(self, images: int) -> None:
        self.images = images

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.world_size > self.images:
            raise ConfigError(
                f"data.val: {self.images} image(s) for {trainer.world_size} training processes; each needs one or more"
            )


def make_dataset(split: SplitSection, config: TrainConfig, transform: Any, train: bool) -> Dataset:
    from peopleseg.data.check import looks_like_0_255
    from peopleseg.data.folder import SegmentationFolder
    from peopleseg.data.masks import Palette

    data = config.data
    if split.shards:
        from peopleseg.data.shards import ShardDataset

        shards = ShardDataset(
            split.shards,
            shuffle_buffer=data.shuffle_buffer if train else 0,
            transform=transform,
            seed=config.train.seed,
            resampled=train,
            num_classes=len(config.model.classes),
        )
        if shards.class_count > len(config.model.classes):
            raise ConfigError(
                f"data.{'train' if train else 'val'}.shards: packed with {shards.class_count} classes, but "
                f"model.classes has {len(config.model.classes)}"
            )
        return shards
    if not split.images:
        raise ConfigError(f"data.{'train' if train else 'val'}: give 'images' (and 'masks' or 'coco') or 'shards'")
    if split.coco:
        from peopleseg.data.coco import CocoPersonDataset

        if config.model.classes != ["background", "person"]:
            raise ConfigError("data: COCO annotations give background/person masks; set model.classes to those")
        return CocoPersonDataset(split.coco, split.images, transform=transform)
    folder = SegmentationFolder(
        split.images,
        split.masks,
        list_file=split.list_file,
        subsets_csv=split.subsets_csv,
        subset_from_subfolder=split.subset_from_subfolder,
        palette=Palette.from_config(data.palette) if data.palette else None,
        num_classes=len(config.model.classes),
        binary_255=data.binary_255,
        transform=transform,
        skip_bad=data.skip_bad,
    )
    masks = [s.mask for s in folder.samples if s.mask is not None]
    if not data.binary_255 and not data.palette and looks_like_0_255(masks):
        raise DataError(
            f"data.{'train' if train else 'val'}.masks {split.masks}: the masks sampled hold only 0 and 255, so every "
            "person would be ignored; for 0/255 person masks set data.binary_255: true (--binary-255 elsewhere)"
        )
    return folder


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([torch.as_tensor(s["image"]) for s in samples]),
        "mask": torch.stack([torch.as_tensor(s["mask"]).long() for s in samples]),
        "path": [s["path"] for s in samples],
        "subset": [s["subset"] for s in samples],
    }


def _single_threaded_worker(worker_id: int) -> None:
    """Each loader worker augments one sample at a time: OpenCV's own thread pool in every one of them would put
    workers x cores threads on the cores (PyTorch already gives each worker one torch thread).

    A forked worker inherits one thread from `_opencv_single_threaded` and must not set it again: setNumThreads in
    a child forked after the parent's pool has run waits for ever on that pool's lock. A spawned worker sets it."""
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


@contextlib.contextmanager
def _opencv_single_threaded(workers: int) -> Iterator[None]:
    """OpenCV at one thread in this process while loader workers are forked from it (see _single_threaded_worker);
    the caller's setting comes back afterwards. The main process augments nothing itself when there are workers."""
    if workers == 0:
        yield
        return
    import cv2

    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def _person_id(config: TrainConfig) -> int:
    """The label id copy-paste cuts people out by (`TrainConfig.validate` requires the class when it is on)."""
    classes = config.model.classes
    return classes.index("person") if "person" in classes else 1


def make_loaders(config: TrainConfig, info: ModelInfo, resume: ResumePosition) -> tuple[DataLoader, DataLoader | None]:
    from peopleseg.data.transforms import AugmentConfig, eval_transform, train_transform

    augment = AugmentConfig(**dataclasses.asdict(config.data.augment))
    train_set = make_dataset(config.data.train, config, train_transform(augment, info.mean, info.std), train=True)
    if isinstance(train_set, IterableDataset):
        train_set.stream_position = resume  # type: ignore[attr-defined]
    workers = config.data.workers
    common = {
        "num_workers": workers,
        "collate_fn": _collate,
        "persistent_workers": workers > 0,
        "pin_memory": False,
        "worker_init_fn": _single_threaded_worker,
    }
    if isinstance(train_set, IterableDataset):
        train_loader = DataLoader(train_set, batch_size=config.train.batch_size, **common)
    else:
        if len(train_set) < config.train.batch_size:  # type: ignore[arg-type]
            raise DataError(f"data.train: {len(train_set)} images, fewer than one batch of {config.train.batch_size}")  # type: ignore[arg-type]
        sampler = EpochSampler(len(train_set), config.train.seed, config.train.batch_size, resume)  # type: ignore[arg-type]
        train_loader = DataLoader(
            SeededDraws(train_set, config.train.seed, augment.copy_paste, _person_id(config)),
            batch_size=config.train.batch_size,
            sampler=sampler,
            drop_last=True,
            # Each epoch's iterator draws its workers' base seed from this generator, not torch's global one:
            # resumed at an epoch boundary, the global RNG (drop-path) would otherwise be one draw behind.
            generator=torch.Generator().manual_seed(config.train.seed),
            **common,
        )
    val_loader = None
    if config.data.val is not None:
        # Validate as the model will be used; a sliding-window model stretched (its windows cannot batch).
        validation = eval_transform(info.input_size, info.mean, info.std, single_input_policy(info.resize))
        val_set = make_dataset(config.data.val, config, validation, False)
        sampler = None if isinstance(val_set, IterableDataset) else ShardSampler(len(val_set))  # type: ignore[arg-type]
        # Its own generator too: validating must not move the global RNG that training's drop-path draws from.
        generator = torch.Generator().manual_seed(config.train.seed)
        val_loader = DataLoader(
            val_set, batch_size=config.train.batch_size, sampler=sampler, generator=generator, **common
        )
    return train_loader, val_loader


# --- trainer ------------------------------------------------------------------------------------------------------


def _precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _checkpoint_io() -> Any:
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """torch.save into a temp file beside the target, then rename: a kill never leaves half a checkpoint."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            from peopleseg.engine.module import TrainingDiverged

            if first_non_finite(checkpoint.get("state_dict", {})) is not None:
                # The checkpoint already there keeps the last finite weights: a resume (with a lower lr) starts there.
                raise TrainingDiverged(
                    f"train: the weights are not finite (NaN or inf) at step {checkpoint.get('global_step')}; "
                    f"{path} keeps the last finite ones: lower optim.lr or check the data"
                )
            with atomic_path(path) as temp:
                torch.save(checkpoint, temp)

    return AtomicCheckpointIO()


def _last_checkpoint(checkpoint_dir: Path, every: int) -> Any:
    from lightning.pytorch.callbacks import ModelCheckpoint

    class LastCheckpoint(ModelCheckpoint):
        """`last.ckpt` every `every` steps and at the final step, whatever `every` is: a finished run resumes
        (to train longer) from where it ended, not from the last multiple of `every`.

        When a validation follows the same batch, the checkpoint waits for it: written before, it would hold a stale
        best score and a resume would skip that validation (a kill during it resumes from the checkpoint before)."""

        deferred = False

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self._validates_after_this_batch(trainer) and self._due(trainer):
                self.deferred = True
                return
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
            # max_steps may have been lowered by a time budget (time_budget.FitStepsToTime) earlier in this step:
            # Lightning runs checkpoint callbacks after all others.
            if trainer.global_step >= trainer.max_steps and not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            super().on_validation_end(trainer, module)
            if self.deferred and not trainer.sanity_checking:
                self.deferred = False
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

        def _due(self, trainer: Any) -> bool:
            return trainer.global_step % every == 0 or trainer.global_step >= trainer.max_steps

        @staticmethod
        def _validates_after_this_batch(trainer: Any) -> bool:
            # As Lightning decides with check_val_every_n_epoch=None and a batch interval (our Trainer's settings).
            interval = trainer.val_check_batch
            if not trainer.enable_validation or interval is None or interval == float("inf"):
                return False
            return (trainer.fit_loop.total_batch_idx + 1) % int(interval) == 0

        @property
        def state_key(self) -> str:
            # Lightning files a callback's state under its class name: keep ModelCheckpoint's, so that checkpoints
            # written before this class existed resume into it (and it keeps writing last.ckpt, not last-v1.ckpt).
            return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    return LastCheckpoint(
        dirpath=checkpoint_dir,
        filename="step{step}",
        every_n_train_steps=every,
        save_top_k=0,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # one last.ckpt, replaced atomically (_checkpoint_io)
    )


def _weights_callback(out_dir: Path) -> Any:

    class ExportWeights(pl.Callback):
        """Keep `best.safetensors` and `last.safetensors` (our format, ready for `peopleseg infer -m`) up to date."""

        def __init__(self) -> None:
            self.best: float | None = None
            self.validated_at: int | None = None  # the step of the last validation, kept in checkpoints

        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            self.validated_at = trainer.global_step
            score = trainer.callback_metrics.get("val/miou")
            if score is not None and (self.best is None or float(score) > self.best):
                self.best = float(score)
                save_model(module.model, out_dir / "best.safetensors")

        def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            if trainer.is_global_zero:
                save_model(module.model, out_dir / "last.safetensors")

        def state_dict(self) -> dict[str, Any]:
            return {"best": self.best, "validated_at": self.validated_at}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            self.best = state.get("best")
            self.validated_at = state.get("validated_at")

    return ExportWeights()


# What a resume may change: how long and how often, and the hardware (a resume on other hardware continues the
# run, though not bit for bit). Anything else would make the checkpoint's run a different one.
RESUMABLE_CHANGES = (
    "train.max_steps",
    "train.max_minutes",
    "train.val_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.out_dir",
    "train.precision",
    "train.accelerator",
    "train.devices",
    "train.num_nodes",
    "train.strategy",
    "data.workers",
)
RUN_FILES = ("checkpoints", "best.safetensors", "best.json", "last.safetensors", "last.json")


def train(
    config: TrainConfig, resume: bool | str = False, progress: bool = True, overwrite: bool = False
) -> TrainSummary:
    """Train with `config`. `resume=True` continues `<out_dir>/checkpoints/last.ckpt`; a path resumes that file.

    A new run into a folder that holds one is refused unless `overwrite` (which deletes its checkpoints and weights
    first); a resume is refused when the config differs from the checkpoint's beyond `RESUMABLE_CHANGES`. Nothing
    is written before the config, the data and Lightning's settings have been checked."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from peopleseg.engine.time_budget import check_budget

    config.validate()
    check_budget(config.train.max_minutes)
    _quiet_lightning()
    out_dir = Path(config.train.out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    ckpt_path = None
    if resume:
        ckpt_path = Path(resume) if isinstance(resume, str) else checkpoint_dir / "last.ckpt"
        if not ckpt_path.is_file():
            raise ConfigError(f"--resume: no checkpoint at {ckpt_path}")
        _check_resume(ckpt_path, config)
    elif (checkpoint_dir / "last.ckpt").exists() and not overwrite:
        raise ConfigError(
            f"train.out_dir {out_dir}: holds a run already; --resume continues it, --overwrite replaces it, or "
            "choose another train.out_dir"
        )
    pl.seed_everything(config.train.seed, workers=True, verbose=False)

    model = build_training_model(config)
    resume_position = ResumePosition()
    module = SegFormerModule(config, model, resume_position)
    train_loader, val_loader = make_loaders(config, model.info, resume_position)

    callbacks: list[Any] = [LearningRateMonitor(logging_interval="step"), _weights_callback(out_dir)]
    if val_loader is not None:
        if isinstance(val_loader.sampler, ShardSampler):
            callbacks.append(_EveryRankValidates(val_loader.sampler.size))
        callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir,
                filename="best",
                monitor="val/miou",
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    # After the best-model checkpoint: a checkpoint written after a validation then holds that validation's best.
    callbacks.append(_last_checkpoint(checkpoint_dir, config.train.checkpoint_every))
    if config.train.max_minutes is not None:
        from peopleseg.engine.time_budget import FitStepsToTime

        val_steps = config.train.val_every // config.train.accumulate if val_loader is not None else None
        # Each worker holds up to 2 batches (DataLoader's prefetch_factor) ready before the first step.
        prefetched = 2 * config.data.workers // config.train.accumulate
        callbacks.append(FitStepsToTime(config.train.max_minutes, config.train.max_steps, val_steps, prefetched))
    if progress:
        callbacks.append(_progress_bar())
    interrupted = _Interrupted()
    callbacks.append(interrupted)
    # SyncBatchNorm runs on GPUs only (on CPU it raises). Every rank decides the same way from the config and the
    # machine, never from its own view of the world size: ranks that disagreed would build different models.
    accelerator = config.train.accelerator
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    trainer = _trainer(
        default_root_dir=out_dir,
        max_steps=config.train.max_steps,
        max_epochs=-1,
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        num_nodes=config.train.num_nodes,
        strategy=config.train.strategy,
        precision=_precision(config.train.precision),  # type: ignore[arg-type]
        accumulate_grad_batches=config.train.accumulate,
        gradient_clip_val=config.optim.grad_clip,
        # An interval longer than an epoch is fine: with check_val_every_n_epoch=None it counts batches across epochs.
        val_check_interval=config.train.val_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=config.train.log_every,
        sync_batchnorm=config.train.sync_bn and on_gpu,  # Lightning applies it only when several processes train
        use_distributed_sampler=False,  # our sampler splits by rank and resumes mid-epoch
        deterministic=config.train.deterministic,
        # One numbered folder per attempt (logs/version_0, version_1 after a resume …): nothing is overwritten.
        logger=[CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")],
        callbacks=callbacks,
        plugins=[_checkpoint_io()],
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    # Everything is checked: only now is the folder touched.
    out_dir.mkdir(parents=True, exist_ok=True)
    if first_process():  # the others would race it: a rank deleting the temp file another rank is writing
        if overwrite and not resume:
            _remove_run(out_dir)
        for stale in [*checkpoint_dir.glob(".*.tmp"), *out_dir.glob(".*.tmp")]:
            stale.unlink(missing_ok=True)  # a save cut short by a kill: its target was never replaced
        save_config(config, out_dir / "config.yaml")
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        with _opencv_single_threaded(config.data.workers):
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SystemExit:
        if interrupted.step is None:
            raise
        # Lightning turns Ctrl-C into a silent exit(1) after its shutdown; say where the run stands instead.
        raise KeyboardInterrupt(
            f"training interrupted at step {interrupted.step}; --resume continues from {checkpoint_dir / 'last.ckpt'} "
            f"(written every {config.train.checkpoint_every} steps)"
        ) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous_handler)  # Lightning ignores SIGINT once interrupted
    best = next((c.best_model_score for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    best_weights = out_dir / "best.safetensors"
    return TrainSummary(
        out_dir=out_dir,
        steps=trainer.global_step,
        best_miou=float(best) if best is not None else None,
        last_weights=out_dir / "last.safetensors",
        best_weights=best_weights if best_weights.exists() else None,
    )


def _progress_bar() -> pl.Callback:
    from lightning.pytorch.callbacks import RichProgressBar

    class StepsProgressBar(RichProgressBar):
        """Lightning's bar, titled by the epoch alone: the run is bounded by steps (max_epochs is -1, which Lightning
        would print as "Epoch 4/-2")."""

        def _get_train_description(self, current_epoch: int) -> str:
            return f"epoch {current_epoch}, to step {self.trainer.max_steps}"

    return StepsProgressBar()


class _Interrupted(pl.Callback):
    """Remembers the step a Ctrl-C stopped the run at."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.step = trainer.global_step


def _trainer(**settings: Any) -> pl.Trainer:
    """Lightning's Trainer; settings it refuses (a device that is not there, a strategy it does not know) are a
    one-line ConfigError, before anything is written."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.strategies import StrategyRegistry

    strategy = settings["strategy"]
    if strategy != "auto" and strategy not in StrategyRegistry:
        known = ", ".join(sorted(StrategyRegistry))
        raise ConfigError(f"train.strategy: '{strategy}' is not a Lightning strategy; choose auto or one of {known}")
    try:
        return pl.Trainer(**settings)
    except (MisconfigurationException, ValueError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ConfigError(
            f"train: Lightning refused accelerator={settings['accelerator']!r}, devices={settings['devices']!r}, "
            f"strategy={strategy!r}, precision={settings['precision']!r}: {first}"
        ) from None


def _check_resume(path: Path, config: TrainConfig) -> None:
    """A one-line ConfigError unless `path` is a peopleseg training checkpoint of this run (see RESUMABLE_CHANGES)."""
    from peopleseg.config import to_dict

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds for a file that is no checkpoint
        raise ConfigError(f"--resume {path}: not a readable training checkpoint ({exc.__class__.__name__})") from None
    saved = checkpoint.get("peopleseg", {}).get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        raise ConfigError(
            f"--resume {path}: not a peopleseg training checkpoint (a weights file starts a new run as model.init)"
        )
    before, now = _flat(saved), _flat(to_dict(config))
    changed = [key for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
    changed = [key for key in changed if key not in RESUMABLE_CHANGES]
    if changed:
        shown = "; ".join(f"{key} {before.get(key)!r} -> {now.get(key)!r}" for key in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(
            f"--resume {path}: the config differs from the checkpoint's run ({shown}{more}); resume with its config, "
            "or start a new run from its weights with model.init=<out_dir>/last.safetensors"
        )


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): list(data) if isinstance(data, tuple) else data}


def _remove_run(out_dir: Path) -> None:
    """Before an overwrite: the old run's checkpoints and weights (its logs stay, in their numbered folders)."""
    import shutil

    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def first_process() -> bool:
    """Whether this is a run's first process, known before the process group exists: torchrun and SLURM set a
    global rank; Lightning's own launcher starts the other local ranks with LOCAL_RANK (and NODE_RANK per node)."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name]) == 0
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in ("NODE_RANK", "LOCAL_RANK"))


def _quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (accelerator lines, logger tips) and warnings we handle ourselves out of
    the user's terminal; real problems still come through as warnings and errors."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Our sampler resumes mid-epoch itself (it skips the batches already trained on).
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty")
    # Validation metrics are summed across ranks by our own metric objects before they are logged.
    warnings.filterwarnings("ignore", message=r".*self\.log\('val/.*sync_dist=True")
    # train.log_every is the user's to set; a short epoch does not make it wrong.
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")
