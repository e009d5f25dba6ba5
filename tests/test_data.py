"""The data layer: masks and palettes, folder and COCO datasets, shards, transforms and the dataset checker.

Everything runs on small synthetic files written to tmp_path; each bad-data path must give a one-line error that
names the file at fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from peopleseg.data.check import check_dataset
from peopleseg.data.coco import CocoPersonDataset
from peopleseg.data.folder import SegmentationFolder
from peopleseg.data.masks import Palette, read_mask
from peopleseg.data.shards import ShardDataset, pack_shards
from peopleseg.data.transforms import AugmentConfig, eval_transform, train_transform
from peopleseg.errors import ConfigError, DataError

PALETTE = [
    {"seg_class": "background", "label_id": 0, "rgb": [0, 0, 0]},
    {"seg_class": "person", "label_id": 1, "rgb": [255, 0, 0]},
    {"seg_class": "unknown", "label_id": 255, "rgb": [255, 255, 255]},
]
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # mean/std that leave pixels on the 0–255 scale


def write(path: Path, array: np.ndarray, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return path


def label_map(height: int, width: int, seed: int = 0, block: int = 8, ignore: bool = True) -> np.ndarray:
    """Random blocks of 0 and 1 (and some 255): every boundary a transform could misplace."""
    rng = np.random.default_rng(seed)
    choices = [0, 1, 255] if ignore else [0, 1]
    probabilities = [0.45, 0.45, 0.1] if ignore else [0.5, 0.5]
    blocks = rng.choice(choices, size=(-(-height // block), -(-width // block)), p=probabilities).astype(np.uint8)
    return np.kron(blocks, np.ones((block, block), np.uint8))[:height, :width]


def colour_for(labels: np.ndarray) -> np.ndarray:
    """Red where the label is 1, blue where 0, green where ignored: a pixel's colour says its label."""
    image = np.zeros((*labels.shape, 3), np.uint8)
    image[labels == 1] = (255, 0, 0)
    image[labels == 0] = (0, 0, 255)
    image[labels == 255] = (0, 255, 0)
    return image


def make_folder(root: Path, names: list[str], size: tuple[int, int] = (24, 32)) -> tuple[Path, Path]:
    """images/<name> (JPEG or PNG as the name says) and masks/<stem>.png; pixels differ per image."""
    images, masks = root / "images", root / "masks"
    for i, name in enumerate(names):
        labels = label_map(*size, seed=i)
        write(images / name, colour_for(labels), **({"quality": 95} if name.endswith(".jpg") else {}))
        write((masks / name).with_suffix(".png"), labels)
    return images, masks


def make_split(root: Path, images_at: str, masks_at: str, names: list[str]) -> tuple[Path, Path]:
    """A folder pair at root/images_at and root/masks_at (e.g. "images/train" and "masks/train")."""
    images, masks = make_folder(root.parent / f".{root.name}-staging", names)
    for source, target in ((images, root / images_at), (masks, root / masks_at)):
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
    return root / images_at, root / masks_at


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---- masks and palettes ------------------------------------------------------------------------------------------


def test_read_mask_label_ids_and_range(tmp_path: Path) -> None:
    labels = np.array([[0, 1], [255, 1]], np.uint8)
    assert np.array_equal(read_mask(write(tmp_path / "m.png", labels), None, 2), labels)
    indexed = Image.fromarray(labels, mode="L").convert("P")  # VOC-style: the palette indices are the ids
    indexed.save(tmp_path / "p.png")
    assert np.array_equal(read_mask(tmp_path / "p.png", None, 2), labels)
    write(tmp_path / "x.png", np.array([[0, 7]], np.uint8))
    with pytest.raises(DataError) as exc:
        read_mask(tmp_path / "x.png", None, 2)
    assert one_line(exc) == f"{tmp_path / 'x.png'}: label value 7 outside 0..1 (and 255 for ignore)"
    with pytest.raises(DataError, match="no such mask file"):
        read_mask(tmp_path / "none.png", None, 2)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad\.png"):
        read_mask(tmp_path / "bad.png", None, 2)


def test_binary_255_is_explicit(tmp_path: Path) -> None:
    path = write(tmp_path / "b.png", np.array([[0, 255]], np.uint8))
    assert read_mask(path, None, 2).tolist() == [[0, 255]]  # by default 255 is ignore
    assert read_mask(path, None, 2, binary_255=True).tolist() == [[0, 1]]
    write(tmp_path / "soft.png", np.array([[0, 128, 255]], np.uint8))
    with pytest.raises(DataError, match=r"soft.png: binary_255 masks hold only 0 and 255, found \[128\]"):
        read_mask(tmp_path / "soft.png", None, 2, binary_255=True)
    with pytest.raises(ConfigError, match="binary_255"):
        read_mask(path, Palette.from_config(PALETTE), 2, binary_255=True)


