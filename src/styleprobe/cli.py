"""The `styleprobe` command: thin Hydra entry points around the `run(cfg)` of sweep, scoring and analysis.

    styleprobe --help                            what styleprobe is, its commands, config groups and examples
    styleprobe                                   the default sweep (layer_probe in the toy world), scored
    styleprobe experiment=subtraction            another experiment
    styleprobe model=sdxl experiment=layer_probe the real model (GPU, Hub access or local weights)
    styleprobe -m injection=style,style_layout   a multirun; jobs share one loaded model
    styleprobe score results_dir=<folder>        score an existing results folder (fills missing metrics only)
    styleprobe analyze results_dir=<folder>      tables, figures and the verdict report of a results folder
    styleprobe status results_dir=<folder>       done / pending per method and shard, speed and ETA of a sweep
    styleprobe compact results_dir=<folder>      merge each table's part files into one (runs do it at their end)
    styleprobe -m hydra/launcher=slurm shard.count=8 'shard.index=range(8)' ...   a sweep as 8 SLURM jobs

Errors a researcher can fix are printed as one line and exit with code 2: a group choice or a key that does not
exist (with the nearest valid one) before the run is composed, other inputs before any model is loaded.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from styleprobe.config import CONFIG_DIR
from styleprobe.errors import StyleprobeError
from styleprobe.metric_roles import RENAMED, RENAMED_WHY


def _quiet_libraries() -> None:
    """Keep the run log about the run. diffusers and transformers are quieted where they are first used
    (`models.quiet_libraries`), so that start-up and config errors do not wait seconds for their import."""
    logging.getLogger().addFilter(_drop_open_clip_info)


def _drop_open_clip_info(record: logging.LogRecord) -> bool:
    """open_clip logs every model build at INFO on the root logger; keep only its warnings."""
    return record.levelno >= logging.WARNING or "open_clip" not in record.pathname


#: subcommand -> (primary config in experiments/, module whose run(cfg) does the work)
COMMANDS = {
    "sweep": ("config", "styleprobe.run.sweep"),
    "score": ("score", "styleprobe.run.scoring"),
    "analyze": ("analyze", "styleprobe.analysis.report"),
    "status": ("status", "styleprobe.run.status"),
    "compact": ("compact", "styleprobe.run.compaction"),
}


def _task(module: str, cfg: DictConfig) -> Any:
    import importlib

    _quiet_libraries()
    try:
        if "progress" in cfg:
            from styleprobe.progress import configure

            configure(str(cfg.progress.mode), cfg.progress.every_percent, cfg.progress.every_seconds)
        if module == "styleprobe.run.sweep" and cfg.get("search") and cfg.search.get("kind", "none") != "none":
            module = "styleprobe.run.search"  # a layer-set search: rounds of sweeps
        result = importlib.import_module(module).run(cfg)
        return getattr(result, "objectives", None)  # what a sweeper trial (search=masks) hands back to its sampler
    except StyleprobeError as err:
        logging.getLogger("styleprobe").debug("error", exc_info=True)
        print(f"styleprobe: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_group_choices(args: list[str], config_dir: Path = CONFIG_DIR) -> str | None:
    """A one-line error for `group=name` overrides naming no file in the config tree, else None.

    Hydra would say the same over several lines; this says it in one, before anything is imported or loaded.
    """
    for arg in args:
        group, sep, value = arg.partition("=")
        group = group.lstrip("+~")
        folder = config_dir / group
        if not sep or "." in group or group.startswith("hydra/") or not folder.is_dir() or "(" in value or not value:
            continue
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for choice in value.strip("[]").split(","):
            choice = choice.strip()
            if choice and choice not in options and choice != "null":
                if group == "metrics" and choice in RENAMED:
                    new = RENAMED[choice][0]
                    return (f"metric {choice!r} is now {new!r} ({RENAMED_WHY}); write metrics=[...,{new}] "
                            f"(folders scored as {choice} are read as {new})")
                return f"unknown {group} {choice!r}; choose one of {', '.join(options)} (files in {folder})"
    return None


#: Settings that moved, old path -> new path: an old command gets a one-line pointer instead of Hydra's error.
MOVED = {
    "injection.scale": "method.ip_adapter.scale",
    "injection.subtraction": "method.ip_adapter.subtraction",
}


def check_method_knobs(args: list[str], config_dir: Path = CONFIG_DIR) -> str | None:
    """A one-line error for `method.<entry>.<knob>=...` naming a knob the entry's file does not have."""
    for arg in args:
        path = arg.partition("=")[0]
        parts = path.split(".")
        if len(parts) < 3 or parts[0] != "method" or path.startswith(("+", "~")):
            continue
        entry = config_dir / "method" / f"{parts[1]}.yaml"
        if not entry.is_file():
            continue
        from omegaconf import OmegaConf

        known = list(OmegaConf.load(entry).get(parts[1], {}) or {})
        if parts[2] not in known and parts[2] not in ("sampler", "type", "patterns"):
            knobs = ", ".join(k for k in known if k not in ("sampler", "type", "patterns"))
            return f"unknown knob {parts[2]!r} for method {parts[1]}; valid: {knobs} (and sampler.*; see {entry})"
    return None


def check_moved(args: list[str]) -> str | None:
    """A one-line error for an override of a setting that moved, naming where it lives now."""
    for arg in args:
        path = arg.partition("=")[0].lstrip("+~")
        if path in MOVED:
            value = arg.partition("=")[2]
            return f"{path} is now {MOVED[path]} (a knob of IP-Adapter's method entry); e.g. {MOVED[path]}={value or '[0,0.5]'}"
    return None


def main() -> None:
    """Console entry point: `styleprobe [sweep|score|analyze] [overrides...]` (sweep when no subcommand is given)."""
    command = "sweep"
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        command = sys.argv.pop(1)
    elif len(sys.argv) > 1 and sys.argv[1].isidentifier() and "=" not in sys.argv[1]:
        print(f"styleprobe: error: unknown command {sys.argv[1]!r}; use one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    config_name, module = COMMANDS[command]
    flags = any(a.startswith("-") for a in sys.argv[1:])  # --help, --cfg job, ... go to Hydra as they are
    if command != "sweep" and not flags and not any(a.startswith("results_dir=") for a in sys.argv[1:]):
        print(f"styleprobe: error: {command} needs a results folder; give results_dir=<folder>, e.g. results_dir=results/toy/layer_probe", file=sys.stderr)
        sys.exit(2)
    bad = check_group_choices(sys.argv[1:]) or check_moved(sys.argv[1:]) or check_method_knobs(sys.argv[1:])
    if not bad and (CONFIG_DIR / "config.yaml").exists():
        from styleprobe.overrides import check_keys

        bad = check_keys(sys.argv[1:], config_name)
    if bad:
        print(f"styleprobe: error: {bad}", file=sys.stderr)
        sys.exit(2)
    if not (CONFIG_DIR / "config.yaml").exists():
        print(
            f"styleprobe: error: config tree not found at {CONFIG_DIR}; install styleprobe from its source "
            "checkout with pip install -e .",
            file=sys.stderr,
        )
        sys.exit(2)
    task = functools.partial(_task, module)
    functools.update_wrapper(task, _task)
    try:
        hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)()
    except BrokenPipeError:  # `styleprobe --help | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
