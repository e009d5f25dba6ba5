"""Teachers and students side by side on held-out images with masks: mIoU per source, as TEACHERS.md scores them
(each image at its own resolution; intersection and union summed over all pixels of a source).

    python scripts/compare_on_heldout.py HELDOUT_GT -t rvm:$RVM_DIR,ratio=1.0 -t mediapipe -m default
    python scripts/compare_on_heldout.py HELDOUT_GT -m default --tta "" --tta flip,sliding   # one view against four

HELDOUT_GT is the folder `split_default_data.py` links (images/<source>/…, masks/<source>/…). Teachers are named as
for `peopleseg autolabel -t`; models as for `Segmenter`. Run it where the teachers are installed (MediaPipe needs its
own environment).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from peopleseg.autolabel.specs import build_teacher
from peopleseg.data.image_io import read_image
from peopleseg.data.masks import read_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("heldout", type=Path)
    parser.add_argument("-t", "--teacher", action="append", default=[], help="a teacher spec (repeatable)")
    parser.add_argument("-e", "--ensemble", action="append", default=[], help="specs joined by '+', one ensemble")
    parser.add_argument("-m", "--model", action="append", default=[], help="a peopleseg model (repeatable)")
    parser.add_argument("--tta", action="append", default=[], help="test-time views for the models (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    from peopleseg.infer.segmenter import Segmenter

    pairs = sorted(
        (p, args.heldout / "masks" / p.relative_to(args.heldout / "images").with_suffix(".png"))
        for p in (args.heldout / "images").rglob("*")
        if p.is_file()
    )
    labelers: dict[str, object] = {}
    for spec in args.teacher:
        labelers[spec] = build_teacher([spec])
    for joined in args.ensemble:
        labelers[joined] = build_teacher(joined.split("+"))
    for model in args.model:
        for tta in args.tta or [""]:
            labelers[model + (f" tta={tta}" if tta else "")] = Segmenter(model, tta=tta)
    rows = {}
    for name, labeler in labelers.items():
        inter: dict[str, np.ndarray] = {}
        union: dict[str, np.ndarray] = {}
        start = time.perf_counter()
        for image_path, mask_path in pairs:
            source = image_path.relative_to(args.heldout / "images").parts[0]
            image = read_image(image_path)
            truth = read_mask(mask_path, num_classes=2)
            if isinstance(labeler, Segmenter):
                person = labeler.predict(image) == labeler.person_index
            else:
                labeler.reset()
                person = labeler.label([image])[0] >= 0.5
            for key in (source, "all"):
                i = inter.setdefault(key, np.zeros(2))
                u = union.setdefault(key, np.zeros(2))
                valid = truth != 255
                for cls, predicted in ((0, ~person), (1, person)):
                    actual = truth == cls
                    i[cls] += (predicted & actual & valid).sum()
                    u[cls] += ((predicted | actual) & valid).sum()
        seconds = (time.perf_counter() - start) / len(pairs)
        rows[name] = {k: 100 * float(np.mean(inter[k] / u)) for k, u in union.items()}
        rows[name] |= {"person_iou": 100 * float(inter["all"][1] / union["all"][1]), "s_per_image": seconds}
        print(name, json.dumps({k: round(v, 2) for k, v in rows[name].items()}), flush=True)
    sources = sorted({k for row in rows.values() for k in row} - {"all", "person_iou", "s_per_image"})
    print(f"\n{len(pairs)} held-out images with masks\n")
    print("| labeler | mIoU all | person IoU | " + " | ".join(f"mIoU {s}" for s in sources) + " | s/img |")
    print("|---|---|---|" + "---|" * len(sources) + "---|")
    for name, row in rows.items():
        cells = " | ".join(f"{row.get(s, float('nan')):.1f}" for s in sources)
        print(f"| {name} | {row['all']:.1f} | {row['person_iou']:.1f} | {cells} | {row['s_per_image']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
