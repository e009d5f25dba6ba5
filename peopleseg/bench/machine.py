"""The machine a benchmark ran on: CPU model and cores, memory, library versions, GPU, and the load average (a
busy machine depresses every figure, though the ratios of one interleaved run stay comparable)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def describe_machine(device: str = "cpu") -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "transformers": _version("transformers"),
        "tensorrt": _version("tensorrt"),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "gpu": None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        machine["gpu"] = torch.cuda.get_device_name(index)
        machine["cuda"] = torch.version.cuda
    return machine


def machine_line(machine: dict[str, Any]) -> str:
    """One line for a table caption: CPU, cores, GPU and load."""
    parts = [f"{machine['cpu']} ({machine['cpu_usable']} usable cores)"]
    if machine.get("gpu"):
        parts.append(f"GPU {machine['gpu']}")
    parts.append(f"torch {machine['torch']}")
    if machine.get("onnxruntime"):
        parts.append(f"onnxruntime {machine['onnxruntime']}")
    if machine.get("load_average"):
        parts.append(f"load average {machine['load_average'][0]:.2f} at the start")
    return ", ".join(parts)