def test_palette_maps_colours_and_names_unknown_ones(tmp_path: Path) -> None:
    palette = Palette.from_config(PALETTE)
    rgb = np.array([[[0, 0, 0], [255, 0, 0], [255, 255, 255]]], np.uint8)
    assert read_mask(write(tmp_path / "c.png", rgb), palette, 2).tolist() == [[0, 1, 255]]
    # palette-mode PNGs are mapped by their colours
    write(tmp_path / "c.png", rgb).rename(tmp_path / "tmp.png")
    Image.open(tmp_path / "tmp.png").convert("P", palette=Image.Palette.ADAPTIVE, colors=3).save(tmp_path / "cp.png")
    assert read_mask(tmp_path / "cp.png", palette, 2).tolist() == [[0, 1, 255]]
    # TAO's grey masks: a grey value v is the colour (v, v, v)
    grey = Palette.from_config([{"seg_class": "bg", "label_id": 0, "rgb": [0, 0, 0]}, {**PALETTE[1], "rgb": [255] * 3}])
    assert read_mask(write(tmp_path / "g.png", np.array([[0, 255]], np.uint8)), grey, 2).tolist() == [[0, 1]]
    write(tmp_path / "u.png", np.array([[[0, 0, 0], [0, 128, 0]]], np.uint8))
    with pytest.raises(DataError) as exc:
        read_mask(tmp_path / "u.png", palette, 2)
    assert one_line(exc) == f"{tmp_path / 'u.png'}: colour [0, 128, 0] (1 pixels) is not in the palette"
    # a coloured mask without a palette cannot be guessed
    with pytest.raises(DataError, match=r"c\.png: colour mask needs a palette"):
        read_mask(write(tmp_path / "c.png", rgb), None, 2)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([{"seg_class": "a", "label_id": 0}], r"palette\[0\].rgb: missing"),
        ([{"seg_class": "a", "label_id": 0, "rgb": [0, 0]}], r"palette\[0\].rgb: expected 3 integers"),
        ([{"seg_class": "a", "label_id": 300, "rgb": [0, 0, 0]}], r"palette\[0\].label_id: expected an integer"),
        ([{"seg_class": "a", "label_id": 0, "rgb": [0, 0, 0], "colour": 1}], r"palette\[0\]: unknown key 'colour'"),
        ([PALETTE[0], {**PALETTE[1], "rgb": [0, 0, 0]}], r"palette: rgb \[0, 0, 0\] is given to both"),
        ([], "palette: expected a non-empty list"),
    ],
)
def test_palette_config_errors_name_the_field(config: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Palette.from_config(config)


# ---- folder datasets ---------------------------------------------------------------------------------------------


def test_folder_sample_contract(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["a.jpg", "b.png", "sub/c.png"])
    dataset = SegmentationFolder(images, masks)
    assert len(dataset) == 3 and dataset.class_count == 2 and dataset.subsets == []
    sample = dataset[1]
    assert set(sample) == {"image", "mask", "path", "subset"}
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (24, 32, 3)
    assert sample["mask"].dtype == np.uint8 and sample["mask"].shape == (24, 32)
    assert sample["path"] == str(images / "b.png") and sample["subset"] == ""
    assert np.array_equal(sample["mask"], label_map(24, 32, seed=1))
    assert dataset[2]["path"] == str(images / "sub" / "c.png")

    def transform(image: np.ndarray, mask: np.ndarray) -> dict:
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask).long(), "extra": 1}

    out = SegmentationFolder(images, masks, transform=transform)[0]
    assert set(out) == {"image", "mask", "path", "subset"} and out["mask"].dtype == torch.int64
    assert out["path"] == str(images / "a.jpg")


def test_folder_layout_errors(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["a.png", "b.png", "c.png"])
    (masks / "b.png").unlink()
    (masks / "c.png").unlink()
    with pytest.raises(DataError) as exc:
        SegmentationFolder(images, masks)
    assert one_line(exc) == f"{masks / 'b.png'}: missing mask for {images / 'b.png'} (2 of 3 images have no mask)"
    (tmp_path / "images" / "val").mkdir()
    with pytest.raises(DataError) as exc:
        SegmentationFolder(tmp_path / "images" / "val", masks)
    assert one_line(exc) == f"{tmp_path / 'images' / 'val'}: no images found"
    with pytest.raises(DataError, match="nowhere: no such folder"):
        SegmentationFolder(tmp_path / "nowhere", masks)
    write(images / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="shares its mask name"):
        SegmentationFolder(images, None)


