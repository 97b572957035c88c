"""Which rows make up a named condition, and the UNet order that figures and rankings follow.

A preset named in the analysis (`style`, `style_layout`) is found by name, or else by what it switches on:
a module probe's `one_hot:up_blocks.0.attentions.1` injects exactly the layers of the `style` preset, so the
verdict can use it without generating the same images twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from styleprobe.analysis.load import layer_names, varying_conditions
from styleprobe.errors import AnalysisError
from styleprobe.models.layers import LAYOUT_MODULE, PRESETS, STYLE_MODULE

#: InstantStyle's two modules on SDXL, marked in figures and rankings.
INSTANTSTYLE_MODULES: dict[str, str] = {STYLE_MODULE: "style", LAYOUT_MODULE: "layout"}

_NAME = re.compile(
    r"^(?P<block>down_blocks|mid_block|up_blocks)(?:\.(?P<b>\d+))?"
    r"(?:\.attentions\.(?P<a>\d+))?(?:\.transformer_blocks\.(?P<t>\d+))?"
)
_BLOCK_RANK = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def unet_sort_key(name: str) -> tuple[int, int, int, int, str]:
    """Data-flow order through the UNet: down blocks, mid block, up blocks; then module, then layer index."""
    m = _NAME.match(name)
    if not m:
        return (9, 0, 0, 0, name)
    return (
        _BLOCK_RANK[m["block"]],
        int(m["b"] or 0),
        int(m["a"] or 0),
        int(m["t"] or 0),
        name,
    )


def unet_sorted(names: list[str]) -> list[str]:
    return sorted(names, key=unet_sort_key)


def module_of(layer: str) -> str:
    """`up_blocks.0.attentions.1.transformer_blocks.3` -> `up_blocks.0.attentions.1`."""
    return layer.split(".transformer_blocks.")[0]


def layer_index(layer: str) -> int:
    """The transformer layer's index within its module (0 for a whole module)."""
    return int(layer.split(".transformer_blocks.")[1]) if ".transformer_blocks." in layer else 0


def preset_rows(table: pd.DataFrame, name: str) -> tuple[pd.Series, str]:
    """Rows of the condition called `name`, and where they came from (the injection name used).

    By name first; else, for a preset, the rows of any pattern that switches on exactly the preset's modules
    at one uniform scale (so `style` is found in a module probe as `one_hot:up_blocks.0.attentions.1`).
    """
    by_name = table["injection"].astype(str) == name
    if by_name.any() or name not in PRESETS or PRESETS[name] is None:
        return by_name, name
    wanted = set(PRESETS[name] or ())
    for injection, group in table.groupby("injection", sort=True):
        first = group.iloc[0]
        if set(layer_names(first["layers"])) == wanted and _uniform(first.get("layer_scales", "")):
            return table["injection"] == injection, str(injection)
    return by_name, name


def _uniform(layer_scales: str) -> bool:
    try:
        values = set(json.loads(layer_scales).values()) if layer_scales else set()
    except (TypeError, ValueError):
        return False
    return len(values) <= 1


def is_instantstyle(target: str) -> str:
    """'style' or 'layout' when a module or layer lies in one of InstantStyle's two modules, else ''."""
    return INSTANTSTYLE_MODULES.get(module_of(target), "")


def describe_setting(values: Mapping[str, Any]) -> str:
    """`method=ip_adapter, subtraction=0.5`: fixed condition columns as written in labels, logs and reports.

    A column another method does not have (NaN in its rows) is left out of that method's description.
    """
    return ", ".join(f"{k}={v}" for k, v in values.items() if not _missing(v))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def split_by_setting(table: pd.DataFrame, within: Sequence[str] = ("injection",)) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """The table split by the condition columns other than `within` that vary (method, subtraction, model, ...).

    Each part is one setting: the verdict is judged and the probe figures are drawn once per setting. Rows of a
    method without one of those columns (StyleAligned has no `subtraction`) form their own part, never dropped.
    """
    columns = [c for c in varying_conditions(table) if c not in within]
    if not columns:
        return [({}, table)]
    out = []
    for values, part in table.groupby(columns, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append(({c: (v.item() if hasattr(v, "item") else v) for c, v in zip(columns, values)}, part))
    return out


class MissingCondition(AnalysisError):
    """A section of the report needs a condition the table lacks: the message says which to add, and how."""


def pattern_specs(table: pd.DataFrame) -> list[str]:
    """The injection patterns a table's rows were made with, as `injection.patterns` takes them: presets and explicit
    patterns by name, generated sweeps by their spec (`one_hot:module`); the presets first, in their order, then the
    others in the order they first appear."""
    if "injection" not in table or table.empty:
        return []
    sweeps = table["sweep"].astype(str) if "sweep" in table else pd.Series("preset", index=table.index)
    pairs = pd.DataFrame({"injection": table["injection"].astype(str), "sweep": sweeps}).drop_duplicates()
    specs: list[str] = []
    for injection, sweep in zip(pairs["injection"], pairs["sweep"]):
        mode, _, unit = sweep.rpartition("_")
        spec = f"{mode}:{unit}" if mode in ("one_hot", "leave_one_out") else injection
        if spec not in specs:
            specs.append(spec)
    order = list(PRESETS)
    return sorted(specs, key=lambda spec: order.index(spec) if spec in order else len(order))  # stable: others as found


def add_condition(table: pd.DataFrame, names: str | list[str], what: str) -> str:
    """`add `none` to the sweep (injection.patterns=[none,all]) to get <what>`: the one line a report writes where a
    section needs conditions the table lacks."""
    names = [names] if isinstance(names, str) else list(names)
    specs = [n for n in names if n] + [s for s in pattern_specs(table) if s not in names]
    quoted = [f"`{n}`" for n in names if n]
    listed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
    return f"add {listed} to the sweep (`injection.patterns=[{','.join(specs)}]`) to get {what}"


def missing_conditions(table: pd.DataFrame, names: list[str | None]) -> list[str]:
    """Which of `names` (injection names, None skipped) no row of the table has."""
    present = set(table["injection"].astype(str)) if "injection" in table else set()
    return [n for n in dict.fromkeys(names) if n and n not in present]
