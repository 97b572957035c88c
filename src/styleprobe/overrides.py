"""The command line's `key=value` overrides checked against the config they change, before Hydra composes the run.

Hydra answers a misspelt key (`seed=[0,1]`) with five lines ending in "Key 'seed' is not in struct" and a hint to write
`+seed=[0,1]`, which it then accepts: a key no part of styleprobe reads, so the run silently uses the default seeds.
Here the config is composed with the command's group choices alone (model=..., experiment=..., which decide what keys
exist), and each override's key is looked up in it: an unknown one gets one line naming the nearest valid key, the
`+key=` form only where adding an entry is meant (collections of named entries such as `method` or `model.presets`),
and a `+key` at the top level is refused, since the top level holds only the keys styleprobe reads.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from styleprobe.config import CONFIG_DIR

#: Arguments that make Hydra print help or read another config tree: no override check applies.
SKIP_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--config-name", "-cn", "--config-path", "-cp",
              "--config-dir", "-cd", "--shell-completion", "-sc")


def check_keys(args: list[str], config_name: str, config_dir: Path = CONFIG_DIR) -> str | None:
    """A one-line error for the first override whose key the composed config does not have, else None.

    Anything this check cannot read (a parse error, a group choice that fails to compose) is left to Hydra's own message.
    """
    if any(a.split("=")[0] in SKIP_FLAGS for a in args):
        return None
    overrides = _parse([a for a in args if "=" in a or a.startswith("~")])
    if overrides is None:
        return None
    groups = [o for o in overrides if _is_group(o.key_or_group, config_dir)]
    values = [o for o in overrides if o not in groups and not o.key_or_group.startswith("hydra")]
    try:
        choices = [_first_choice(o) for o in groups]
    except Exception:  # noqa: BLE001 - a sweep only Hydra can expand (glob): its composition is Hydra's to check
        return None
    tree = _compose(config_name, choices, config_dir)
    if tree is None:
        return None
    added = [o.key_or_group for o in values if _sign(o).startswith("+")]
    for o in values:
        if not any(o.key_or_group.startswith(a + ".") for a in added):  # a knob of an entry this command adds
            message = _unknown_key(tree, o)
            if message:
                return message
    return None


def _parse(args: list[str]) -> list[Any] | None:
    """Hydra's own reading of the overrides; None where it cannot parse them (Hydra then says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(args)
    except Exception:  # noqa: BLE001 - Hydra's parse error is the better message
        return None


def _is_group(key: str, config_dir: Path) -> bool:
    """Whether `key` names a config group (a folder of the tree, or one of Hydra's own such as hydra/launcher)."""
    return "/" in key or (config_dir / key.replace(".", "/")).is_dir()


def _sign(override: Any) -> str:
    from hydra.core.override_parser.types import OverrideType

    return {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~"}.get(override.type, "")


def _first_choice(override: Any) -> str:
    """A group override as compose() takes it: a swept choice (-m model=tiny,toy) by its first value."""
    if not override.is_sweep_override():
        return override.input_line
    package = f"@{override.package}" if override.package else ""
    return f"{_sign(override)}{override.key_or_group}{package}={next(iter(override.sweep_string_iterator()))}"


def _compose(config_name: str, overrides: list[str], config_dir: Path) -> dict[str, Any] | None:
    """The primary config with these group choices, unresolved, as plain dicts; None where it does not compose."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=[o for o in overrides if not o.startswith("hydra")])
        return OmegaConf.to_container(cfg, resolve=False)
    except Exception:  # noqa: BLE001 - Hydra reports a failing composition itself, in the run
        return None


def _unknown_key(tree: dict[str, Any], override: Any) -> str | None:
    """The message for an override whose key `tree` does not have, else None."""
    sign, key = _sign(override), override.key_or_group
    parts = key.split(".")
    value = override.input_line.partition("=")[2]
    if sign in ("+", "++"):
        if parts[0] in tree:
            return None  # nested additions are Hydra's to accept or refuse
        return _message(key, parts, 0, tree, value, adding=True)
    node: Any = tree
    for i, part in enumerate(parts):
        if node is None and sign != "~":
            where = ".".join(parts[:i])
            return (f"{where} is null, so {key} cannot be set on its own; give the whole mapping, "
                    f"e.g. {where}={{{'.'.join(parts[i:])}: {value}}}")
        if not isinstance(node, dict):
            return None  # a list index, or a path below a value: Hydra's own check
        if part not in node:
            return _message(key, parts, i, node, value, adding=False, deleting=sign == "~")
        node = node[part]
    return None


def _message(key: str, parts: list[str], i: int, node: dict[str, Any], value: str, adding: bool,
             deleting: bool = False) -> str:
    """One line: the unknown key, the nearest valid one with the override rewritten, and `+key=` where adding fits."""
    where = ".".join(parts[:i])
    nearest = difflib.get_close_matches(parts[i], list(node), n=1, cutoff=0.6)
    assign = "" if deleting else f"={value}"
    entry = where and not deleting and not adding and i == len(parts) - 1 and _holds_entries(node)
    if entry and not node:
        return f"unknown key {key!r}; {where} has no entries yet: to add one, write +{key}{assign}"
    if nearest:
        fixed = ".".join([*parts[:i], nearest[0], *parts[i + 1:]])
        as_list = i == len(parts) - 1 and isinstance(node[nearest[0]], list) and not value.startswith("[")
        fixed_assign = f"=[{value}]" if as_list and not deleting else assign  # seed=1 -> seeds=[1]: it takes a list
        hint = f"did you mean {'~' if deleting else ''}{fixed}{fixed_assign}?"
    else:
        hint = f"valid keys {'under ' + where if where else 'at the top level'}: {', '.join(node) or 'none yet'}"
    if adding:
        return f"unknown key {parts[0]!r}; {hint} (a new top-level key is read by no part of styleprobe)"
    if entry:
        return f"unknown key {key!r}; {hint} (or, to add a new entry to {where}, write +{key}{assign})"
    return f"unknown key {key!r}; {hint}"


def _holds_entries(node: dict[str, Any]) -> bool:
    """Whether a mapping is a collection of named entries a user may add to (method entries, metrics, presets,
    scheduler options): empty, or every value itself a mapping."""
    return not node or all(isinstance(v, dict) for v in node.values())
