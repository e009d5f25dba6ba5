"""Training end to end on a tiny synthetic people dataset: it learns, it writes what it promises, a killed run
resumes and finishes, and a resumed run continues the uninterrupted one exactly."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("lightning")
from synthetic import write_people_dataset

from peopleseg.cli import main
from peopleseg.config import load_config
from peopleseg.engine.train import build_training_model, train
from peopleseg.engine.train_config import TrainConfig
from peopleseg.errors import ConfigError, DataError
from peopleseg.models import build_model, load_model, save_model


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    return write_people_dataset(tmp_path_factory.mktemp("people"), train=24, val=8, subsets=True)


def overrides(people: Path, out: Path, steps: int, **extra: object) -> list[str]:
    items = {
        "model.input_size": "[64, 64]",
        "data.train.images": people / "images/train",
        "data.train.masks": people / "masks/train",
        "data.val": f"{{images: {people / 'images/val'}, masks: {people / 'masks/val'}, subset_from_subfolder: true}}",
        "data.workers": 0,
        "data.augment.crop_size": "[64, 64]",
        "train.out_dir": out,
        "train.max_steps": steps,
        "train.batch_size": 4,
        "train.val_every": 6,
        "train.checkpoint_every": 3,
        "train.log_every": 1,
        "optim.warmup_steps": 3,
        "optim.lr": 6e-4,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def rows(out: Path) -> list[dict[str, str]]:
    """Every logged row of every attempt (a resumed run logs into the next logs/version_N)."""
    found = []
    for path in sorted((out / "logs").glob("version_*/metrics.csv")):
        with open(path) as stream:
            found += list(csv.DictReader(stream))
    return found


def losses(out: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in rows(out) if r.get("train/loss")}


def test_training_learns_and_writes_everything(people, tmp_path) -> None:
    config = load_config(TrainConfig, None, overrides(people, tmp_path / "run", 36))
    summary = train(config, progress=False)
    assert summary.steps == 36
    for name in (
        "config.yaml",
        "last.safetensors",
        "best.safetensors",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "logs/version_0/metrics.csv",
    ):
        assert (tmp_path / "run" / name).exists(), name
    assert list((tmp_path / "run" / "tensorboard").glob("version_0/events.*"))
    mious = [float(r["val/miou"]) for r in rows(tmp_path / "run") if r.get("val/miou")]
    assert len(mious) >= 3 and max(mious[1:]) > mious[0] + 5, mious
    model = load_model(tmp_path / "run" / "best.safetensors")
    assert model.info.input_size == (64, 64) and model.info.classes == ["background", "person"]
    # Our Lightning checkpoints load as weights too.
    assert load_model(tmp_path / "run" / "checkpoints" / "last.ckpt").info.arch == "segformer_b0"


# Inside the first epoch (6 batches of 4), at its very end, and, with a loader worker (whose iterator Lightning starts
# before it sets the sampler's epoch), at that end and inside the second epoch.
@pytest.mark.parametrize(("stop", "workers"), [(4, 0), (6, 0), (6, 1), (8, 1)])
def test_resume_continues_the_uninterrupted_run(people, tmp_path, stop, workers) -> None:
    # A flat lr after warm-up, so that the two runs' different max_steps do not change the schedule.
    every = {"train.checkpoint_every": stop, "optim.poly_power": 0.0, "data.workers": workers}
    full = load_config(TrainConfig, None, overrides(people, tmp_path / "full", stop + 4, **every))
    train(full, progress=False)
    # The same run, stopped at step `stop` ...
    part = load_config(TrainConfig, None, overrides(people, tmp_path / "part", stop, **every))
    train(part, progress=False)
    # ... then resumed: its next 4 steps repeat the uninterrupted run's (same batches, RNG, optimiser). Resumed at
    # an epoch's end, the next epoch is trained whole, not skipped as the finished one's remainder.
    more = load_config(TrainConfig, None, overrides(people, tmp_path / "part", stop + 4, **every))
    train(more, resume=True, progress=False)
    expected, resumed = losses(tmp_path / "full"), losses(tmp_path / "part")
    for step in range(stop, stop + 4):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-3, abs=1e-4), (step, expected, resumed)


def test_a_finished_run_checkpoints_its_final_step_and_resumes_from_it(people, tmp_path) -> None:
    out = tmp_path / "run"
    steps = lambda n: load_config(TrainConfig, None, overrides(people, out, n, **{"train.checkpoint_every": 4}))  # noqa: E731
    train(steps(7), progress=False)
    # 7 steps is no multiple of checkpoint_every, yet the last checkpoint holds step 7, not step 4: the weights that
    # last.safetensors has.
    saved = torch.load(out / "checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == 7
    final = load_model(out / "last.safetensors").state_dict()
    for name, tensor in final.items():
        if tensor.is_floating_point():  # not BatchNorm's batch counters, which the weights file leaves out
            assert torch.equal(saved["state_dict"][f"model.{name}"], tensor), name
    # Resumed as it is, it has nothing left to do; resumed to train longer, it goes on from step 7.
    train(steps(7), resume=True, progress=False)
    train(steps(9), resume=True, progress=False)
    logged = [int(r["step"]) for r in rows(out) if r.get("train/loss")]
    assert logged == list(range(9))  # each step once: none repeated from an older checkpoint


def test_a_checkpoint_at_a_validation_step_holds_that_validation(people, tmp_path) -> None:
    out = tmp_path / "run"
    every = {"train.checkpoint_every": 4, "train.val_every": 4}
    summary = train(load_config(TrainConfig, None, overrides(people, out, 8, **every)), progress=False)
    scores = [float(r["val/miou"]) for r in rows(out) if r.get("val/miou")]
    assert len(scores) == 2 and summary.best_miou == pytest.approx(max(scores))
    # Written after step 8's validation, not before it: a resume neither skips it nor forgets its score.
    saved = torch.load(out / "checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == 8
    (exported,) = [state for key, state in saved["callbacks"].items() if "ExportWeights" in key]
    assert exported == {"best": pytest.approx(max(scores)), "validated_at": 8}
    (best,) = [state for key, state in saved["callbacks"].items() if "'monitor': 'val/miou'" in key]
    assert float(best["best_model_score"]) == pytest.approx(max(scores))


def test_a_diverging_run_stops_and_never_saves_weights_that_are_not_finite(people, tmp_path) -> None:
    from peopleseg.engine.module import TrainingDiverged

    with pytest.raises(ConfigError, match=r"optim\.lr: must be a finite number, got inf"):
        train(load_config(TrainConfig, None, overrides(people, tmp_path / "inf", 2, **{"optim.lr": ".inf"})))
    out = tmp_path / "run"
    extra = {"optim.lr": 1e30, "optim.warmup_steps": 0, "train.checkpoint_every": 1, "train.val_every": 1}
    with pytest.raises(TrainingDiverged, match="not finite"):
        train(load_config(TrainConfig, None, overrides(people, out, 12, **extra)), progress=False)
    for weights in out.glob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_model(weights).state_dict().values() if t.is_floating_point())
    saved = torch.load(out / "checkpoints/last.ckpt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())


def test_a_finished_run_is_not_overwritten_or_resumed_with_another_config(people, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    train(load_config(TrainConfig, None, overrides(people, out, 2)), progress=False)
    again = load_config(TrainConfig, None, overrides(people, out, 2, **{"optim.lr": 1e-3}))
    with pytest.raises(ConfigError, match="holds a run already; --resume continues it, --overwrite replaces it"):
        train(again, progress=False)
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's run \(optim\.lr 0\.0006 -> 0\.001\)"):
        train(again, resume=True, progress=False)
    # How long and on what hardware may change on a resume; a file that is no checkpoint is named as such.
    longer = load_config(TrainConfig, None, overrides(people, out, 3, **{"train.val_every": 2}))
    assert train(longer, resume=True, progress=False).steps == 3
    with pytest.raises(ConfigError, match=r"last\.safetensors: not a peopleseg training checkpoint"):
        train(longer, resume=str(out / "last.safetensors"), progress=False)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((out / "checkpoints/last.ckpt").read_bytes()[:5000])
    with pytest.raises(ConfigError, match=r"cut\.ckpt: not a readable training checkpoint"):
        train(longer, resume=str(cut), progress=False)
    # --overwrite starts afresh: the old run's checkpoints go, its logs stay.
    assert (
        main(["train", *[a for item in overrides(people, out, 1) for a in ("--set", item)], "--overwrite", "-q"]) == 0
    )
    saved = torch.load(out / "checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == 1 and len(list((out / "logs").glob("version_*"))) == 3
    capsys.readouterr()


def test_bad_data_is_found_before_the_run_folder_is_made(people, tmp_path) -> None:
    out = tmp_path / "never"
    config = load_config(TrainConfig, None, overrides(people, out, 2, **{"data.train.images": tmp_path / "nowhere"}))
    with pytest.raises(DataError, match="nowhere: no such folder"):
        train(config, progress=False)
    assert not out.exists()


def test_renamed_classes_get_a_fresh_head(people, tmp_path) -> None:
    weights = save_model(build_model("segformer_b0"), tmp_path / "b0.safetensors")
    extra = {"model.init": weights, "model.classes": "[person, background]"}
    model = build_training_model(load_config(TrainConfig, None, overrides(people, tmp_path / "run", 2, **extra)))
    source = load_model(weights)
    assert model.info.classes == ["person", "background"]
    assert not torch.equal(model.decode_head.linear_pred.weight, source.decode_head.linear_pred.weight)
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name


def test_ctrl_c_says_where_the_run_stands(people, tmp_path, monkeypatch, capsys) -> None:
    from peopleseg.engine import module

    def interrupted(self, batch, batch_index):
        raise KeyboardInterrupt

    monkeypatch.setattr(module.SegFormerModule, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(
        KeyboardInterrupt, match=r"training interrupted at step 0; --resume continues from .*last\.ckpt"
    ):
        train(load_config(TrainConfig, None, overrides(people, tmp_path / "run", 4)), progress=False)
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's "ignore Ctrl-C from now on" is undone
    args = [a for item in overrides(people, tmp_path / "cli", 4) for a in ("--set", item)]
    assert main(["train", *args, "-q"]) == 130
    assert "interrupted: training interrupted at step 0; --resume continues from" in capsys.readouterr().err


def test_the_models_resize_policy_is_validated_with_and_saved(people, tmp_path) -> None:
    out = tmp_path / "letterbox"
    extra = {"model.resize": "letterbox", "train.val_every": 2}
    summary = train(load_config(TrainConfig, None, overrides(people, out, 2, **extra)), progress=False)
    assert summary.best_miou is not None  # validation ran, letterboxed
    assert load_model(out / "last.safetensors").info.resize == "letterbox"
    assert load_model(out / "best.safetensors").info.resize == "letterbox"
    with pytest.raises(ConfigError, match=r"model\.resize: must be one of resize, letterbox, got 'sliding'"):
        train(load_config(TrainConfig, None, overrides(people, tmp_path / "bad", 2, **{"model.resize": "sliding"})))


def test_the_step_checkpoint_keeps_model_checkpoints_state_key(tmp_path) -> None:
    # Lightning files callback state by this key: the same key lets checkpoints written by a plain ModelCheckpoint
    # (before this callback existed) resume into it, still writing last.ckpt.
    from lightning.pytorch.callbacks import ModelCheckpoint

    from peopleseg.engine.train import _last_checkpoint

    arguments = dict(dirpath=tmp_path, filename="step{step}", every_n_train_steps=3, save_top_k=0, save_last=True)
    assert _last_checkpoint(tmp_path, 3).state_key == ModelCheckpoint(**arguments).state_key


def test_killed_training_resumes_and_finishes(people, tmp_path) -> None:
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "peopleseg.cli", "train", "-q"]
    for item in overrides(people, out, 60, **{"train.val_every": 30}):
        args += ["--set", item]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["global_step"] >= 6:
            break
        time.sleep(0.2)
    assert process.poll() is None, "training ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # mid-epoch, mid-write perhaps: the atomic save must survive it
    process.wait()
    # A save cut short leaves at most its temp file: last.ckpt itself is always whole.
    step_at_kill = torch.load(last, weights_only=True)["global_step"]
    assert 6 <= step_at_kill < 60
    result = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(last, weights_only=True)["global_step"] == 60
    assert load_model(out / "last.safetensors").info.arch == "segformer_b0"
    assert not list(out.rglob(".*.tmp"))  # the resumed run cleared any temp file the kill left


def test_cli_errors_and_print_config(tmp_path, capsys) -> None:
    assert main(["train", "--print-config", "--set", "optim.lr=1e-4"]) == 0
    assert "lr: 0.0001" in capsys.readouterr().out
    assert main(["train", "--set", "optim.lrr=1"]) == 1
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    assert main(["train", "--set", f"train.out_dir={tmp_path}", "--resume"]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"data\.train: give 'images'"):
        train(load_config(TrainConfig, None, [f"train.out_dir={tmp_path}"]), progress=False)


def test_0_255_person_masks_read_as_ids_stop_before_training(people, tmp_path) -> None:
    masks = tmp_path / "masks"
    for path in (people / "masks/train").rglob("*.png"):
        target = masks / path.relative_to(people / "masks/train")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(np.asarray(Image.open(path)) == 1, 255, 0).astype(np.uint8)).save(target)
    extra = {"data.train.masks": masks}
    with pytest.raises(DataError, match=r"data\.train\.masks .*only 0 and 255.*data\.binary_255: true"):
        train(load_config(TrainConfig, None, overrides(people, tmp_path / "run", 1, **extra)), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    binary = {**extra, "data.binary_255": "true"}
    binary["data.val"] = f"{{images: {people / 'images/train'}, masks: {masks}}}"
    assert train(load_config(TrainConfig, None, overrides(people, tmp_path / "ok", 1, **binary)), progress=False)


def test_train_on_coco_annotations(people, tmp_path) -> None:
    # Person polygons in COCO format: the same pipeline, rasterised on the fly.
    import json

    import numpy as np
    from PIL import Image

    images = sorted((people / "images/train").glob("*.jpg"))[:8]
    records, annotations = [], []
    for index, path in enumerate(images):
        mask = np.array(Image.open(people / "masks/train" / f"{path.stem}.png"))
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        records.append({"id": index, "file_name": path.name, "width": mask.shape[1], "height": mask.shape[0]})
        polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
        annotations.append(
            {
                "id": index,
                "image_id": index,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [polygon],
                "area": float((x1 - x0) * (y1 - y0)),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
            }
        )
    coco = tmp_path / "instances.json"
    coco.write_text(
        json.dumps({"images": records, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]})
    )
    items = overrides(people, tmp_path / "coco_run", 4, **{"data.val": "null"})
    items += [f"data.train.coco={coco}", "data.train.masks=null"]
    summary = train(load_config(TrainConfig, None, items), progress=False)
    assert summary.steps == 4 and summary.last_weights.exists()


def test_init_from_weights_trains_with_dropout_and_batch_norm_on(people, tmp_path) -> None:
    weights = tmp_path / "start.safetensors"
    save_model(build_model("segformer_b0", num_classes=2), weights)
    config = load_config(TrainConfig, None, overrides(people, tmp_path / "run", 2, **{"model.init": weights}))
    model = build_training_model(config)
    # load_model hands weights back ready for inference (eval mode); Lightning would keep that mode.
    assert model.training and all(module.training for module in model.modules())


@pytest.mark.parametrize("classes", ["[background, person]", "[background, person, bag]"])
def test_drop_path_rate_applies_to_loaded_weights_too(people, tmp_path, classes) -> None:
    from peopleseg.models.layers import DropPath

    start = build_model("segformer_b0", num_classes=2)
    weights = save_model(start, tmp_path / "start.safetensors")
    extra = {"model.init": weights, "model.drop_path_rate": 0.4, "model.classes": classes}
    model = build_training_model(load_config(TrainConfig, None, overrides(people, tmp_path / "run", 2, **extra)))
    assert max(m.drop_prob for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(0.4)
    kept = model.backbone.state_dict()
    for name, tensor in start.backbone.state_dict().items():  # the weights themselves are the file's
        assert torch.equal(kept[name], tensor), name


def test_validation_interval_may_be_longer_than_an_epoch(people, tmp_path) -> None:
    # 24 images in batches of 4 make 6-batch epochs; validating every 10 batches must not fall back to every epoch.
    config = load_config(TrainConfig, None, overrides(people, tmp_path / "run", 20, **{"train.val_every": 10}))
    train(config, progress=False)
    assert [int(r["step"]) for r in rows(tmp_path / "run") if r.get("val/miou")] == [9, 19]


def train_in_a_script(
    folder: Path, settings: list[str], *, before: str = "", after: str = "", timeout: int = 300
) -> subprocess.CompletedProcess:
    """`train` in a process of its own (a DDP launcher re-runs its command line; a hang must fail, not stall)."""
    script = folder / "train_script.py"
    script.write_text(
        before + "from peopleseg.config import load_config\n"
        "from peopleseg.engine.train import train\n"
        "from peopleseg.engine.train_config import TrainConfig\n"
        f"summary = train(load_config(TrainConfig, None, {settings!r}), progress=False)\n" + after + "\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_cpu_processes_train_together(people, tmp_path) -> None:
    # DDP on CPUs (gloo): BatchNorm must stay BatchNorm there (SyncBatchNorm raises on CPU tensors). Run as its own
    # script, because Lightning's DDP launcher starts the other rank by re-running the command line.
    out = tmp_path / "ddp"
    ddp = {"train.accelerator": "cpu", "train.devices": 2, "train.strategy": "ddp", "train.val_every": 2}
    settings = overrides(people, out, 4, **ddp)
    result = train_in_a_script(
        tmp_path, settings, after="print('trained', summary.steps, summary.best_miou is not None)"
    )
    assert "trained 4 True" in result.stdout
    assert load_model(out / "last.safetensors").info.arch == "segformer_b0"


def test_loader_workers_start_after_opencv_has_run_threads_in_this_process(people, tmp_path) -> None:
    # A notebook that resized images with OpenCV, then trains with workers: a forked worker that set OpenCV's
    # thread count waited for ever on the parent's thread pool. Its own process, so a regression fails, not hangs.
    settings = overrides(people, tmp_path / "run", 2, **{"data.workers": 2})
    before = (
        "import cv2, numpy as np\n"
        "image = np.zeros((1500, 1500, 3), np.uint8)\n"
        "for _ in range(3): cv2.GaussianBlur(image, (31, 31), 0)  # OpenCV's thread pool has run\n"
        "threads = cv2.getNumThreads()\n"
    )
    after = "print('trained', summary.steps, cv2.getNumThreads() == threads)"
    result = train_in_a_script(tmp_path, settings, before=before, after=after, timeout=120)
    assert "trained 2 True" in result.stdout  # and the caller's OpenCV setting is back


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("loss.class_weights=[1.0]", "loss.class_weights: must be one weight per class (2), got [1.0]"),
        ("train.batch_size=0", "train.batch_size: must be an integer >= 1, got 0"),
        ("train.accumulate=0", "train.accumulate: must be an integer >= 1, got 0"),
        ("train.val_every=0", "train.val_every: must be an integer >= 1, got 0"),
        ("train.checkpoint_every=0", "train.checkpoint_every: must be an integer >= 1, got 0"),
        ("train.max_steps=-1", "train.max_steps: must be an integer >= 1, got -1"),
        ("data.workers=-1", "data.workers: must be an integer >= 0, got -1"),
        ("optim.lr=-1", "optim.lr: must be a number > 0, got -1"),
        ("optim.lr=.nan", "optim.lr: must be a finite number, got nan"),
        ("train.max_minutes=.inf", "train.max_minutes: must be a finite number above 0, got inf"),
        ("train.seed=-1", "train.seed: must be an integer >= 0, got -1"),
        ("train.precision=fp17", "train.precision: must be one of auto, 32-true"),
        ("train.accelerator=tpu", "train.accelerator: must be one of auto, cpu, gpu, cuda, mps, got 'tpu'"),
        ("train.devices=foo", "train.devices: must be 'auto', a count >= 1, -1 (all) or a list of device ids"),
        ("train.strategy=nope", "train.strategy: 'nope' is not a Lightning strategy; choose auto or one of"),
        pytest.param(
            "train.accelerator=gpu",
            "train: Lightning refused accelerator='gpu'",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        ("loss.ignore_index=254", "loss.ignore_index: must be 255"),
        ("model.drop_path_rate=1.0", "model.drop_path_rate: must be a number >= 0 and < 1, got 1.0"),
        ("data.augment.scale_range=[2.0, 0.5]", "data.augment.scale_range: must be 0 < low <= high"),
        ("data.augment.copy_paste=1.5", "data.augment.copy_paste: must be a number >= 0 and <= 1, got 1.5"),
        ("model.classes=[person, person]", "model.classes: must be at least two distinct, non-empty names"),
    ],
)
def test_bad_training_values_are_one_line_errors_before_anything_is_written(people, tmp_path, setting, message) -> None:
    out = tmp_path / "never"
    config = load_config(TrainConfig, None, [*overrides(people, out, 2), setting])
    with pytest.raises(ConfigError) as caught:
        train(config, progress=False)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists()


def test_a_validation_set_smaller_than_the_process_count_is_refused(people, tmp_path) -> None:
    # One image for two processes: the rank without one would skip validation while the other waited for it.
    first = sorted((people / "images/val").rglob("*.jpg"))[0].relative_to(people / "images/val")
    (tmp_path / "one.txt").write_text(f"{first}\n")
    val = f"{{images: {people / 'images/val'}, masks: {people / 'masks/val'}, list_file: {tmp_path / 'one.txt'}}}"
    ddp = {"train.accelerator": "cpu", "train.devices": 2, "train.strategy": "ddp", "data.val": val}
    args = [sys.executable, "-m", "peopleseg.cli", "train", "-q"]
    for item in overrides(people, tmp_path / "run", 4, **ddp):
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    assert "error: data.val: 1 image(s) for 2 training processes; each needs one or more" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("environ", "first"),
    [
        ({}, True),
        ({"LOCAL_RANK": "1"}, False),  # Lightning's launcher starting rank 1
        ({"LOCAL_RANK": "0", "NODE_RANK": "2"}, False),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),  # torchrun
        ({"RANK": "5", "LOCAL_RANK": "1"}, False),
        ({"SLURM_PROCID": "3"}, False),
    ],
)
def test_only_thefirst_process_cleans_up_and_writes_the_config(monkeypatch, environ, first) -> None:
    from peopleseg.engine.train import first_process

    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert first_process() is first
