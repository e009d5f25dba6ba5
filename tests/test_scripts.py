"""The default model's helper scripts: packing a dataset for a GPU machine, and averaging checkpoints."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from peopleseg.data.folder import SegmentationFolder
from peopleseg.models import build_model, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def write_pair(root: Path, key: str, size: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[:, size[0] // 2 :] = 1
    mask[: size[1] // 4] = 255
    (root / "images" / key).parent.mkdir(parents=True, exist_ok=True)
    (root / "masks" / key).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{key}.jpg")
    Image.fromarray(mask).save(root / "masks" / f"{key}.png")
    return mask


def test_packing_shrinks_images_keeps_mask_ids_and_resumes(tmp_path) -> None:
    source = tmp_path / "labels"
    write_pair(source, "street/a", (200, 120))
    write_pair(source, "street/b.0001", (40, 30))  # already small: kept at its size; a dot in its name
    write_pair(source, "street/b.0002", (40, 30))
    write_pair(source, "video/c", (200, 120))  # not listed: not packed
    (tmp_path / "train.txt").write_text("street/a.jpg\nstreet/b.0001.jpg\nstreet/b.0002.jpg\n")
    out = tmp_path / "packed"
    result = run_script(
        "pack_training_data.py", source / "images", source / "masks", out, "--list", tmp_path / "train.txt",
        "--max-side", 100, "--quality", 70,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "packed 3 images" in result.stdout
    assert (out / "train.txt").read_text().split() == ["street/a.webp", "street/b.0001.webp", "street/b.0002.webp"]
    assert Image.open(out / "images/street/a.webp").size == (100, 60)
    assert Image.open(out / "images/street/b.0002.webp").size == (40, 30)
    assert (out / "masks/street/b.0001.png").is_file()
    assert not (out / "images/video").exists()
    mask = np.array(Image.open(out / "masks/street/a.png"))
    assert mask.shape == (60, 100) and set(np.unique(mask)) == {0, 1, 255}
    # The packed folder trains as the original would: same list, same pairing.
    dataset = SegmentationFolder(out / "images", out / "masks", list_file=out / "train.txt")
    assert len(dataset) == 3 and dataset[0]["image"].shape == (60, 100, 3)
    # A re-run skips what is packed.
    stamp = (out / "images/street/a.webp").stat().st_mtime_ns
    again = run_script(
        "pack_training_data.py", source / "images", source / "masks", out, "--list", tmp_path / "train.txt",
        "--max-side", 100, "--quality", 70,
    )  # fmt: skip
    assert again.returncode == 0 and (out / "images/street/a.webp").stat().st_mtime_ns == stamp
    # ... and refuses other settings rather than mix two sizes in one folder.
    other = run_script(
        "pack_training_data.py", source / "images", source / "masks", out, "--list", tmp_path / "train.txt",
        "--max-side", 200,
    )  # fmt: skip
    assert other.returncode != 0 and "packed before with" in other.stderr


def test_packing_names_a_missing_mask(tmp_path) -> None:
    source = tmp_path / "labels"
    write_pair(source, "a", (50, 40))
    (source / "masks" / "a.png").unlink()
    (tmp_path / "train.txt").write_text("a\n")
    result = run_script("pack_training_data.py", source / "images", source / "masks", tmp_path / "out", "--list",
                        tmp_path / "train.txt")  # fmt: skip
    assert result.returncode != 0
    assert "train.txt: 1 images have no mask" in result.stderr and "Traceback" not in result.stderr


def test_averaging_checkpoints(tmp_path) -> None:
    torch.manual_seed(0)
    paths = []
    for index in range(2):
        model = build_model("segformer_b0", num_classes=2)
        paths.append(save_model(model, tmp_path / f"m{index}.safetensors"))
    result = run_script("average_weights.py", *paths, "-o", tmp_path / "avg.safetensors", "--fp16")
    assert result.returncode == 0, result.stderr
    first, second = (load_model(path).state_dict() for path in paths)
    averaged = load_model(tmp_path / "avg.safetensors").state_dict()
    key = "decode_head.linear_pred.weight"
    expected = ((first[key] + second[key]) / 2).half().float()
    assert torch.allclose(averaged[key].float(), expected, atol=1e-3)
    with safe_open(tmp_path / "avg.safetensors", "pt") as stored:
        assert stored.get_tensor(key).dtype == torch.float16
    # Different architectures cannot be averaged.
    save_model(build_model("segformer_b1", num_classes=2), tmp_path / "b1.safetensors")
    mixed = run_script("average_weights.py", paths[0], tmp_path / "b1.safetensors", "-o", tmp_path / "bad.safetensors")
    assert mixed.returncode != 0 and "does not match" in mixed.stderr
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize("script", ["pack_training_data.py", "average_weights.py"])
def test_scripts_explain_themselves(script) -> None:
    result = run_script(script, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_packing_names_a_corrupt_image_in_one_line(tmp_path) -> None:
    source = tmp_path / "labels"
    write_pair(source, "a", (50, 40))
    (source / "images" / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "train.txt").write_text("a\n")
    result = run_script("pack_training_data.py", source / "images", source / "masks", tmp_path / "out", "--list",
                        tmp_path / "train.txt")  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:") and "a.jpg" in result.stderr
    assert not list((tmp_path / "out").rglob("*.webp"))  # nothing half-written
