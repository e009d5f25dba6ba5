"""`peopleseg evaluate` and `peopleseg data check|pack` from the command line, on a synthetic people folder."""

from pathlib import Path

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