def test_folder_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["a.png"])
    write(masks / "a.png", np.zeros((10, 10), np.uint8))
    dataset = SegmentationFolder(images, masks)  # sizes are only known once read
    with pytest.raises(DataError) as exc:
        dataset[0]
    assert one_line(exc) == f"{masks / 'a.png'}: mask is 10x10 but image {images / 'a.png'} is 32x24"


def test_a_mask_drawn_on_an_exif_rotated_photos_stored_pixels_says_so(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown (and read) turned a quarter: portrait
    Image.new("RGB", (32, 24)).save(images / "a.jpg", exif=exif)
    write(masks / "a.png", np.zeros((24, 32), np.uint8))  # drawn on the stored pixels
    with pytest.raises(DataError) as exc:
        SegmentationFolder(images, masks)[0]
    assert one_line(exc).endswith(
        "is 24x32 (turned on its side: images are read upright by their EXIF orientation, so draw masks upright)"
    )
    report = check_dataset(SegmentationFolder(images, masks), progress=False)
    assert "turned on its side" in report.problems[0]


def test_folder_list_file(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["a.png", "b.jpg", "x/c.png", "x/d.png"])
    (tmp_path / "train.txt").write_text("# TAO-style split\nx/d\n\nb.jpg\nc\n./a\n")
    dataset = SegmentationFolder(images, masks, list_file=tmp_path / "train.txt")
    assert [Path(dataset[i]["path"]).name for i in range(len(dataset))] == ["d.png", "b.jpg", "c.png", "a.png"]
    (tmp_path / "bad.txt").write_text("a\nzzz\n")
    with pytest.raises(DataError) as exc:
        SegmentationFolder(images, masks, list_file=tmp_path / "bad.txt")
    assert one_line(exc).startswith(f"{tmp_path / 'bad.txt'}:2: 'zzz' matches no image under")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match=r"empty\.txt: lists no images"):
        SegmentationFolder(images, masks, list_file=tmp_path / "empty.txt")


def test_folder_subsets_from_subfolders_and_csv(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["5ft/a.png", "5ft/b.png", "8ft/c.png", "top.png"])
    dataset = SegmentationFolder(images, masks, subset_from_subfolder=True)
    assert dataset.subsets == ["5ft", "8ft"]
    assert [dataset[i]["subset"] for i in range(4)] == ["5ft", "5ft", "8ft", ""]
    (tmp_path / "subsets.csv").write_text("image,subset\n5ft/a.png,indoor\nc,outdoor\nnot-here,ignored\n")
    dataset = SegmentationFolder(images, masks, subsets_csv=tmp_path / "subsets.csv")
    assert dataset.subsets == ["indoor", "outdoor"]
    assert [s.subset for s in dataset.samples] == ["indoor", "", "outdoor", ""]
    (tmp_path / "cols.csv").write_text("file,group\na,x\n")
    with pytest.raises(DataError, match=r"cols.csv: needs columns 'image' and 'subset', found \['file', 'group'\]"):
        SegmentationFolder(images, masks, subsets_csv=tmp_path / "cols.csv")
    with pytest.raises(ConfigError, match="not both"):
        SegmentationFolder(images, masks, subsets_csv=tmp_path / "subsets.csv", subset_from_subfolder=True)


def test_list_files_and_csvs_with_a_bom_absolute_entries_and_no_subset_named_all(tmp_path: Path, monkeypatch) -> None:
    images, masks = make_folder(tmp_path, ["5ft/a.png", "all/b.png"])
    monkeypatch.chdir(tmp_path)
    listed = tmp_path / "val.txt"
    listed.write_text(f"\ufeff5ft/a\n{tmp_path / 'images' / 'all' / 'b.png'}\n", encoding="utf-8")
    dataset = SegmentationFolder("images", "masks", list_file=listed)  # a relative root, an absolute entry
    assert [Path(s.image).name for s in dataset.samples] == ["a.png", "b.png"]
    (tmp_path / "subsets.csv").write_text("\ufeffimage,subset\n5ft/a.png,near\n", encoding="utf-8")
    assert SegmentationFolder(images, masks, subsets_csv=tmp_path / "subsets.csv").subsets == ["near"]
    with pytest.raises(DataError, match=r"all: a subset folder may not be named 'all'"):
        SegmentationFolder(images, masks, subset_from_subfolder=True)
    (tmp_path / "all.csv").write_text("image,subset\n5ft/a.png,all\n")
    with pytest.raises(DataError, match=r"all.csv:2: a subset may not be named 'all'"):
        SegmentationFolder(images, masks, subsets_csv=tmp_path / "all.csv")


