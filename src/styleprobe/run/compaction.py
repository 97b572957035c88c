"""`styleprobe compact results_dir=<folder>`: merge each table's files (rows, each metric's scores) into one.

Every sweep and scoring run already compacts at its end; this is for a folder whose runs were killed, or whose
parallel shards are still writing (it is safe then: parts written meanwhile stay until the next compaction).
Nothing is loaded; the folder reads the same table before and after.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from styleprobe.errors import ConfigError
from styleprobe.run.runs import compact_tables
from styleprobe.run.store import Store

log = logging.getLogger("styleprobe")


def run(cfg: DictConfig) -> dict[str, tuple[int, int]]:
    """Compact `results_dir`; table -> (files before, after), or {} when another process is compacting it."""
    store = Store(Path(str(cfg.results_dir)).expanduser())
    if not store.row_files():
        raise ConfigError(f"no results in {store.root} (no rows/*.parquet); give results_dir=<a sweep's results folder>")
    merged = compact_tables(store)
    if not merged:
        log.info("another process is compacting %s; nothing done", store.root)
    for name, (before, after) in merged.items():
        print(f"{name}: {before} -> {after} files", flush=True)
    return merged
