"""A style or prompt set's name in the results folder's path: the model preset's own sets share its folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from styleprobe.data.drawing import BUILTIN_STYLE_SETS
from styleprobe.data.prompt_sets import BUILTIN_PROMPT_SETS
from styleprobe.data.style_sets import MANIFEST_NAME, builtin_name


def results_suffix(style_set: str, prompts: str | list[Any], preset_style_sets: list[str],
                   preset_prompts: list[str]) -> str:
    """The results folder's suffix for these sets: "" where both are the model preset's (or a built-in part of them,
    such as data=small's), else "-<name>" for each set that is not, named by its built-in name, folder or file."""
    parts = []
    if not _within(style_set, preset_style_sets, BUILTIN_STYLE_SETS):
        parts.append(_set_name(style_set))
    if not _within(prompts, preset_prompts, BUILTIN_PROMPT_SETS):
        parts.append(_set_name(prompts))
    return "".join(f"-{p}" for p in parts)


def _within(source: Any, presets: list[str], table: Mapping[str, tuple[Any, ...]]) -> bool:
    """Whether a set is one of the presets, or a built-in whose every entry is in one of them (the same images or
    prompts: the same item keys, so sharing the preset's folder pools nothing new)."""
    name = builtin_name(source)
    if name is None or name not in table:
        return False
    entries = {id(e) for e in table[name]}
    return any(entries <= {id(e) for e in table.get(builtin_name(p) or "", ())} for p in presets)


def _set_name(source: Any) -> str:
    """A set's name for a folder: its built-in name, its folder's name (a manifest's folder), its file's stem, or,
    for prompts given inline, "prompts_<digest of them>"."""
    name = builtin_name(source)
    if name is None and isinstance(source, str):
        path = Path(source.strip()).expanduser()
        name = path.parent.name if path.name == MANIFEST_NAME else (path.stem if path.suffix else path.name)
    if name is None:
        name = "prompts_" + hashlib.sha1(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "set"
