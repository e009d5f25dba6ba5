"""Peak memory of one variant's calls: resident set size (RSS) of the process, and CUDA memory that torch allocated.

All variants live in one process (so that their rounds can interleave), so the peak has to be reset before each
variant's calls. On Linux, writing "5" to /proc/self/clear_refs resets the RSS high-water mark (VmHWM in
/proc/self/status) to the current RSS. Elsewhere `resource.getrusage` gives a peak that never goes down; it is then
the process's peak so far, and the report says so.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 1024 * 1024


@dataclass
class MemoryPeak:
    peak_rss_mb: float  # the process's peak resident memory during the calls
    growth_mb: float  # that peak minus the resident memory just before the calls: what the calls themselves added
    cuda_max_allocated_mb: float | None  # torch's CUDA allocator peak during the calls; None on CPU


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _rusage_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class PeakMeter:
    """`start()` before a variant's calls, `stop()` after them; `method` says how RSS was measured."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device if device.type == "cuda" else None
        self.method = "VmHWM reset per variant (/proc/self/clear_refs)" if self._can_reset() else "getrusage"
        self._before_mb = 0.0

    @staticmethod
    def _can_reset() -> bool:
        return _status_kib("VmHWM") is not None and _reset_high_water_mark()

    @property
    def resets(self) -> bool:
        return self.method != "getrusage"

    def current_rss_mb(self) -> float:
        rss = _status_kib("VmRSS")
        return rss / 1024 if rss is not None else _rusage_peak_mb()

    def start(self) -> None:
        if self.cuda is not None:
            torch.cuda.synchronize(self.cuda)
            torch.cuda.reset_peak_memory_stats(self.cuda)
        if self.resets:
            _reset_high_water_mark()
        self._before_mb = self.current_rss_mb()

    def stop(self) -> MemoryPeak:
        cuda_mb = None
        if self.cuda is not None:
            torch.cuda.synchronize(self.cuda)
            cuda_mb = torch.cuda.max_memory_allocated(self.cuda) / MIB
        hwm = _status_kib("VmHWM") if self.resets else None
        peak = hwm / 1024 if hwm is not None else _rusage_peak_mb()
        return MemoryPeak(peak_rss_mb=peak, growth_mb=max(0.0, peak - self._before_mb), cuda_max_allocated_mb=cuda_mb)
