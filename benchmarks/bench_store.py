#!/usr/bin/env python
"""Time a large results folder: per-file reading (the baseline) against styleprobe's scan-and-compact store.

It writes a synthetic results folder of a real plan: the tiny model's layer probe with as many seeds as it takes to
reach --items (336 items a seed), planned by `styleprobe.run.sweep.prepare` exactly as a run plans it, so the CLI sees a
finished sweep. Rows come in parts of 8 (a generation batch), each metric's scores in parts of 32 (a scoring batch),
one run per --items-per-run, as runs write them; scores are random numbers and no image is written (the analysis grid
shows blanks). Then, in this one process, it times:

  keys        the done keys a resume needs:  baseline = one pd.read_parquet(columns=["key"]) per row file;
              styleprobe = `Store.done_keys` (one pyarrow dataset scan)
  table       rows joined with every metric:  baseline = pd.read_parquet per file, concat, dedupe, merge;
              styleprobe = `Store.table`
  compact     `Store.compact` (what every run does at its end), with the folder's parquet files before and after
  keys, table the same two reads on the compacted folder
  rerun       `styleprobe <the sweep> analyze=false` in a fresh process: nothing to generate or score
  analyze     `styleprobe analyze results_dir=<folder>` in a fresh process: tables, figures, verdict report

    .venv/bin/python benchmarks/bench_store.py                  # 100,128 items (298 seeds), about 10 minutes
    .venv/bin/python benchmarks/bench_store.py --items 10080    # the size of a 30-seed tiny layer probe

The numbers are about files and tables, so the tiny model's plan is as good as SDXL's; the folder is deleted at the
end unless --keep. Writes .bench/store-<items>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ROW_PART, SCORE_PART = 8, 32  # the default generation and scoring batch sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000, help="at least this many items (whole seeds; default 100000)")
    p.add_argument("--items-per-run", type=int, default=10_000, help="items each simulated run wrote (default 10000)")
    p.add_argument("--dir", type=Path, default=None, help="where to build the folder (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the folder")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default .bench/store-<items>.json)")
    return p.parse_args(argv)


def overrides(root: Path, seeds: int) -> list[str]:
    return ["model=tiny", f"seeds=[{','.join(map(str, range(seeds)))}]", f"results_dir={root}"]


def plan(root: Path, seeds: int) -> Any:
    """The sweep's plan as a run makes it (no model is loaded)."""
    from hydra import compose, initialize_config_dir

    from styleprobe.config import CONFIG_DIR
    from styleprobe.run.sweep import prepare

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides(root, seeds))
    return prepare(cfg)


