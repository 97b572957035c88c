"""The toy world's trained weights, shipped with the package (float16 safetensors, one file per model).

`python -m styleprobe.models.toy.train` makes them, with fixed seeds; `README.md` in this folder says what each is, how
long it trained on 2 CPU cores and what it scored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).parent


def weight_path(name: str) -> Path:
    return FOLDER / f"{name}.safetensors"


def records(folder: Path = FOLDER) -> dict[str, Any]:
    """Each trained stage's record (seconds, recipe, held-out scores), as `python -m styleprobe.models.toy.train` wrote it."""
    path = folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else {}
