"""Where the config tree lives, and the checks every config value goes through.

Each check turns a bad value into a one-line `ConfigError` that names the setting and a valid example, so a
run fails before any model is loaded. Sweeps, scoring, methods and patterns all use these, not their own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from styleprobe.errors import ConfigError

#: The Hydra config tree (`experiments/` of the source checkout).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "experiments"


def as_list(value: Any) -> list[Any]:
    """A config value that may be one item or a list (OmegaConf lists included) as a plain list."""
    from omegaconf import OmegaConf

    if OmegaConf.is_list(value):
        return list(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def positive_int(value: Any, what: str) -> int:
    """An integer >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what}={value!r}; give a positive integer")
    return value


def non_negative_number(value: Any, what: str) -> float:
    """A finite number >= 0, as a float."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} is {value!r}, not a number; give a finite number >= 0")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} is {value!r}, not a number; give a finite number >= 0") from None
    if math.isnan(x) or math.isinf(x) or x < 0:
        raise ConfigError(f"{what} is {value!r}; give a finite number >= 0")
    return x


def seeds(values: Any) -> list[int]:
    """The `seeds` list: non-negative integers, at least one."""
    out = []
    for s in as_list(values):
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ConfigError(f"seeds has {s!r}; give non-negative integers, e.g. seeds=[0,1,2]")
        out.append(s)
    if not out:
        raise ConfigError("seeds is empty; give at least one seed, e.g. seeds=[0]")
    return out
