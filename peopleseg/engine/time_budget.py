"""Train for a wall-clock budget (`train.max_minutes`) instead of a step count chosen by guesswork.

A rented GPU is paid by the minute, and how many steps fit in ten minutes depends on the card, the data loader and
the crop size. After a short probe this callback measures the training speed and sets the run's step count to what
fits in the budget; the learning-rate schedule decays to its end over that count, so a budgeted run ends annealed
rather than cut off mid-schedule. Validation time is measured too and kept out of the training time. The fit is
renewed every 50 steps and after every validation (a first fit from a short probe can be off when the data loader,
not the GPU, sets the pace; the renewals correct it early), and `train.max_steps` stays the ceiling.

The fitted step count and the time spent so far live in the checkpoint: a resumed run starts from that count and
spends what is left of the budget (the time between the kill and the resume does not count).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl

from peopleseg.errors import ConfigError

log = logging.getLogger(__name__)

# Steps not timed at the start (CUDA kernel selection, the first batches), on top of the batches the loader workers
# hold ready: those come at the model's speed, not the loader's, and timing them over-estimated a loader-bound GPU
# run's speed 1.6x. The same skip follows every validation and a resume, after which the queues are full again.
PROBE_FROM_STEP = 3
# The first fit comes after this many timed steps, or after PROBE_MIN_STEPS once this share of the budget has gone
# on timing (slow steps, short budgets): batches from many workers arrive in bursts, so one step says little. Rank 0
# decides and broadcasts, so every process of a distributed run fits at the same step with the same figures.
PROBE_STEPS = 20
PROBE_MIN_STEPS = 5
PROBE_SHARE = 0.05
# The fit is renewed every this many steps (and after every validation), with the speed since the last fit.
REFIT_EVERY = 50
# In a distributed run the hard stop below is checked every this many steps (each check is a broadcast).
STOP_CHECK_EVERY = 10
# Steps are fitted to this share of the remaining time: saving the final weights and stragglers need a little.
SAFETY = 0.97
# A run still going this long past its budget (a slower phase the fit could not see) stops at once.
HARD_STOP_FACTOR = 1.10


class FitStepsToTime(pl.Callback):
    def __init__(self, minutes: float, max_steps: int, val_every_steps: int | None, prefetched: int = 0) -> None:
        check_budget(minutes)
        self.budget_s = minutes * 60.0
        self.ceiling = max_steps
        self.val_every_steps = val_every_steps
        self.prefetched = prefetched
        self.fitted_steps: int | None = None
        self._spent_before = 0.0  # budget spent by the run this one resumes
        self._started = 0.0
        self._untimed_until = 0  # steps up to this one are not timed
        self._last_tick: float | None = None
        self._last_step = -1
        self._timed_steps = 0
        self._timed_s = 0.0
        # Steps and seconds since the last fit: the pace now, which the early (prefetched) steps no longer flatter.
        self._window_steps = 0
        self._window_s = 0.0
        self._val_started: float | None = None
        self._val_s: float | None = None

    # --- state: the fit and the time spent travel in the checkpoint ---------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"fitted_steps": self.fitted_steps, "spent_s": self.spent_s(), "budget_s": self.budget_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fitted_steps = state.get("fitted_steps")
        self._spent_before = float(state.get("spent_s", 0.0))
        saved_budget = state.get("budget_s")
        if saved_budget is not None and abs(float(saved_budget) - self.budget_s) > 1e-6:
            # A new budget (say, a finished run resumed to train longer): the old count fitted the old one.
            log.info("train.max_minutes changed from %.4g to %.4g: fitting the step count anew",
                     float(saved_budget) / 60, self.budget_s / 60)  # fmt: skip
            self.fitted_steps = None

    def spent_s(self, now: float | None = None) -> float:
        if not self._started:
            return self._spent_before
        return self._spent_before + (time.monotonic() if now is None else now) - self._started

    # --- hooks --------------------------------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._started = time.monotonic()
        self._untimed_until = trainer.global_step + PROBE_FROM_STEP + self.prefetched
        if self.fitted_steps is not None:
            self._apply(trainer, module, self.fitted_steps)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        now = time.monotonic()
        step = trainer.global_step
        if step == self._last_step:
            return  # a batch accumulated towards the next optimiser step
        if step > self._untimed_until and self._last_tick is not None:
            self._timed_steps += step - self._last_step
            self._timed_s += now - self._last_tick
            self._window_steps += step - self._last_step
            self._window_s += now - self._last_tick
        self._last_tick, self._last_step = now, step
        if self.fitted_steps is None:
            if self._timed_steps >= PROBE_MIN_STEPS:
                probe_done = self._timed_steps >= PROBE_STEPS or self._timed_s >= PROBE_SHARE * self.budget_s
                if trainer.strategy.broadcast(probe_done, src=0):
                    self._fit(trainer, module, now)
        elif step % REFIT_EVERY == 0:
            self._fit(trainer, module, now)
        if trainer.world_size == 1 or step % STOP_CHECK_EVERY == 0:
            over = self.spent_s(now) > HARD_STOP_FACTOR * self.budget_s
            if trainer.strategy.broadcast(over, src=0):
                if trainer.is_global_zero:
                    log.warning("train.max_minutes: %.1f min spent, stopping at step %d", self.spent_s(now) / 60, step)
                # Ending the step count, not `should_stop`: that would still run one more validation.
                self._apply(trainer, module, step)

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._val_started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        now = time.monotonic()
        if self._val_started is not None:
            self._val_s = now - self._val_started
        # Neither the validation gap nor the batches the workers queued meanwhile are the training pace.
        self._last_tick = None
        self._untimed_until = trainer.global_step + self.prefetched
        if self.fitted_steps is not None and trainer.global_step < trainer.fit_loop.epoch_loop.max_steps:
            self._fit(trainer, module, now)

    # --- the fit ------------------------------------------------------------------------------------------------

    def steps_that_fit(self, step: int, spent_s: float) -> int | None:
        """The total step count that ends the run inside the budget, from the measured speeds (None: too few
        steps timed yet to say)."""
        if self._window_steps >= PROBE_MIN_STEPS:
            seconds_per_step = self._window_s / self._window_steps
        elif self._timed_steps >= PROBE_MIN_STEPS:
            seconds_per_step = self._timed_s / self._timed_steps
        else:
            return None
        if self._val_s and self.val_every_steps:
            seconds_per_step += self._val_s / self.val_every_steps  # validations still to come, each as long
        remaining = max(self.budget_s - spent_s, 0.0)
        total = step + int(SAFETY * remaining / max(seconds_per_step, 1e-9))
        return max(step + 1, min(total, self.ceiling))

    def _fit(self, trainer: pl.Trainer, module: pl.LightningModule, now: float) -> None:
        step = trainer.global_step
        fit = self.steps_that_fit(step, self.spent_s(now))
        total = trainer.strategy.broadcast(fit, src=0)
        if total is None:
            return
        first = self.fitted_steps is None
        self.fitted_steps = int(total)
        self._window_steps, self._window_s = 0, 0.0
        self._apply(trainer, module, self.fitted_steps)
        if first and trainer.is_global_zero:
            rate = self._timed_steps / max(self._timed_s, 1e-9)
            log.warning(
                "train.max_minutes: %.2f steps/s measured, so %d steps fit in %.1f min (max_steps %d)",
                rate, total, self.budget_s / 60, self.ceiling,
            )  # fmt: skip
            warmup = module.config.optim.warmup_steps
            if total < 2 * warmup:
                log.warning(
                    "train.max_minutes: %d steps is under twice optim.warmup_steps (%d): the lr will barely decay; "
                    "lower optim.warmup_steps or give more minutes", total, warmup,
                )  # fmt: skip

    @staticmethod
    def _apply(trainer: pl.Trainer, module: pl.LightningModule, total: int) -> None:
        trainer.fit_loop.epoch_loop.max_steps = total
        # The lr schedule reads the config's max_steps on every step (peopleseg.engine.optim.build_optimizer).
        module.config.train.max_steps = total


def check_budget(minutes: float | None) -> None:
    if minutes is not None and not 0 < minutes < float("inf"):  # also false for NaN
        raise ConfigError(f"train.max_minutes: must be a finite number above 0, got {minutes}")
