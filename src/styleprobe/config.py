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


def sets_suffix(*, _root_: Any) -> str:
    """`${styleprobe.sets:}` in the sweep's results_dir: "" for the model preset's own style and prompt sets, else
    "-<style set>" and/or "-<prompt set>", so that your own references get their own folder and report instead of
    joining the preset's (a given results_dir=... joins them on purpose)."""
    from omegaconf import OmegaConf

    from styleprobe.data.set_names import results_suffix

    data, model = _root_.data, _root_.model
    prompts = OmegaConf.to_container(data.prompts, resolve=True) if OmegaConf.is_list(data.prompts) else data.prompts
    return results_suffix(
        data.style_set, prompts,
        preset_style_sets=[model.get("style_set") or "builtin:shapes"],
        preset_prompts=[model.get("prompts") or "builtin:objects", model.get("benchmark_prompts") or "builtin:benchmark"],
    )


def _register_resolvers() -> None:
    """Resolvers the config tree uses; registered on import, as every command and test reads CONFIG_DIR from here."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("styleprobe.sets"):
        OmegaConf.register_new_resolver("styleprobe.sets", sets_suffix)


_register_resolvers()


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
    """The `seeds` list: non-negative integers, at least one. A bare number is refused, not taken as that one seed:
    `seeds=3` reads as "three seeds", and taking it as seed 3 would start a whole sweep of the wrong images."""
    from omegaconf import OmegaConf

    if not (OmegaConf.is_list(values) or isinstance(values, (list, tuple))):
        one = f"seeds=[{values}] for seed {values} alone" if isinstance(values, int) and not isinstance(values, bool) else "seeds=[0]"
        raise ConfigError(f"seeds={values}; give a list, e.g. seeds=[0,1,2] for three seeds or {one}")
    out = []
    for s in as_list(values):
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ConfigError(f"seeds has {s!r}; give non-negative integers, e.g. seeds=[0,1,2]")
        out.append(s)
    if not out:
        raise ConfigError("seeds is empty; give at least one seed, e.g. seeds=[0]")
    return out
