"""`styleprobe status results_dir=<folder>`: how far a sweep has got, from its results folder alone.

It replans the sweep from the config its latest run saved (`runs/<run_id>/config.yaml`), with the device that run
resolved (so its item keys are the run's, on any machine), and counts per method entry and shard the items that
have a row (done) and those that have none (pending), and per metric the rows scored. No model is loaded and
nothing is written, so it is safe to run while jobs are writing.

Speed is images per second of wall time while any job of the sweep was writing: each run is active from its start
(in its config) to its last row (its last part's time, or the record a compaction keeps of it), overlapping runs
(parallel shards) count once, and the gaps between sessions not at all. The ETA is the pending items at that speed,
with as many jobs in parallel as so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from styleprobe.errors import ConfigError
from styleprobe.run.store import Store


@dataclass
class SweepStatus:
    results_dir: Path
    name: str
    run_id: str  # the run whose config was replanned
    shards: int
    counts: list[dict[str, Any]]  # one per (method entry, shard): method, shard, done, pending
    scored: dict[str, int]  # metric -> rows of this plan it has scored
    planned: int
    done: int
    runs: int  # sweep runs that wrote images
    active_seconds: float  # wall time while some run was writing
    images_timed: int  # images written by those runs
    report: bool  # whether analysis/report.md exists
    notes: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.planned - self.done

    @property
    def images_per_second(self) -> float | None:
        return self.images_timed / self.active_seconds if self.active_seconds > 0 and self.images_timed else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.images_per_second
        return self.pending / rate if rate else None


def sweep_runs(store: Store) -> list[tuple[str, dict[str, Any]]]:
    """(run id, saved config) of every sweep run in the folder, oldest first (scoring runs are left out)."""
    runs = []
    for path in sorted(store.runs.glob("*/config.yaml")) if store.runs.exists() else []:
        config = OmegaConf.to_container(OmegaConf.load(path))
        if isinstance(config, dict) and (config.get("_run") or {}).get("stage", "sweep") == "sweep" and "engine" in config:
            runs.append((path.parent.name, config))
    return runs


def replan_config(config: dict[str, Any], results_dir: Path) -> DictConfig:
    """A saved run config as a sweep config for the whole plan (every shard) on the device that run used."""
    run = config.get("_run") or {}
    cfg = OmegaConf.create({k: v for k, v in config.items() if not k.startswith("_")})
    cfg.results_dir = str(results_dir)
    cfg.shard.index, cfg.shard.count = 0, 1
    cfg.analyze = False
    if run.get("device"):
        cfg.engine.device = run["device"]
    if (cfg.get("search") or {}).get("kind", "none") != "none":
        cfg.injection.patterns = ["none", "all"]  # what every round of a search plans; its sets are in the record
    if cfg.engine.batch_size == "auto":
        cfg.engine.batch_size = 1  # unused: nothing is generated
    return cfg


def active_time(store: Store, runs: list[tuple[str, dict[str, Any]]]) -> tuple[float, int, int]:
    """Wall seconds while some run was writing rows (overlaps once), the images those runs wrote, and how many runs."""
    intervals, images = [], 0
    writes = store.run_writes()
    for run_id, config in runs:
        started = (config.get("_run") or {}).get("started")
        if not started or run_id not in writes:
            continue
        rows, last = writes[run_id]
        images += rows
        intervals.append((datetime.fromisoformat(started).timestamp(), last))
    seconds, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            seconds += b - max(a, end)
            end = b
    return seconds, images, len(intervals)


def status(results_dir: str | Path) -> SweepStatus:
    """Done and pending items per method entry and shard, scores per metric, speed and ETA of a results folder."""
    from styleprobe.run.plan import shard_of
    from styleprobe.run.sweep import prepare

    store = Store(results_dir)
    runs = sweep_runs(store)
    if not runs:
        raise ConfigError(f"no sweep has run in {store.root} (no runs/*/config.yaml); give results_dir=<a sweep's results folder>")
    run_id, config = runs[-1]
    shards = int(config["shard"]["count"])
    plan = prepare(replan_config(config, store.root))
    done_keys = store.done_keys()
    counts: dict[tuple[str, int], dict[str, Any]] = {}
    for it in plan.items:
        index = shard_of(it.shard_key, shards)
        row = counts.setdefault((it.entry.name, index), {"method": it.entry.name, "shard": index, "done": 0, "pending": 0})
        row["done" if it.key in done_keys else "pending"] += 1
    keys = {it.key for it in plan.items}
    scored = {m: len(keys & store.scored_keys(m)) for m in store.metrics()}
    seconds, images, active_runs = active_time(store, runs)
    done = sum(r["done"] for r in counts.values())
    notes = []
    from styleprobe.run.search import status_notes

    search_notes = status_notes(store.root)
    if len(done_keys - keys):
        notes.append(f"{len(done_keys - keys)} rows belong to " + ("the search's other rounds" if search_notes else
                     "earlier plans of this folder") + " (not counted)")
    notes += search_notes
    return SweepStatus(store.root, str(config.get("name", "")), run_id, shards, list(counts.values()), scored,
                       len(plan.items), done, active_runs, seconds, images, (store.root / "analysis" / "report.md").is_file(), notes)


def format_status(st: SweepStatus) -> str:
    """The status as a small text table and a summary."""
    from tqdm import tqdm

    lines = [f"{st.results_dir}: sweep {st.name!r}, plan of run {st.run_id} ({st.shards} shard{'s' if st.shards > 1 else ''})"]
    width = max([len("method")] + [len(r["method"]) for r in st.counts])
    lines.append(f"  {'method':<{width}}  {'shard':>7}  {'done':>7}  {'pending':>7}")
    for r in sorted(st.counts, key=lambda r: (r["method"], r["shard"])):
        lines.append(f"  {r['method']:<{width}}  {r['shard']:>3}/{st.shards:<3}  {r['done']:>7}  {r['pending']:>7}")
    share = 100.0 * st.done / st.planned if st.planned else 100.0
    lines.append(f"  {'all':<{width}}  {'':>7}  {st.done:>7}  {st.pending:>7}   {share:.0f}% of {st.planned} done")
    if st.scored:
        lines.append("scored: " + ", ".join(f"{m} {n}/{st.planned}" for m, n in st.scored.items()))
    rate = st.images_per_second
    if rate is None:
        lines.append("speed: no images written yet")
    else:
        eta = st.eta_seconds
        lines.append(
            f"speed: {rate:.2f} images/s ({st.images_timed} images in {tqdm.format_interval(st.active_seconds)} of wall time, "
            f"{st.runs} job{'s' if st.runs != 1 else ''}); "
            + (f"ETA {tqdm.format_interval(eta)} for the {st.pending} pending at this speed" if st.pending else "every image is made")
        )
    lines.append("report: " + (f"{st.results_dir / 'analysis' / 'report.md'}" if st.report else "not written yet"))
    lines.extend(f"note: {n}" for n in st.notes)
    return "\n".join(lines)


def run(cfg: DictConfig) -> SweepStatus:
    """`styleprobe status`: print the status of `results_dir`."""
    st = status(Path(str(cfg.results_dir)))
    print(format_status(st), flush=True)
    return st
