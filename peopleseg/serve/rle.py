"""COCO run-length encoding (RLE) of a mask, as `pycocotools.mask.encode` writes it, without needing pycocotools.

COCO RLE reads the mask column by column (Fortran order) and stores the lengths of alternating runs of 0s and 1s,
starting with a run of 0s (which may be empty). The compressed form packs those counts into an ASCII string: each
count after the second is stored as the difference from the count two before it, in 5-bit groups, least
significant first, with a continuation bit (maskApi.c's `rleToString`). `pycocotools.mask.decode` reads it back.
"""

from __future__ import annotations

import numpy as np


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2-D mask (non-zero = 1) in column-major order, starting with the run of 0s."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got {getattr(mask, 'shape', type(mask).__name__)}")
    flat = (mask.T.reshape(-1) != 0).view(np.uint8)  # the transpose's C order is the mask's Fortran order
    if flat.size == 0:
        return [0]
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(edges).tolist()
    return [0, *counts] if flat[0] else counts


def compress_counts(counts: list[int]) -> str:
    """The compressed COCO string of run lengths (the inverse of pycocotools' `rleFrString`)."""
    out = bytearray()
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5  # arithmetic shift: negative differences end in a run of sign bits
            more = value != -1 if chunk & 0x10 else value != 0
            if more:
                chunk |= 0x20
            out.append(chunk + 48)
    return out.decode("ascii")


def encode_rle(mask: np.ndarray) -> dict[str, object]:
    """`{"size": [height, width], "counts": "<compressed string>"}`, COCO's compressed RLE of a person mask."""
    height, width = mask.shape
    return {"size": [int(height), int(width)], "counts": compress_counts(rle_counts(mask))}