def test_folder_unlabelled_palette_and_split_dirs(tmp_path: Path) -> None:
    images, _ = make_folder(tmp_path, ["a.png"])
    assert (SegmentationFolder(images, None)[0]["mask"] == 255).all()
    write(tmp_path / "colour" / "a.png", np.array([[[255, 0, 0]] * 32] * 24, np.uint8))
    assert (SegmentationFolder(images, tmp_path / "colour", palette=PALETTE)[0]["mask"] == 1).all()
    with pytest.raises(ConfigError, match=r"palette\[1\].label_id: 1 is not below num_classes 1"):
        SegmentationFolder(images, tmp_path / "colour", palette=PALETTE, num_classes=1)
    make_split(tmp_path / "root", "images/train", "masks/train", ["a.png"])
    make_split(tmp_path / "root", "val/images", "val/masks", ["a.png", "b.png"])
    assert len(SegmentationFolder.from_split_dirs(tmp_path / "root", "train")) == 1
    assert len(SegmentationFolder.from_split_dirs(tmp_path / "root", "val")) == 2
    with pytest.raises(DataError, match="no 'test' split: expected images/test"):
        SegmentationFolder.from_split_dirs(tmp_path / "root", "test")


def test_folder_skip_bad(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["a.png", "b.png", "c.png"])
    (images / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"b\.png"):
        SegmentationFolder(images, masks)[1]
    dataset = SegmentationFolder(images, masks, skip_bad=True)
    assert dataset[1]["path"] == str(images / "c.png")  # the next index stands in
    assert dataset[0]["path"] == str(images / "a.png")
    assert dataset.skipped == 1


# ---- COCO --------------------------------------------------------------------------------------------------------


def write_coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "coco" / "images"
    write(images / "one.jpg", np.full((40, 60, 3), 128, np.uint8))
    write(images / "empty.jpg", np.full((20, 30, 3), 128, np.uint8))
    crowd = np.zeros((40, 60), np.uint8, order="F")
    crowd[30:40, 40:60] = 1
    compressed = mask_utils.encode(np.asfortranarray(crowd))
    compressed["counts"] = compressed["counts"].decode()
    dog = np.zeros((40, 60), np.uint8)
    dog[0:5, 0:5] = 1
    data = {
        "images": [
            {"id": 1, "file_name": "one.jpg", "width": 60, "height": 40},
            {"id": 2, "file_name": "empty.jpg", "width": 30, "height": 20},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            # a person: the rectangle x 10..30, y 5..25 as a polygon
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[10, 5, 30, 5, 30, 25, 10, 25]]},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": compressed},
            {"id": 12, "image_id": 1, "category_id": 18, "iscrowd": 0, "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
        ],
    }
    path = tmp_path / "coco" / "instances_val.json"
    path.write_text(json.dumps(data))
    return path, images


def test_coco_polygons_crowd_and_empty_images(tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path)
    dataset = CocoPersonDataset(annotations, images)
    assert len(dataset) == 2 and dataset.class_count == 2 and dataset.subsets == []
    sample = dataset[0]
    mask = sample["mask"]
    assert mask.shape == (40, 60) and sample["image"].shape == (40, 60, 3) and sample["subset"] == ""
    assert (mask[7:23, 12:28] == 1).all()  # inside the polygon
    assert (mask[30:40, 40:60] == 255).all()  # the crowd region is ignored
    assert (mask[0:5, 0:5] == 0).all()  # a dog is background
    assert set(np.unique(mask).tolist()) == {0, 1, 255}
    assert (dataset[1]["mask"] == 0).all()
    assert len(CocoPersonDataset(annotations, images, only_with_people=True)) == 1


def test_coco_errors_name_the_file(tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path)
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(DataError) as exc:
        CocoPersonDataset(tmp_path / "broken.json", images)
    assert one_line(exc).startswith(f"{tmp_path / 'broken.json'}: not valid JSON")
    with pytest.raises(DataError, match="no category named 'cyclist'"):
        CocoPersonDataset(annotations, images, categories=["cyclist"])
    (images / "empty.jpg").unlink()
    with pytest.raises(DataError) as exc:
        CocoPersonDataset(annotations, images)
    assert one_line(exc) == f"{images / 'empty.jpg'}: no such image (1 of 2 images missing)"


