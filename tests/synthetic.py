"""A small synthetic people dataset: upright blobs ("people") on textured backgrounds, as folder datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def person_scene(rng: np.random.Generator, size: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 200, 3)
    image = (base + rng.normal(0, 18, (height, width, 3))).clip(0, 255)
    image += 20 * np.sin(xx / rng.uniform(3, 9))[..., None]  # texture, so colour alone is not the answer
    mask = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.1, 0.9) * width
        ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.05, 0.1) * width
        body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        head = ((yy - (cy - ry * 1.15)) / (rx * 0.8)) ** 2 + ((xx - cx) / (rx * 0.8)) ** 2 <= 1
        person = body | head
        image[person] = rng.integers(0, 256, 3) * 0.3 + image[person] * 0.2 + 120
        mask[person] = 1
    return image.clip(0, 255).astype(np.uint8), mask


def write_people_dataset(root: Path, train: int = 24, val: int = 8, seed: int = 0, subsets: bool = False) -> Path:
    """root/images/{train,val}/… and root/masks/{train,val}/… (val split into near/far subfolders if `subsets`)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            image, mask = person_scene(rng)
            folder = f"{split}/{'near' if index % 2 else 'far'}" if subsets and split == "val" else split
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            (root / "masks" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / folder / f"{split}_{index:03d}.jpg", quality=95)
            Image.fromarray(mask).save(root / "masks" / folder / f"{split}_{index:03d}.png")
    return root
