"""What test-time augmentation costs: the Segmenter's time per image for each `tta` spec, in one run.

Every spec gets its own Segmenter on the same model and backend (the fast path by default, as `infer` runs). They are
timed on the same images in interleaved rounds after a warm-up, so that all see the same machine state; the table
gives the median time per image, the ratio to the first spec (one view), the views run, and the share of mask pixels
that agree with the first spec's masks.

    python benchmarks/tta_speed.py [--model default] [--images tests/data] [--frame tests/data/vtest_clip.mp4]
        [--specs ",flip,flip;sliding,flip;1.5,flip;1.5;sliding"] [--rounds 5] [--threads 2]

Specs are separated by commas; inside a spec, `;` stands for the comma (the first, empty spec is one view).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default', a registry name or a weights path")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--images", default=str(DATA), help="folder of photos (jpg/png) to time on")
    parser.add_argument("--frame", default=str(DATA / "vtest_clip.mp4"), help="a video whose first frame joins them")
    parser.add_argument("--specs", default=",flip,flip;sliding,flip;1.5,flip;1.5;sliding")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from peopleseg.data.image_io import read_image
    from peopleseg.infer.segmenter import Segmenter
    from peopleseg.infer.sources import open_source

    images = [read_image(p) for p in sorted(Path(args.images).iterdir()) if p.suffix.lower() in (".jpg", ".png")]
    if args.frame:
        with open_source(args.frame, max_frames=1) as source:
            images += [frame.image for frame in source]
    specs = [spec.replace(";", ",") for spec in args.specs.split(",")]
    segmenters = {spec: Segmenter(args.model, backend=args.backend, threads=args.threads, tta=spec) for spec in specs}
    masks = {spec: [s.predict(image) for image in images] for spec, s in segmenters.items()}  # warm-up
    times: dict[str, list[float]] = {spec: [] for spec in specs}
    for _ in range(args.rounds):
        for image in images:
            for spec, segmenter in segmenters.items():
                start = time.perf_counter()
                segmenter.predict(image)
                times[spec].append(time.perf_counter() - start)
    base = statistics.median(times[specs[0]])
    sizes = ", ".join(f"{i.shape[1]}x{i.shape[0]}" for i in images)
    print(f"{len(images)} images ({sizes}), {args.rounds} interleaved rounds, {args.threads} threads\n")
    print("| tta | views | median ms per image | x one view | mask agreement with the first |")
    print("|---|---:|---:|---:|---:|")
    for spec in specs:
        median = statistics.median(times[spec])
        agree = np.mean([(a == b).mean() for a, b in zip(masks[spec], masks[specs[0]], strict=True)])
        views = len(segmenters[spec].views)
        print(f"| {spec or '(none)'} | {views} | {1000 * median:.1f} | {median / base:.2f}x | {100 * agree:.2f}% |")


if __name__ == "__main__":
    main()