# ---- shards ------------------------------------------------------------------------------------------------------


def test_shards_round_trip(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["s1/a.jpg", "s1/b.png", "s2/c.jpg", "s2/d.png", "s2/e.bmp"])
    dataset = SegmentationFolder(images, masks, subset_from_subfolder=True)
    shards = pack_shards(dataset, tmp_path / "shards", max_samples_per_shard=3, progress=False)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-index.json",
    ]
    stream = ShardDataset(tmp_path / "shards", shuffle_buffer=0)
    assert stream.sample_count == 5 and stream.subsets == ["s1", "s2"] and stream.class_count == 2
    read = {sample["path"]: sample for sample in stream}
    assert sorted(read) == sorted(str(s.image) for s in dataset.samples)
    for i in range(len(dataset)):
        original, back = dataset[i], read[dataset[i]["path"]]
        assert back["subset"] == original["subset"]
        assert np.array_equal(back["mask"], original["mask"])
        # JPEG and PNG bytes are kept as they were, so even JPEG pixels come back exactly; BMP is stored as PNG
        assert np.array_equal(back["image"], original["image"])
    # brace patterns and explicit lists work too, and shuffling keeps every sample once
    pattern = str(tmp_path / "shards" / "shard-{000000..000001}.tar")
    assert len(list(ShardDataset(pattern, shuffle_buffer=10, seed=3))) == 5
    with pytest.raises(DataError, match=r"shard-000009\.tar: no such shard"):
        ShardDataset([str(tmp_path / "shards" / "shard-000009.tar")])


def test_shards_split_across_workers(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, [f"{i}.png" for i in range(6)], size=(8, 8))
    pack_shards(SegmentationFolder(images, masks), tmp_path / "shards", max_samples_per_shard=2, progress=False)
    stream = ShardDataset(
        tmp_path / "shards", shuffle_buffer=4, transform=eval_transform(8, ZERO, ONE), resampled=False
    )
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    paths = [sample["path"] for sample in loader]
    assert sorted(paths) == sorted(str(images / f"{i}.png") for i in range(6))  # each sample exactly once
    sample = next(iter(stream))
    assert sample["image"].dtype == torch.float32 and sample["mask"].dtype == torch.int64


def test_shards_split_across_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, masks = make_folder(tmp_path, [f"{i}.png" for i in range(8)], size=(8, 8))
    pack_shards(SegmentationFolder(images, masks), tmp_path / "shards", max_samples_per_shard=2, progress=False)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        stream = ShardDataset(tmp_path / "shards", seed=7)
        stream.set_epoch(3)
        seen.append({sample["path"] for sample in stream})
    assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]  # the ranks partition the shards
    monkeypatch.setenv("WORLD_SIZE", "5")
    with pytest.raises(DataError, match="4 shards cannot feed 5 ranks"):
        next(iter(ShardDataset(tmp_path / "shards")))
    resampled = iter(ShardDataset(tmp_path / "shards", resampled=True))
    assert len([next(resampled) for _ in range(20)]) == 20  # endless: the trainer bounds the epoch


def test_shard_labels_beyond_the_models_classes_are_an_error_naming_the_sample(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["a.png", "b.png"], size=(8, 8))
    write(masks / "b.png", np.full((8, 8), 3, np.uint8))  # a four-class mask
    pack_shards(SegmentationFolder(images, masks, num_classes=4), tmp_path / "shards", progress=False)
    assert len(list(ShardDataset(tmp_path / "shards", shuffle_buffer=0, num_classes=4))) == 2
    with pytest.raises(DataError, match=r"shard-000000\.tar: sample 000000001: label value 3 outside 0\.\.1"):
        list(ShardDataset(tmp_path / "shards", shuffle_buffer=0, num_classes=2))


def test_a_resumed_shard_stream_does_not_replay_the_first_runs_samples(tmp_path: Path) -> None:
    from peopleseg.engine.module import ResumePosition

    images, masks = make_folder(tmp_path, [f"{i}.png" for i in range(12)], size=(8, 8))
    pack_shards(SegmentationFolder(images, masks), tmp_path / "shards", max_samples_per_shard=2, progress=False)

    def first(step: int, count: int = 8) -> list[str]:
        stream = ShardDataset(tmp_path / "shards", shuffle_buffer=6, seed=1, resampled=True)
        stream.stream_position = ResumePosition()
        stream.stream_position.step = step
        samples = iter(stream)
        return [next(samples)["path"] for _ in range(count)]

    assert first(0) == first(0)  # seeded: the same run draws the same stream
    assert first(500) == first(500) and first(500) != first(0)  # resumed at step 500: a stream not yet seen


