"""Split an auto-labelled dataset (from `peopleseg autolabel`) for the default model: train.txt, heldout.txt and
heldout_small.txt (every 4th held-out sample, validated on during training).

Held out, per source: vtest frames from 660 on (the last ~17% of the video, so no near-duplicate neighbour frame is
trained on), every 10th street photo, every 6th portrait and every 3rd COCO photo. Training also leaves out the
least sure street/crowd labels (`--min-street-confidence`): in dense crowds RVM misses people, and a missed person
labelled background teaches the wrong thing.

It also links the held-out photos that have the datasets' own masks into OUT/heldout_gt/{images,masks}/<source>/,
so `peopleseg evaluate --subset-from-subfolder` scores against those masks per source. This reads ../shared/data
through --pool (development imagery that is never shipped); the package itself never does.

    python scripts/split_default_data.py LABELS OUT --pool ../shared/data/pool

With `--extend NAME` it keeps the split already in OUT and writes OUT/NAME: train.txt plus every sample labelled
since (not in train.txt or heldout.txt) that passes the same confidence filter. Labels added later (the second half
of the street photos) then only ever join training, and the held-out split stays the one earlier models were scored on.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from peopleseg.autolabel.run import latest_samples, read_manifest

SOURCES_WITH_MASKS = {"vikramshenoy-human-seg": "masks", "coco128-seg": "masks"}


def held_out(key: str, index: int) -> bool:
    source, name = key.split("/", 1)
    if source == "vtest":
        return int(name) >= 660
    every = {"shanghaitech-partB": 10, "vikramshenoy-human-seg": 6, "coco128-seg": 3}.get(source)
    return every is not None and index % every == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pool", type=Path, required=True, help="../shared/data/pool, for the held-out masks")
    parser.add_argument("--min-street-confidence", type=float, default=0.955)
    parser.add_argument("--extend", metavar="NAME", help="keep OUT's split; write OUT/NAME = train + new samples")
    args = parser.parse_args()
    # The manifest as autolabel reads it: a cut last line left out, and a redone sample counted once (its last record,
    # or not at all when it was then dropped as unsure), so no sample lands in both train and held-out.
    records = sorted(latest_samples(read_manifest(args.labels / "manifest.jsonl")[0]).values(), key=lambda r: r["key"])
    if args.extend:
        extend(records, args.out, args.extend, args.min_street_confidence)
        return
    counters: dict[str, int] = {}
    train, heldout, dropped = [], [], 0
    for record in records:
        source = record["key"].split("/", 1)[0]
        index = counters[source] = counters.get(source, -1) + 1
        line = list_line(record)
        if held_out(record["key"], index):
            heldout.append(line)
        elif unsure_street(record, args.min_street_confidence):
            dropped += 1
        else:
            train.append(line)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.txt").write_text("\n".join(train) + "\n")
    (args.out / "heldout.txt").write_text("\n".join(heldout) + "\n")
    # Every 4th held-out sample: the quick validation set used during training (the full split scores the result).
    (args.out / "heldout_small.txt").write_text("\n".join(heldout[::4]) + "\n")
    gt = args.out / "heldout_gt"
    linked = 0
    for line in heldout:
        source, name = line.split("/", 1)
        if source not in SOURCES_WITH_MASKS:
            continue
        stem = Path(name).stem
        image = next((args.pool / source / "images").glob(f"{stem}.*"))
        mask = args.pool / source / SOURCES_WITH_MASKS[source] / f"{stem}.png"
        for target, link in ((image, gt / "images" / source / image.name), (mask, gt / "masks" / source / mask.name)):
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(target.resolve(), link)
        linked += 1
    print(f"train {len(train)}, held out {len(heldout)} ({linked} with dataset masks), dropped {dropped} unsure")


def list_line(record: dict) -> str:
    """The record's image path as train.txt and heldout.txt list it (relative to the labels' images folder)."""
    return record["image"].removeprefix("images/")


def unsure_street(record: dict, min_confidence: float) -> bool:
    return record["key"].startswith("shanghaitech") and record["confidence"] < min_confidence


def extend(records: list[dict], out: Path, name: str, min_confidence: float) -> None:
    train = (out / "train.txt").read_text().split()
    known = set(train) | set((out / "heldout.txt").read_text().split())
    new = [r for r in records if list_line(r) not in known]
    kept = [list_line(r) for r in new if not unsure_street(r, min_confidence)]
    (out / name).write_text("\n".join(train + kept) + "\n")
    dropped = len(new) - len(kept)
    print(f"{name}: train {len(train)} + {len(kept)} new = {len(train) + len(kept)}, dropped {dropped} unsure")


if __name__ == "__main__":
    main()
