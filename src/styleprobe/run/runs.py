"""Run ids and the full config every run saves beside its results (`runs/<run_id>/config.yaml`).

A sweep and a scoring run both record what they were asked to do here; the run id also names every file the
run writes, so parallel jobs never write the same file. At its end a run compacts the tables (`compact_tables`).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from styleprobe.disk import HOST, atomic_write
from styleprobe.run.store import Store

log = logging.getLogger("styleprobe")


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    return f"{stamp}-{HOST}-{os.getpid()}"


def save_run_config(store: Store, run_id: str, cfg: DictConfig, summary: dict[str, Any]) -> Path:
    """The full, resolved config of this run (with Hydra's choices and overrides when run from the CLI)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        container["_hydra"] = {
            "choices": OmegaConf.to_container(hc.runtime.choices),
            "overrides": list(hc.overrides.task),
            "job": hc.job.name,
            "job_num": hc.job.get("num"),
        }
    except ValueError:
        pass  # called as a library, not from the Hydra app
    container["_run"] = summary
    path = store.runs / run_id / "config.yaml"
    text = OmegaConf.to_yaml(OmegaConf.create(container))
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def save_run_costs(store: Store, run_id: str, costs: dict[str, Any]) -> Path:
    """What a run's generation cost (`runs/<run_id>/costs.yaml`): the figures a method comparison reports."""
    path = store.runs / run_id / "costs.yaml"
    text = OmegaConf.to_yaml(OmegaConf.create(costs))
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def compact_tables(store: Store) -> dict[str, tuple[int, int]]:
    """At the end of a run: merge each table's files into one, so the next run (a resume, a report) reads one file
    per table. A table already in one file costs a directory listing."""
    merged = store.compact()
    done = {name: n for name, n in merged.items() if n[0] > n[1]}
    if done:
        log.info("compacted %s", ", ".join(f"{name} {before} -> {after} files" for name, (before, after) in done.items()))
    return merged
