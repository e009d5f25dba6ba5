"""The `peopleseg` command: help everywhere, the models table, infer on a real photo, one-line errors."""

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from peopleseg.cli import main

COMMANDS = ["models", "convert", "infer", "export", "train", "evaluate", "benchmark", "serve", "autolabel"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "peopleseg.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "usage: peopleseg " + command in capsys.readouterr().out


def test_models_table(capsys) -> None:
    assert main(["models", "--size", "256"]) == 0
    out = capsys.readouterr().out
    for name in ("segformer_b0", "segformer_b5", "segformer_fan_base_hybrid", "segformer_fan_large_hybrid"):
        assert name in out
    assert "3.71" in out  # B0's parameters, in millions


def test_infer_writes_masks_at_photo_size(data_dir, tmp_path) -> None:
    result = run_cli("infer", str(data_dir / "messi5.jpg"), str(data_dir / "grace_hopper.jpg"), "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "randomly initialised" in result.stderr or "random" not in result.stderr
    mask = np.array(Image.open(tmp_path / "messi5_mask.png"))
    assert mask.shape == (342, 548) and set(np.unique(mask)) <= {0, 1}
    overlay = Image.open(tmp_path / "grace_hopper_overlay.jpg")  # a JPEG photo gives a JPEG overlay
    assert overlay.size == (512, 600) and overlay.mode == "RGB"
    assert "person pixels" in result.stdout


def test_infer_folder_recursive(data_dir, tmp_path, capsys) -> None:
    assert main(["infer", str(data_dir), "-o", str(tmp_path), "--output", "mask", "-m", "segformer_b0"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*_mask.png")) == [
        "astronaut_mask.png",
        "grace_hopper_mask.png",
        "messi5_mask.png",
    ]
    assert not list(tmp_path.glob("*_overlay*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["infer", "no/such/photo.jpg"], "no/such/photo.jpg: no such file"),
        (["infer", "{corrupt}"], "broken.jpg: not an image"),
        (["infer", "{photo}", "-m", "segformer_b9"], "segformer_b9"),
        (["infer", "{photo}", "-m", "{corrupt}"], "broken.jpg: unknown weights format"),
        (["serve", "-m", "{corrupt}"], "broken.jpg: unknown weights format"),
    ],
)
def test_errors_are_one_line(args, message, data_dir, tmp_path) -> None:
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_text("not a jpeg")
    args = [a.format(corrupt=corrupt, photo=data_dir / "messi5.jpg") for a in args]
    result = run_cli(*args, "-o", str(tmp_path / "out")) if args[0] == "infer" else run_cli(*args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr


def test_an_output_folder_that_cannot_be_made_is_named_before_the_model_loads(
    data_dir, tmp_path, monkeypatch, capsys
) -> None:
    import peopleseg.infer.segmenter as segmenter_module

    monkeypatch.setattr(segmenter_module, "Segmenter", None)  # loading a model would fail loudly
    taken = tmp_path / "out"
    taken.write_text("a file")
    assert main(["infer", str(data_dir / "messi5.jpg"), "-o", str(taken)]) == 1
    assert capsys.readouterr().err.strip() == f"error: -o {taken}: is a file, not a folder"


def test_bad_option_value_is_an_argparse_error() -> None:
    result = run_cli("models", "--size", "100")
    assert result.returncode == 2 and "multiple of 32" in result.stderr


def test_export_command(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    result = run_cli("export", "segformer_b0", "-o", str(tmp_path / "b0.onnx"))
    assert result.returncode == 0, result.stderr
    assert "| variant | file | MB | compared with | max abs diff | argmax agreement |" in result.stdout
    assert "| fp32 | b0.onnx |" in result.stdout and (tmp_path / "b0.onnx").stat().st_size > 1_000_000


@pytest.mark.parametrize("name", ["broken.jpg", "broken.mp4"])
def test_a_single_unreadable_input_fails_before_the_model_loads(name, tmp_path, monkeypatch, capsys) -> None:
    # The first run builds the fast graph for seconds: a bad photo or video should not wait for that.
    from peopleseg.infer import segmenter

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for an unreadable input")

    monkeypatch.setattr(segmenter, "Segmenter", no_model)
    bad = tmp_path / name
    bad.write_bytes(b"\x00not media\xff" * 50)
    assert main(["infer", str(bad), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err and ("not an image" in err or "not a video" in err)
    assert not (tmp_path / "out").exists()


def test_a_photo_from_a_pipe_is_read_once(data_dir, tmp_path, capsys) -> None:
    # The early check looks at regular files only: a pipe would be drained by it and then read empty.
    import threading

    pipe = tmp_path / "photo.jpg"
    os.mkfifo(pipe)
    data = (data_dir / "astronaut.jpg").read_bytes()

    def feed() -> None:
        with open(pipe, "wb") as writer:
            writer.write(data)

    def unblock_a_second_reader() -> None:  # a second read would wait for a writer forever: give it an empty one
        with contextlib.suppress(OSError):  # ENXIO: nobody is reading, as it should be
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    watchdog = threading.Timer(10, unblock_a_second_reader)
    watchdog.start()
    assert main(["infer", str(pipe), "-o", str(tmp_path / "out"), "--output", "mask", "-m", "segformer_b0"]) == 0
    watchdog.cancel()
    feeder.join(5)
    assert (tmp_path / "out" / "photo_mask.png").exists()


def test_one_bad_video_among_several_inputs_is_skipped(data_dir, tmp_path, capsys) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "0_garbage.mp4").write_bytes(b"garbage")
    (folder / "1_good.mp4").write_bytes((data_dir / "vtest_clip.mp4").read_bytes())
    out = tmp_path / "out"
    argv = ["infer", str(folder), "-o", str(out), "--output", "json", "-m", "segformer_b0", "--max-frames", "3", "-q"]
    assert main(argv) == 1  # the run goes on past the bad file, then says it failed
    err = capsys.readouterr().err
    assert "0_garbage.mp4: not a video" in err and "1 input(s) or frame(s) could not be read" in err
    assert len((out / "1_good.jsonl").read_text().splitlines()) == 3


def test_two_videos_with_one_name_keep_both_outputs(data_dir, tmp_path) -> None:
    clip = (data_dir / "vtest_clip.mp4").read_bytes()
    (tmp_path / "talk.mp4").write_bytes(clip)
    (tmp_path / "talk.mkv").write_bytes(clip)  # FFmpeg reads the content, whatever the suffix says
    out = tmp_path / "out"
    argv = ["infer", str(tmp_path / "talk.mp4"), str(tmp_path / "talk.mkv"), "-o", str(out), "--output", "json"]
    assert main([*argv, "-m", "segformer_b0", "--max-frames", "2", "-q"]) == 0
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["talk_mkv.jsonl", "talk_mp4.jsonl"]


def test_export_takes_default_as_infer_does(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    argv = ["export", "default", "-o", str(tmp_path / "default.onnx"), "--input-size", "128", "128"]
    assert main(argv) == 0
    assert (tmp_path / "default.onnx").stat().st_size > 1_000_000


def test_autolabel_refuses_other_settings_over_old_labels_unless_told_to_relabel(data_dir, tmp_path, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "messi5.jpg").write_bytes((data_dir / "messi5.jpg").read_bytes())
    out = tmp_path / "labels"
    base = ["autolabel", str(photos), "-o", str(out), "-t", "peopleseg:segformer_b0", "-q"]
    assert main([*base, "--max-side", "256"]) == 0
    capsys.readouterr()
    assert main([*base, "--max-side", "128"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labelled with other settings" in err[0] and "--relabel" in err[0]
    assert main([*base, "--max-side", "128", "--relabel"]) == 0
    assert "labelled 1 samples" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_missing_training_extra_is_a_one_line_error_naming_it(command, tmp_path, monkeypatch, capsys) -> None:
    # As on a fresh `pip install .`, without `[train]`: the engine's modules import lightning and torchmetrics.
    # Only the modules whose first import is the missing package: they fail to import again and bind nothing new, so
    # every other module stays the object it was (tests that patch engine attributes later still find them).
    for name in ("peopleseg.engine.train", "peopleseg.engine.evaluate", "peopleseg.engine.metrics"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    argv = {"train": ["train", "--set", "train.max_steps=1"], "evaluate": ["evaluate", "segformer_b0"]}[command]
    folders = ["--images", str(tmp_path), "--masks", str(tmp_path)] if command == "evaluate" else []
    assert main([*argv, *folders]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"peopleseg {command} needs the train extra" in err[0]
    assert "pip install 'peopleseg[train]'" in err[0]