class FailsAt(torch.utils.data.Dataset):
    """A dataset whose sample `bad` cannot be read, as a crash halfway through packing."""

    def __init__(self, inner: SegmentationFolder, bad: int | None) -> None:
        self.inner, self.bad = inner, bad

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        if index == self.bad:
            raise DataError(f"sample {index}: unreadable")
        return self.inner[index]


def test_shards_are_atomic_and_resumable(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, [f"{i}.png" for i in range(5)], size=(8, 8))
    dataset = SegmentationFolder(images, masks)
    out = tmp_path / "shards"
    with pytest.raises(DataError, match="sample 3"):
        pack_shards(FailsAt(dataset, 3), out, max_samples_per_shard=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-index.json"]  # no half shard
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    shards = pack_shards(FailsAt(dataset, None), out, max_samples_per_shard=2, progress=False)
    assert len(shards) == 3 and (out / "shard-000000.tar").stat().st_mtime_ns == first  # kept, not rewritten
    assert len(list(ShardDataset(out, shuffle_buffer=0))) == 5
    # a different dataset must not be appended to these shards
    with pytest.raises(DataError, match="written for 5 samples, this dataset has 4"):
        pack_shards(SegmentationFolder(images, masks, list_file=_list(tmp_path, 4)), out, progress=False)
    assert len(pack_shards(dataset, out, max_samples_per_shard=5, resume=False, progress=False)) == 1
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar"]


def _list(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "list.txt"
    path.write_text("".join(f"{i}\n" for i in range(count)))
    return path


# ---- transforms --------------------------------------------------------------------------------------------------


def assert_aligned(image: torch.Tensor, mask: torch.Tensor) -> None:
    """Each labelled pixel's colour must say its label: red dominant for 1, blue for 0.

    Bilinear images blend colours where three blocks meet, so a few corner pixels may disagree with the nearest
    label (about 0.1%); a mask half a pixel off the image (OpenCV's plain INTER_NEAREST) gets about 9% wrong.
    """
    red, blue = image[0].numpy(), image[2].numpy()
    labels = mask.numpy()
    wrong = ((labels == 1) & (red < blue)) | ((labels == 0) & (blue < red))
    assert wrong.sum() <= 0.01 * (labels != 255).sum()
    assert set(np.unique(labels).tolist()) <= {0, 1, 255}


def test_mask_stays_aligned_through_train_transform() -> None:
    labels = label_map(150, 230, seed=5, block=6)
    image = colour_for(labels)
    config = AugmentConfig(crop_size=(96, 128), photometric=False)
    transform = train_transform(config, ZERO, ONE)
    for _ in range(40):  # random scales (up and down), crops and flips
        out = transform(image=image, mask=labels)
        assert out["image"].shape == (3, 96, 128) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (96, 128) and out["mask"].dtype == torch.int64
        assert_aligned(out["image"], out["mask"])
    # a flip must move the mask with the image
    still = AugmentConfig(crop_size=(150, 230), scale_range=(1, 1), cat_max_ratio=1.0, hflip=1.0, photometric=False)
    out = train_transform(still, ZERO, ONE)(image=image, mask=labels)
    assert np.array_equal(out["mask"].numpy(), labels[:, ::-1])
    assert np.array_equal(out["image"].numpy().transpose(1, 2, 0), image[:, ::-1].astype(np.float32))


def test_photometric_changes_only_the_image() -> None:
    labels = label_map(64, 64, seed=1)
    image = np.random.default_rng(0).integers(40, 200, (64, 64, 3), dtype=np.uint8)
    config = AugmentConfig(crop_size=(64, 64), scale_range=(1, 1), cat_max_ratio=1.0, hflip=0.0)
    transform = train_transform(config, ZERO, ONE)
    changed = 0
    for _ in range(10):
        out = transform(image=image, mask=labels)
        assert np.array_equal(out["mask"].numpy(), labels)
        changed += not np.array_equal(out["image"].numpy().transpose(1, 2, 0), image.astype(np.float32))
    assert changed >= 5


def test_small_images_are_padded_with_ignore() -> None:
    labels = np.ones((100, 100), np.uint8)
    image = np.full((100, 100, 3), 200, np.uint8)
    config = AugmentConfig(crop_size=(128, 128), scale_range=(0.5, 0.5), photometric=False)
    out = train_transform(config, (100.0, 100.0, 100.0), (50.0, 50.0, 50.0))(image=image, mask=labels)
    mask, pixels = out["mask"].numpy(), out["image"].numpy()
    assert (mask[:64, :64] == 1).all() and (mask[64:] == 255).all() and (mask[:, 64:] == 255).all()
    assert np.allclose(pixels[:, :64, :64], 2.0) and (pixels[:, 64:] == 0).all()  # pad is 0 once normalised


def test_cat_max_ratio_rejects_one_class_crops() -> None:
    labels = np.zeros((100, 400), np.uint8)
    labels[:, 300:] = 1  # a person occupies the right quarter
    image = colour_for(labels)

    def balanced_share(ratio: float) -> float:
        config = AugmentConfig(crop_size=(100, 100), scale_range=(1, 1), cat_max_ratio=ratio, photometric=False)
        transform = train_transform(config, ZERO, ONE)
        shares = [transform(image=image, mask=labels)["mask"].float().mean().item() for _ in range(150)]
        return float(np.mean([0.25 < s < 0.75 for s in shares]))

    assert balanced_share(1.0) < 0.35
    assert balanced_share(0.75) > 0.6


def test_transform_randomness_follows_torch_seed_and_workers() -> None:
    image = colour_for(label_map(120, 160, seed=2))
    labels = label_map(120, 160, seed=2)
    torch.manual_seed(1)  # a run that seeds torch gets the same augmentations every time
    first = train_transform(AugmentConfig(crop_size=(64, 64)), ZERO, ONE)(image=image, mask=labels)["mask"]
    transform = train_transform(AugmentConfig(crop_size=(64, 64)), ZERO, ONE)
    assert torch.equal(transform(image=image, mask=labels)["mask"], first)

    class Same(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> torch.Tensor:
            return transform(image=image, mask=labels)["mask"]

    loader = torch.utils.data.DataLoader(Same(), batch_size=None, num_workers=2)
    masks = list(loader)  # samples 0, 2 from worker 0 and 1, 3 from worker 1
    assert not torch.equal(masks[0], masks[1])  # the workers did not inherit one random stream


def test_eval_transform_resizes_image_and_mask() -> None:
    labels = label_map(90, 120, seed=3)
    image = colour_for(labels)
    out = eval_transform((64, 96), ZERO, ONE)(image=image, mask=labels)
    assert out["image"].shape == (3, 64, 96) and out["mask"].shape == (64, 96)
    assert_aligned(out["image"], out["mask"])
    box = eval_transform(64, ZERO, ONE, policy="letterbox")(image=image, mask=labels)
    assert box["mask"].shape == (64, 64)
    assert (box["mask"][:8] == 255).all() and (box["mask"][-8:] == 255).all()  # 48 rows of content, centred
    assert_aligned(box["image"], box["mask"])
    with pytest.raises(ConfigError, match="policy: 'sliding'"):
        eval_transform(64, ZERO, ONE, policy="sliding")
    with pytest.raises(ConfigError, match=r"augment\.scale_range"):
        AugmentConfig(scale_range=(2.0, 1.0))


# ---- check_dataset -----------------------------------------------------------------------------------------------


def test_check_reports_every_problem(tmp_path: Path) -> None:
    root = tmp_path / "data"
    names = ["5ft/a.png", "5ft/b.png", "8ft/c.png", "8ft/d.jpg"]
    images, masks = make_split(root, "images/train", "masks/train", names)
    (images / "5ft" / "b.png").write_bytes(b"garbage")  # unreadable image
    (masks / "8ft" / "c.png").unlink()  # missing mask
    write(masks / "8ft" / "d.png", np.zeros((5, 5), np.uint8))  # wrong size
    write(images / "5ft" / "e.png", np.zeros((4, 4, 3), np.uint8))
    write(masks / "5ft" / "e.png", np.array([[0, 1, 7, 9]] * 4, np.uint8))  # values outside the class set
    (root / "images" / "val").mkdir()
    (root / "masks" / "val").mkdir()  # an empty split

    report = check_dataset(root, 2, subset_from_subfolder=True, progress=False)
    assert not report.ok
    expected = [
        f"{images / '5ft' / 'b.png'}: not an image",
        f"{masks / '5ft' / 'e.png'}: label value 7, 9 outside 0..1 (and 255 for ignore)",
        f"{masks / '8ft' / 'c.png'}: missing mask for {images / '8ft' / 'c.png'}",
        f"{masks / '8ft' / 'd.png'}: mask is 5x5 but image {images / '8ft' / 'd.jpg'} is 32x24",
        f"{root / 'images' / 'val'}: no images found",
    ]
    assert len(report.problems) == len(expected)
    for line, start in zip(sorted(report.problems), sorted(expected), strict=True):
        assert line.startswith(start) and "\n" not in line
    train = report.splits["train"]
    assert train.images == 5 and train.bad_images == 4 and train.subsets == {"5ft": 3, "8ft": 2}
    good = label_map(24, 32, seed=0)
    # class balance counts only the one clean sample, a.png
    assert train.class_pixels == [int((good == 0).sum()), int((good == 1).sum())]
    assert train.ignore_pixels == int((good == 255).sum())
    summary = report.summary()
    assert "split" in summary and "person" in summary and "5ft: 3" in summary and "5 problem(s):" in summary


def test_check_clean_dataset_and_coco(tmp_path: Path) -> None:
    images, masks = make_folder(tmp_path, ["a.png", "b.jpg"])
    report = check_dataset(SegmentationFolder(images, masks), progress=False)
    assert report.ok and "no problems found" in report.summary()
    assert sum(report.splits[str(images)].class_pixels) + report.splits[str(images)].ignore_pixels == 2 * 24 * 32
    annotations, coco_images = write_coco(tmp_path)
    coco = check_dataset({"val": CocoPersonDataset(annotations, coco_images)}, progress=False)
    assert coco.ok and coco.splits["val"].class_pixels[1] == 20 * 20 and coco.splits["val"].ignore_pixels == 200


def test_no_stray_files(tmp_path: Path) -> None:
    """Atomic writes leave no temporary files behind on success."""
    images, masks = make_folder(tmp_path, ["a.png"])
    pack_shards(SegmentationFolder(images, masks), tmp_path / "out", progress=False)
    assert not [name for name in os.listdir(tmp_path / "out") if name.startswith(".")]


# --- copy-paste ----------------------------------------------------------------------------------------------------


def _scene(person_id: int, height: int = 60, width: int = 80) -> dict:
    """A grey picture with one red 'person' block (label `person_id`) ringed by unsure pixels."""
    image = np.full((height, width, 3), 90, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[8:52, 28:52] = 255
    mask[10:50, 30:50] = person_id
    image[10:50, 30:50] = (250, 10, 10)
    return {"image": image, "mask": mask, "path": "donor.png", "subset": ""}


@pytest.mark.parametrize("person_id", [1, 2])
def test_copy_paste_moves_the_person_label_and_its_pixels(person_id: int) -> None:
    from peopleseg.data.copy_paste import paste_person

    sample = {
        "image": np.full((60, 80, 3), 30, np.uint8),
        "mask": np.zeros((60, 80), np.uint8),
        "path": "",
        "subset": "",
    }
    pasted = paste_person(dict(sample), _scene(person_id), np.random.default_rng(0), person_id=person_id)
    person = pasted["mask"] == person_id
    assert person.sum() > 100
    red = pasted["image"][person]
    assert (red[:, 0] > 150).mean() > 0.9 and (red[:, 1] < 100).mean() > 0.9  # its pixels came with its label
    assert (pasted["image"][pasted["mask"] == 0] == 30).all()  # the background is the sample's
    # A donor without that label gives nothing to paste.
    untouched = paste_person(dict(sample), _scene(person_id), np.random.default_rng(0), person_id=3)
    assert not untouched["mask"].any()


def test_a_bad_copy_paste_donor_is_an_error_unless_bad_samples_are_skipped(tmp_path: Path) -> None:
    from peopleseg.engine.train import SeededDraws

    images, masks = make_folder(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (images / "b.jpg").write_bytes(b"not a jpeg")  # only ever a donor below: the sample drawn is a or c
    strict = SegmentationFolder(images, masks)
    draws = SeededDraws(strict, seed=0, copy_paste=1.0)

    def donor(draw: int) -> int:  # as SeededDraws draws it: whether to paste, then the donor
        rng = np.random.default_rng((0, draw, 1))
        rng.random()
        return int(rng.integers(3))

    draw = next(d for d in range(60) if donor(d) == 1 and d % 3 != 1)  # a good sample with the bad donor
    with pytest.raises(DataError, match=r"b\.jpg"):
        draws[draw]
    lenient = SegmentationFolder(images, masks, skip_bad=True)
    sample = SeededDraws(lenient, seed=0, copy_paste=1.0)[draw]
    assert sample["path"].endswith(("a.jpg", "c.jpg")) and lenient.skipped == 1
