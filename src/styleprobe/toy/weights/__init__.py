"""The toy world's trained weights, shipped with the package (float16 safetensors, one file per model).

`python -m styleprobe.toy.train` makes them, with fixed seeds; `README.md` in this folder says what each is, how
long it trained on 2 CPU cores and what it scored.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).parent


def weight_path(name: str) -> Path:
    return FOLDER / f"{name}.safetensors"
