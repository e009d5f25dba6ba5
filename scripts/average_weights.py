"""Average the weights of checkpoints of one model (same architecture and classes) into one file.

The default model ships such an average (a run's best and last weights), which scored higher on the held-out split
than either alone. `--fp16` stores the result in half precision, as the bundled model is; with a single input it is
a plain fp16 copy.

    python scripts/average_weights.py runs/x/best.safetensors runs/x/last.safetensors -o runs/x/average.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peopleseg.errors import PeoplesegError
from peopleseg.models.weights import load_model, save_model


def average_weights(paths: list[Path], out: Path, dtype: torch.dtype = torch.float32) -> None:
    models = [load_model(path) for path in paths]
    for path, model in zip(paths[1:], models[1:], strict=True):
        if model.info.arch != models[0].info.arch or model.info.classes != models[0].info.classes:
            raise SystemExit(f"{path}: {model.info.arch} {model.info.classes} does not match {paths[0]}")
    states = [model.state_dict() for model in models]
    average = {
        key: sum(state[key].float() for state in states) / len(states) if value.is_floating_point() else value
        for key, value in states[0].items()
    }
    models[0].load_state_dict(average)
    save_model(models[0], out, dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path, nargs="+")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--fp16", action="store_true", help="store in half precision")
    args = parser.parse_args()
    average_weights(args.weights, args.out, torch.float16 if args.fp16 else torch.float32)
    print(f"{len(args.weights)} checkpoint(s) -> {args.out}")


if __name__ == "__main__":
    try:
        main()
    except PeoplesegError as error:  # a bad folder, file or mask: one line naming it
        raise SystemExit(f"error: {error}") from None
