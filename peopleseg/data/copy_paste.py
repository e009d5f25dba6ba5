"""Copy-paste augmentation: a person cut out of one training image, pasted at a random size and place in another.

Our few scenes each have their own backgrounds; pasting people across them teaches the model that a person is a
person whatever stands behind them. The donor's unsure (255) pixels around its person travel along as unsure.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from peopleseg.data.masks import IGNORE_INDEX

MIN_DONOR_PIXELS = 400  # smaller regions are fragments, not people


def paste_person(
    sample: dict[str, Any],
    donor: dict[str, Any],
    rng: np.random.Generator,
    height_range: tuple[float, float] = (0.15, 0.8),
    max_upscale: float = 1.5,
    person_id: int = 1,
) -> dict[str, Any]:
    """`sample` with one of `donor`'s people (a random connected region of label `person_id`) pasted in; its
    pasted height is a random fraction (`height_range`) of the sample's height, but never more than `max_upscale`
    times its own (blown-up small people teach blur). Returns `sample` unchanged when the donor has none."""
    person = (donor["mask"] == person_id).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(person, connectivity=8)
    regions = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= MIN_DONOR_PIXELS]
    if not regions:
        return sample
    left, top, width, height = stats[int(rng.choice(regions)), :4]
    # A little margin keeps the region's unsure edge (255) with it.
    margin = max(2, round(0.05 * max(width, height)))
    y0, y1 = max(0, top - margin), min(person.shape[0], top + height + margin)
    x0, x1 = max(0, left - margin), min(person.shape[1], left + width + margin)
    patch_image = donor["image"][y0:y1, x0:x1]
    patch_mask = donor["mask"][y0:y1, x0:x1]

    image, mask = sample["image"].copy(), sample["mask"].copy()
    target_h = rng.uniform(*height_range) * image.shape[0]
    scale = min(target_h / patch_image.shape[0], image.shape[1] / patch_image.shape[1], max_upscale)
    size = (max(1, round(patch_image.shape[1] * scale)), max(1, round(patch_image.shape[0] * scale)))
    size = (min(size[0], image.shape[1]), min(size[1], image.shape[0]))
    patch_image = cv2.resize(patch_image, size, interpolation=cv2.INTER_LINEAR)
    patch_mask = cv2.resize(patch_mask, size, interpolation=cv2.INTER_NEAREST_EXACT)
    if rng.random() < 0.5:
        patch_image, patch_mask = patch_image[:, ::-1], patch_mask[:, ::-1]
    top = int(rng.integers(0, image.shape[0] - size[1] + 1))
    left = int(rng.integers(0, image.shape[1] - size[0] + 1))
    window = (slice(top, top + size[1]), slice(left, left + size[0]))
    is_person = patch_mask == person_id
    # Only the unsure rim right around the person comes along, not the donor's other unsure pixels.
    rim = cv2.dilate(is_person.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & (patch_mask == IGNORE_INDEX)
    image[window][is_person] = patch_image[is_person]
    mask[window][is_person] = person_id
    mask[window][rim] = IGNORE_INDEX
    return {**sample, "image": image, "mask": mask}
