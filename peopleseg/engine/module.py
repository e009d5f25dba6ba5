"""The LightningModule: a SegFormer, its loss, its optimiser recipe and validation mIoU."""

from __future__ import annotations

import random
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F

from peopleseg.config import to_dict
from peopleseg.engine.losses import segmentation_loss
from peopleseg.engine.metrics import SegmentationMetrics
from peopleseg.engine.optim import build_optimizer, lr_factor
from peopleseg.engine.train_config import TrainConfig
from peopleseg.errors import PeoplesegError
from peopleseg.models.segformer import SegFormer


class ResumePosition:
    """Shared between the module and the train sampler: how many samples of the current epoch a resumed run has
    already seen, so the sampler can skip them and the run continues with the very next batch."""

    def __init__(self) -> None:
        self.skip_batches = 0
        self.epoch = 0  # the epoch those batches belong to
        self.step = 0  # the global step the run resumes at (a shard stream is seeded by it)
        self.pending = False  # set by a checkpoint load; the sampler's first pass after it places the run


class TrainingDiverged(PeoplesegError):
    """The loss became NaN or infinite: training stops rather than save a model of NaNs as a result."""


class SegFormerModule(pl.LightningModule):
    def __init__(self, config: TrainConfig, model: SegFormer, resume: ResumePosition | None = None) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.resume = resume or ResumePosition()
        weights = config.loss.class_weights
        self.register_buffer(
            "class_weights", torch.tensor(weights, dtype=torch.float32) if weights else None, persistent=False
        )
        self.val_metrics = SegmentationMetrics(model.info.num_classes, ignore_index=config.loss.ignore_index)
        self._tick: float | None = None
        self._pending_rng: dict[str, Any] | None = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        state, self._pending_rng = self._pending_rng, None
        if state is not None:
            # The schedule is a function of the step and *this* config (a resume may raise max_steps), not of
            # whatever lr the checkpoint's scheduler last wrote.
            factor = lr_factor(self.global_step, self.config.optim, self.config.train.max_steps)
            for optimizer in self.trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor
        if state:
            _restore_rng(state)

    def training_step(self, batch: dict[str, Any], batch_index: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        loss = segmentation_loss(
            self.model(images), masks, self.config.loss.ignore_index, self.class_weights, self.config.loss.dice_weight
        )
        # Every rank decides together (a rank stopping alone would leave the others waiting in the next all-reduce).
        finite = bool(torch.isfinite(loss.detach()))
        if self.trainer is not None and not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise TrainingDiverged(
                f"train: the loss is not finite (NaN or inf) at step {self.global_step}: lower optim.lr or check the "
                "data; no weights that are not finite are ever saved, so the checkpoints hold the last finite ones"
            )
        now = time.perf_counter()
        if self._tick is not None:
            world = self.trainer.world_size if self.trainer else 1
            self.log("train/images_per_s", images.shape[0] * world / max(now - self._tick, 1e-9), prog_bar=True)
        self._tick = now
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        images, masks = batch["image"], batch["mask"]
        logits = self.model(images)
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        loss = segmentation_loss(logits, masks, self.config.loss.ignore_index, self.class_weights)
        self.log("val/loss", loss, sync_dist=True, batch_size=images.shape[0])
        self.val_metrics.update(logits.argmax(1), masks)

    def on_validation_epoch_end(self) -> None:
        result = self.val_metrics.compute()
        self.log("val/miou", float(result["miou"]) * 100, prog_bar=True, sync_dist=False)
        for name, iou in zip(self.model.info.classes, result["iou"], strict=False):
            self.log(f"val/iou_{name}", float(iou) * 100, sync_dist=False)
        self.val_metrics.reset()
        self._tick = None  # validation time is not training throughput

    def configure_optimizers(self) -> Any:
        optimizer, scheduler = build_optimizer(self.model, self.config.optim, lambda: self.config.train.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- checkpoints: our metadata and every RNG, so a resumed run continues exactly -------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["peopleseg"] = {
            "info": self.model.info.to_dict(),
            "config": to_dict(self.config),
            "rng": {
                "python": random.getstate(),
                "numpy": _plain_numpy_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Restored at the first training batch, not now: starting the data iterator draws from torch's RNG, which
        # the uninterrupted run did long before the checkpoint.
        self._pending_rng = checkpoint.get("peopleseg", {}).get("rng") or {}
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        # Batches of the interrupted epoch that were already trained on: the sampler skips them. ("processed", as
        # a checkpoint written at the end of a batch is saved before Lightning counts that batch "completed".)
        done = progress.get("current", {}).get("processed", 0)
        self.resume.skip_batches = int(done)
        # A checkpoint from an epoch's last batch resumes into the next epoch, which must not be skipped.
        self.resume.epoch = int(checkpoint.get("epoch", 0))
        self.resume.step = int(checkpoint.get("global_step", 0))
        self.resume.pending = True


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])  # drop-path and dropout on the GPU draw from these


def _plain_numpy_state() -> list[Any]:
    # Plain lists and numbers, so the checkpoint loads with torch.load(weights_only=True).
    kind, keys, position, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    return [kind, keys.tolist(), int(position), int(has_gauss), float(gauss)]


def _as_tuple(value: Any) -> Any:
    """random.setstate wants the nested tuples back that a checkpoint may have turned into lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
