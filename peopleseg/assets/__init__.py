"""Files bundled inside the package: the default model's weights (when a release ships them) and its card."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = ASSETS_DIR / "default.safetensors"
# Until trained weights are bundled, the default is this architecture with random weights, and every entry point
# says so plainly.
FALLBACK_ARCH = "segformer_b0"


def default_weights_path() -> Path | None:
    return DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None