def write_store(root: Path, seeds: int, items_per_run: int) -> tuple[int, float]:
    """Rows and scores of every planned item, in the part sizes runs write; returns (items, seconds)."""
    import numpy as np
    import pandas as pd

    from styleprobe.run.store import Store

    start = time.perf_counter()
    p = plan(root, seeds)
    store = Store(root)
    rng = np.random.default_rng(0)
    for s in p.scorers:
        store.write_metric_identity(s.name, s.identity())
    for first in range(0, len(p.items), items_per_run):
        run_id = f"20260101-{first // items_per_run:06d}-000000-bench-1"
        chunk = p.items[first:first + items_per_run]
        for b in range(0, len(chunk), ROW_PART):
            rows = [{**it.row, "seconds": 0.2, "peak_gpu_bytes": None, "image_path": store.image_path(it.key).relative_to(root).as_posix(),
                     "run_id": run_id} for it in chunk[b:b + ROW_PART]]
            store.write_rows(rows, run_id, b // ROW_PART)
        for s in p.scorers:
            for b in range(0, len(chunk), SCORE_PART):
                keys = [it.key for it in chunk[b:b + SCORE_PART]]
                frame = pd.DataFrame({"key": keys, **{c: rng.random(len(keys)) for c in s.columns}, s.model_column: s.describe_model()})
                store.write_scores(s.name, frame, run_id, b // SCORE_PART)
    return len(p.items), time.perf_counter() - start


def baseline_keys(store: Any) -> set[str]:
    """The resume check as per-file reads: one pandas read of the key column per row file."""
    import pandas as pd

    keys: set[str] = set()
    for f in store.row_files():
        keys.update(pd.read_parquet(f, columns=["key"])["key"])
    return keys


def baseline_table(store: Any) -> Any:
    """The table as per-file reads: every row and score file read alone with pandas, concatenated, deduped, merged."""
    import pandas as pd

    def read(files: list[Path]) -> pd.DataFrame:
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        return df.drop_duplicates("key", keep="last").reset_index(drop=True)

    df = read(store.row_files())
    for metric in store.metrics():
        df = df.merge(read(store.score_files(metric)).drop(columns=["run_id"], errors="ignore"), on="key", how="left")
    return df


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def files(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.parquet"))


def cli(args: list[str]) -> tuple[float, str]:
    """A fresh `styleprobe` process: wall seconds and its last log line."""
    exe = shutil.which("styleprobe") or str(REPO / ".venv" / "bin" / "styleprobe")
    start = time.perf_counter()
    proc = subprocess.run([exe, *args], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"styleprobe {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return seconds, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from styleprobe.run.store import Store

    root = (args.dir or Path(tempfile.mkdtemp(prefix="styleprobe-bench-store-"))) / "layer_probe"
    seeds = math.ceil(args.items / len(plan(root, 1).items))
    if root.exists():
        raise SystemExit(f"{root} exists; give an empty --dir")
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "seeds": seeds}
    try:
        items, seconds = write_store(root, seeds, args.items_per_run)
        store = Store(root)
        result.update(items=items, write_seconds=round(seconds, 1), parquet_files_before=files(root))
        print(f"wrote {items} items in {files(root)} parquet files ({seconds:.0f} s)", flush=True)
        old_keys, result["keys_baseline_s"] = timed(lambda: baseline_keys(store))
        new_keys, result["keys_s"] = timed(store.done_keys)
        assert old_keys == new_keys and len(new_keys) == items
        old_table, result["table_baseline_s"] = timed(lambda: baseline_table(store))
        new_table, result["table_s"] = timed(store.table)
        assert len(old_table) == len(new_table) == items and sorted(old_table.columns) == sorted(new_table.columns)
        merged, result["compact_s"] = timed(store.compact)
        result["parquet_files_after"] = files(root)
        _, result["keys_compacted_s"] = timed(store.done_keys)
        compacted, result["table_compacted_s"] = timed(store.table)
        assert len(compacted) == items
        result["rerun_s"], result["rerun_log"] = cli([*overrides(root, seeds), "analyze=false"])
        result["analyze_s"], result["analyze_log"] = cli(["analyze", f"results_dir={root}"])
    finally:
        if not args.keep:
            shutil.rmtree(root.parent if args.dir is None else root, ignore_errors=True)
    for key in list(result):
        if key.endswith("_s"):
            result[key] = round(result[key], 3)
    result["keys_speedup"] = round(result["keys_baseline_s"] / result["keys_compacted_s"], 1)
    result["table_speedup"] = round(result["table_baseline_s"] / result["table_compacted_s"], 1)
    out = args.out or REPO / ".bench" / f"store-{args.items}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"""
{items} items: {result['parquet_files_before']} parquet files -> {result['parquet_files_after']} after compaction ({result['compact_s']:.1f} s)
                       per-file baseline   scan (parts)   scan (compacted)
  keys for resume      {result['keys_baseline_s']:8.2f} s        {result['keys_s']:8.2f} s     {result['keys_compacted_s']:8.2f} s
  table()              {result['table_baseline_s']:8.2f} s        {result['table_s']:8.2f} s     {result['table_compacted_s']:8.2f} s
  rerun, nothing to do (CLI, analyze=false): {result['rerun_s']:.1f} s
  styleprobe analyze: {result['analyze_s']:.1f} s
-> {out}""", flush=True)
    return result


if __name__ == "__main__":
    main()
