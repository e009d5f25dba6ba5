"""Peak memory (RSS) of `peopleseg infer` on a 1080p video, with the default model on the CPU.

    python benchmarks/video_memory.py [--video PATH] [--frames 60] [--output blur] [-- extra infer flags]

Without --video it upscales the repository's tests/data/vtest_clip.mp4 (real pedestrians, 768x576) to 1920x1080
in a temporary folder. The command runs in a child process, so its peak RSS (ru_maxrss of the children, Linux) is the
whole CLI run's: imports, model, the fast-path graph, decode, inference, rendering and encoding queues.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_1080p_clip(source: Path, target: Path, frames: int) -> Path:
    import cv2

    from peopleseg.infer.sources import open_source
    from peopleseg.infer.video_writer import VideoWriter

    with open_source(str(source)) as reader, VideoWriter(target, reader.fps or 10.0, 1920, 1080) as writer:
        written = 0
        while written < frames:  # loop the clip when it is shorter than asked
            for frame in reader:
                writer.write(cv2.resize(frame.image, (1920, 1080), interpolation=cv2.INTER_LINEAR))
                written += 1
                if written >= frames:
                    break
            else:
                break
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="a video file (default: vtest_clip upscaled to 1920x1080)")
    parser.add_argument("--frames", type=int, default=40, help="frames of the generated clip (default 40)")
    parser.add_argument("--output", default="blur", help="what `peopleseg infer` writes (default blur)")
    parser.add_argument("extra", nargs="*", help="more `peopleseg infer` flags, after --")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="peopleseg_mem_"))
    video = (
        Path(args.video)
        if args.video
        else make_1080p_clip(ROOT / "tests/data/vtest_clip.mp4", work / "clip.mp4", args.frames)
    )
    command = [
        sys.executable,
        "-m",
        "peopleseg.cli",
        "infer",
        str(video),
        "-o",
        str(work / "out"),
        "--output",
        args.output,
        "-q",
        *args.extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(f"command: {' '.join(command[1:])}")
    print("| video | output | peak RSS | wall |")
    print("|---|---|---:|---:|")
    print(f"| {video.name} | {args.output} | {peak_mb:.0f} MB | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
