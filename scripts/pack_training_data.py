"""Pack a folder dataset (images + PNG masks, as `peopleseg autolabel` writes) into a small copy for a remote GPU.

A lent GPU machine takes at most 64 MiB of working tree, so the default model's training data travels re-encoded:
each image scaled down to at most `--max-side` pixels and saved as WebP, each mask scaled with nearest-neighbour so
its ids (0, 1, 255 = ignore) stay exact. Only the images that the list files name are packed, and each list file is
rewritten beside them with the new names, so the packed folder trains with the same config
(`data.*.images/masks/list_file` pointed at it).

    python scripts/pack_training_data.py LABELS/images LABELS/masks OUT --list split/train4.txt \
        --list split/heldout_small.txt --max-side 640 --quality 80

Writes OUT/images/<name>.webp, OUT/masks/<name>.png, OUT/<list name> (naming the .webp files) and OUT/packing.json
(the settings: a re-run with others is refused rather than mixing sizes). Files are written atomically, and a re-run
skips what is already packed. Prints the packed size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peopleseg.atomic import atomic_path
from peopleseg.data.folder import FolderSample, read_pair, scan_folder
from peopleseg.errors import PeoplesegError


def packed_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def pack_one(sample: FolderSample, out_image: Path, out_mask: Path, max_side: int, quality: int) -> None:
    image, mask = read_pair(sample)  # checks the mask's ids and size against the image
    size = packed_size(image.shape[1], image.shape[0], max_side)
    picture = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
    labels = Image.fromarray(mask).resize(size, Image.Resampling.NEAREST)
    for path in (out_image, out_mask):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_mask) as temp:
        labels.save(temp, format="PNG", optimize=True)
    # The image last: its presence marks the pair as done for a re-run.
    with atomic_path(out_image) as temp:
        picture.save(temp, format="WEBP", quality=quality, method=6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path)
    parser.add_argument("masks", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--list",
        dest="lists",
        type=Path,
        action="append",
        required=True,
        help="a list file naming images to pack (repeatable); rewritten into OUT",
    )
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--quality", type=int, default=80, help="WebP quality, 1-100")
    args = parser.parse_args()
    if not 1 <= args.quality <= 100:
        raise SystemExit(f"--quality: {args.quality} is not in 1-100")
    settings = {"max_side": args.max_side, "quality": args.quality}
    record = args.out / "packing.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise SystemExit(f"{args.out}: packed before with {record.read_text().strip()}; pack into a new folder")
    jobs: dict[Path, FolderSample] = {}  # packed image, relative to OUT/images -> its source
    for list_file in args.lists:
        scan = scan_folder(args.images, args.masks, list_file=list_file)
        if scan.missing_masks:
            first = scan.missing_masks[0].mask
            raise SystemExit(f"{list_file}: {len(scan.missing_masks)} images have no mask, e.g. {first}")
        names = []
        for sample in scan.samples:
            # Only the last suffix changes, so `cam1.0001.jpg` packs to `cam1.0001.webp`.
            packed = sample.image.relative_to(args.images).with_suffix(".webp")
            earlier = jobs.setdefault(packed, sample).image
            if earlier != sample.image:
                raise SystemExit(f"{sample.image}: would pack to the same {packed} as {earlier}")
            names.append(packed.as_posix())
        args.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out / list_file.name) as temp:
            Path(temp).write_text("\n".join(names) + "\n")
    with atomic_path(record) as temp:
        Path(temp).write_text(json.dumps(settings) + "\n")
    with Progress() as progress:
        task = progress.add_task("packing", total=len(jobs))
        for packed, sample in jobs.items():
            out_image = args.out / "images" / packed
            out_mask = args.out / "masks" / packed.with_suffix(".png")
            if not (out_image.is_file() and out_mask.is_file()):
                pack_one(sample, out_image, out_mask, args.max_side, args.quality)
            progress.advance(task)
    total = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    sizes = [np.prod(Image.open(args.out / "images" / packed).size) for packed in jobs]
    print(
        f"packed {len(jobs)} images into {args.out}: {total / 2**20:.1f} MiB, "
        f"{np.mean(sizes) / 1e3:.0f} kilopixels per image on average"
    )


if __name__ == "__main__":
    try:
        main()
    except PeoplesegError as error:  # a bad folder, file or mask: one line naming it
        raise SystemExit(f"error: {error}") from None
