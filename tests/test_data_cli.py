"""`peopleseg evaluate` and `peopleseg data check|pack` from the command line, on a synthetic people folder."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torchmetrics")
from synthetic import write_people_dataset

from peopleseg.cli import main


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    return write_people_dataset(tmp_path_factory.mktemp("people"), train=6, val=6, subsets=True)


def test_evaluate_prints_the_subset_table(people, tmp_path, capsys) -> None:
    args = [
        "evaluate",
        "segformer_b0",
        "--images",
        str(people / "images/val"),
        "--masks",
        str(people / "masks/val"),
        "--subset-from-subfolder",
        "--out",
        str(tmp_path),
        "--worst",
        "2",
        "-q",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| subset | images | mIoU |" in out
    for row in ("| far | 3 |", "| near | 3 |", "| all | 6 |"):
        assert row in out
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "worst.html").exists()


def test_data_check_finds_problems(people, tmp_path, capsys) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in sorted((people / "masks/train").glob("*.png"))[:3]:
        (masks / path.name).write_bytes(path.read_bytes())
    bad = sorted(masks.glob("*.png"))[0]
    Image.new("L", (10, 10), 7).save(bad)  # wrong size and a label outside the classes
    code = main(["data", "check", "--images", str(people / "images/train"), "--masks", str(masks), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and bad.name in err and "problem:" in err


def test_data_pack_writes_shards(people, tmp_path, capsys) -> None:
    args = [
        "data",
        "pack",
        "--images",
        str(people / "images/train"),
        "--masks",
        str(people / "masks/train"),
        "-o",
        str(tmp_path),
        "--shard-size",
        "4",
        "-q",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def _copy_as_0_255(source: Path, target: Path) -> Path:
    """The people masks as 0/255 person masks, the format many datasets ship."""
    target.mkdir(parents=True)
    for path in source.rglob("*.png"):
        ids = np.asarray(Image.open(path))
        (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(ids == 1, 255, 0).astype(np.uint8)).save(target / path.relative_to(source))
    return target


def test_0_255_masks_read_as_ids_are_a_problem_and_a_warning(people, tmp_path, capsys) -> None:
    masks = _copy_as_0_255(people / "masks/val", tmp_path / "masks")
    images = str(people / "images/val")
    assert main(["data", "check", "--images", images, "--masks", str(masks), "-q"]) == 1
    assert "0/255 person masks, read them with --binary-255" in capsys.readouterr().err
    assert main(["data", "check", "--images", images, "--masks", str(masks), "--binary-255", "-q"]) == 0
    args = ["evaluate", "segformer_b0", "--images", images, "--masks", str(masks), "-q"]
    assert main(args) == 0
    assert "WARNING: the masks hold no pixel of any class but 'background'" in capsys.readouterr().err
    assert main([*args, "--binary-255"]) == 0
    assert "WARNING: the masks" not in capsys.readouterr().err


def test_data_check_checks_only_the_list_files_images(people, tmp_path, capsys) -> None:
    listed = tmp_path / "val.txt"
    first = sorted((people / "images/val").rglob("*.*"))[0].relative_to(people / "images/val")
    listed.write_text(f"\ufeff{first.as_posix()}\n")  # with the BOM Notepad and Excel write
    folders = ["--images", str(people / "images/val"), "--masks", str(people / "masks/val")]
    assert main(["data", "check", *folders, "--list-file", str(listed), "-q"]) == 0
    assert re.search(r"^\S+\s+1\s+0\s", capsys.readouterr().out, re.MULTILINE)  # 1 image checked, 0 bad
    listed.write_text(f"{first.as_posix()}\nnope\n")
    assert main(["data", "check", *folders, "--list-file", str(listed), "-q"]) == 1
    assert "val.txt:2: 'nope' matches no image" in capsys.readouterr().err


def test_evaluate_refuses_a_report_folder_it_cannot_make_before_running(people, tmp_path, capsys) -> None:
    taken = tmp_path / "report"
    taken.write_text("not a folder")
    folders = ["--images", str(people / "images/val"), "--masks", str(people / "masks/val")]
    assert main(["evaluate", "no-such-model.safetensors", *folders, "--out", str(taken), "-q"]) == 1
    assert capsys.readouterr().err.strip() == f"error: --out {taken}: is a file, not a folder"
