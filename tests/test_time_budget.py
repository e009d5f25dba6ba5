"""`train.max_minutes`: the step count is fitted to the measured speed, the lr schedule ends annealed inside the
budget, and the fitted count travels in the checkpoint so a resumed run keeps it."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lightning")
from synthetic import write_people_dataset
from test_train import overrides

from peopleseg.cli import main
from peopleseg.config import load_config
from peopleseg.engine.time_budget import HARD_STOP_FACTOR, SAFETY, FitStepsToTime
from peopleseg.engine.train import train
from peopleseg.engine.train_config import TrainConfig
from peopleseg.errors import ConfigError

LR = "lr-AdamW/backbone"  # the backbone's lr, as Lightning's LearningRateMonitor logs it


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    return write_people_dataset(tmp_path_factory.mktemp("people"), train=24, val=8, subsets=True)


def measured(callback: FitStepsToTime, steps: int, seconds: float, val_s: float | None = None) -> FitStepsToTime:
    callback._timed_steps, callback._timed_s, callback._val_s = steps, seconds, val_s
    return callback


def test_the_fit_spends_the_remaining_time_on_steps_and_validations() -> None:
    # 0.1 s a step, 10 s of a 60 s budget spent at step 23: 50 s left.
    assert measured(FitStepsToTime(1.0, 10_000, None), 20, 2.0).steps_that_fit(23, 10.0) == 23 + int(SAFETY * 50 / 0.1)
    # A 1 s validation every 10 steps doubles the cost of a step.
    fit = measured(FitStepsToTime(1.0, 10_000, 10), 20, 2.0, val_s=1.0).steps_that_fit(23, 10.0)
    assert fit == 23 + int(SAFETY * 50 / 0.2)
    # max_steps is the ceiling, and a spent budget still takes the step in hand.
    assert measured(FitStepsToTime(1.0, 100, None), 20, 2.0).steps_that_fit(23, 10.0) == 100
    assert measured(FitStepsToTime(1.0, 10_000, None), 20, 2.0).steps_that_fit(23, 75.0) == 24


class SimulatedRun:
    """A fake trainer and clock: steps take `step_time(step)` seconds, validations `val_s`, every `val_every`."""

    def __init__(self, monkeypatch, callback: FitStepsToTime, start_step: int = 0, max_steps: int = 10_000) -> None:
        self.clock = 1000.0
        monkeypatch.setattr("peopleseg.engine.time_budget.time.monotonic", lambda: self.clock)
        self.callback = callback
        self.trainer = SimpleNamespace(
            fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(max_steps=max_steps)),
            global_step=start_step,
            strategy=SimpleNamespace(broadcast=lambda value, src=0: value),
            is_global_zero=True,
            world_size=1,
        )
        self.module = SimpleNamespace(config=TrainConfig())
        self.fits: list[int | None] = []

    def run(self, step_time, val_every: int | None = None, val_s: float = 0.0) -> float:
        started = self.clock
        self.callback.on_train_start(self.trainer, self.module)
        while self.trainer.global_step < self.trainer.fit_loop.epoch_loop.max_steps:
            self.clock += step_time(self.trainer.global_step)
            self.trainer.global_step += 1
            self.callback.on_train_batch_end(self.trainer, self.module)
            self.fits.append(self.callback.fitted_steps)
            if val_every and self.trainer.global_step % val_every == 0:
                self.callback.on_validation_start(self.trainer, self.module)
                self.clock += val_s
                self.callback.on_validation_end(self.trainer, self.module)
        return self.clock - started


def test_the_fit_follows_a_run_that_slows_down(monkeypatch) -> None:
    # A loader-bound run: the 30 prefetched batches come at the model's pace (0.05 s), then the loader's (0.3 s).
    run = SimulatedRun(monkeypatch, FitStepsToTime(1.0, 10_000, None))
    took = run.run(lambda step: 0.05 if step < 30 else 0.3)
    first = next(fit for fit in run.fits if fit is not None)
    assert first > 800  # without the prefetch skip, the probe saw only the fast steps
    assert run.trainer.global_step == run.module.config.train.max_steps < 300  # the renewals caught up
    assert 55.0 <= took <= 60.0  # ended inside the budget, by its fit, not the hard stop


def test_the_queue_refilled_during_validation_is_not_taken_for_speed(monkeypatch) -> None:
    # After each validation the 30 batches the workers queued meanwhile come at once (0.01 s), then 0.3 s a step.
    pace = {"refill_until": -1}

    def step_time(step: int) -> float:
        return 0.01 if step < pace["refill_until"] else 0.3

    callback = FitStepsToTime(2.0, 10_000, val_every_steps=100, prefetched=30)
    run = SimulatedRun(monkeypatch, callback)
    original_end = callback.on_validation_end

    def validation_end(trainer, module) -> None:
        pace["refill_until"] = trainer.global_step + 30
        original_end(trainer, module)

    callback.on_validation_end = validation_end
    took = run.run(step_time, val_every=100, val_s=2.0)
    assert 110.0 <= took <= 120.0, took  # ends in the budget, neither early from a slow fit nor late from a fast one


def test_a_run_that_never_finishes_its_probe_stops_at_the_hard_limit(monkeypatch) -> None:
    # The probe waits for a million prefetched batches that never come: the hard stop ends the run at 1.1x.
    run = SimulatedRun(monkeypatch, FitStepsToTime(0.5, 10_000, None, prefetched=10**6))
    took = run.run(lambda step: 1.0)
    assert run.callback.fitted_steps is None
    assert took == pytest.approx(HARD_STOP_FACTOR * 30, abs=1.0) and run.trainer.global_step < 10_000


def test_a_resumed_run_starts_from_its_fit_and_spends_what_is_left(monkeypatch) -> None:
    callback = FitStepsToTime(1.0, 10_000, None)
    callback.load_state_dict({"fitted_steps": 321, "spent_s": 30.0})
    run = SimulatedRun(monkeypatch, callback, start_step=200)
    took = run.run(lambda step: 0.1)
    assert run.fits[0] == 321  # the lr schedule continues where the killed run left it
    assert 27.0 <= took <= 30.0  # then the fit follows the 30 s the first run left
    assert callback.state_dict()["spent_s"] == pytest.approx(30.0 + took)


def test_a_run_resumed_with_a_larger_budget_fits_anew_and_spends_it(monkeypatch) -> None:
    # A finished 1-minute run, resumed with 2 minutes: its old count (its last step) would end it at once.
    callback = FitStepsToTime(2.0, 10_000, None)
    callback.load_state_dict({"fitted_steps": 321, "spent_s": 60.0, "budget_s": 60.0})
    assert callback.fitted_steps is None
    run = SimulatedRun(monkeypatch, callback, start_step=321)
    took = run.run(lambda step: 0.1)
    first = next(fit for fit in run.fits if fit is not None)  # after a new probe
    assert first > 321 + 400  # about 60 s more of 0.1 s steps
    assert 54.0 <= took <= 60.0


def test_a_budgeted_run_stops_in_time_with_its_schedule_annealed(people, tmp_path) -> None:
    out = tmp_path / "budget"
    extra = {"train.max_minutes": 0.1, "train.checkpoint_every": 1000, "optim.warmup_steps": 2}
    config = load_config(TrainConfig, None, overrides(people, out, 100_000, **extra))
    summary = train(config, progress=False)
    assert 23 < summary.steps < 100_000  # past the probe, and far short of max_steps
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    fitted = [state["fitted_steps"] for name, state in saved["callbacks"].items() if "FitStepsToTime" in name]
    assert fitted == [summary.steps]
    with open(next((out / "logs").glob("version_*/metrics.csv"))) as stream:
        lrs = [(int(r["step"]), float(r[LR])) for r in csv.DictReader(stream) if r.get(LR)]
    peak = max(lr for _, lr in lrs)
    assert lrs[-1][1] < 0.1 * peak, lrs[-5:]  # the schedule decayed to its end over the fitted count


def test_a_budget_below_zero_is_a_config_error(people, tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match=r"train\.max_minutes"):
        FitStepsToTime(0, 10, None)
    args = ["train", "-q"]
    for item in overrides(people, tmp_path / "bad", 10, **{"train.max_minutes": -1}):
        args += ["--set", item]
    assert main(args) == 1
    assert "train.max_minutes: must be a finite number above 0" in capsys.readouterr().err


def test_a_killed_budgeted_run_resumes_from_its_fit_and_spends_the_rest(people, tmp_path) -> None:
    out = tmp_path / "killed"
    extra = {"train.max_minutes": 0.3, "train.checkpoint_every": 2, "train.val_every": 1000, "optim.warmup_steps": 2}
    args = [sys.executable, "-m", "peopleseg.cli", "train", "-q"]
    for item in overrides(people, out, 100_000, **extra):
        args += ["--set", item]
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    last = out / "checkpoints" / "last.ckpt"

    def budget_state() -> dict:
        saved = torch.load(last, weights_only=False)
        return next(state for name, state in saved["callbacks"].items() if "FitStepsToTime" in name)

    # Reading its log also keeps the pipe from filling up. Once the fit is printed, a few more steps write it into
    # a checkpoint (one every 2 steps).
    assert any("steps fit in" in line for line in process.stderr), "the run never printed its fit"
    time.sleep(1.0)
    assert process.poll() is None, "training ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = budget_state()
    assert killed["fitted_steps"] > 0 and 0 < killed["spent_s"] < 18
    result = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    final = torch.load(last, weights_only=False)
    state = next(state for name, state in final["callbacks"].items() if "FitStepsToTime" in name)
    # It ran to its fit, and checkpointed its final step (though checkpoints come every 2 steps).
    assert final["global_step"] == state["fitted_steps"]
    assert state["fitted_steps"] > killed["fitted_steps"] // 2
    # The two runs together spent about the budget, not a budget each.
    assert killed["spent_s"] < state["spent_s"] < 0.3 * 60 * HARD_STOP_FACTOR + 2
