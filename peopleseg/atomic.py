"""Atomic file writes: write to a temporary file beside the target, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `path` in one rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    temp = Path(temp_name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield temp
        # mkstemp makes the file private (0600), and some writers replace it with a private file of their own
        # (safetensors' save_file): give the result the permissions a plain open() would, just before it appears.
        os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: object) -> Iterator[IO]:
    """`open()` for writing, made atomic: the file appears complete or not at all."""
    with atomic_path(path) as temp, open(temp, mode, **kwargs) as stream:  # type: ignore[call-overload]
        yield stream
