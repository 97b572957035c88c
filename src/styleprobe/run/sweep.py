"""One sweep job: validate -> plan -> skip done keys -> load the model -> generate -> store -> score -> analyze.

Everything that can be wrong with the input is checked before any model weights are loaded and
before anything is written to the results folder. `run(cfg)` is what the CLI calls; tests call it too.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from styleprobe.config import as_list, seeds
from styleprobe.errors import ConfigError
from styleprobe.models import devices, loading, presets
from styleprobe.progress import Progress
from styleprobe.run.runs import compact_tables, new_run_id, save_run_config, save_run_costs
from styleprobe.run.store import Store

if TYPE_CHECKING:  # imported where used: a config error or a missing model is reported before torch is imported
    from styleprobe.data.style_sets import StyleReference
    from styleprobe.models.layers import LayerMap
    from styleprobe.run.plan import WorkItem

log = logging.getLogger("styleprobe")


@dataclass
class SweepPlan:
    """A validated job: what to make and where, before any model is loaded."""

    spec: presets.ModelSpec
    items: list[WorkItem]
    store: Store
    device: str
    batch_size: int | None  # None: auto, chosen from the device's memory once the model is loaded
    references: list[StyleReference]
    scorers: list[Any]  # the metrics to fill after generation (none when metrics=[])
    scoring_batch_size: int
    scoring_weights: str
    analysis: Any = None  # AnalysisSettings when the report is written after scoring, else None
    sweep_keys: set[str] = field(default_factory=set)  # every shard's items: the whole sweep this job is part of
    shard: tuple[int, int] = (0, 1)  # (index, count)
    replan: Callable[..., list[WorkItem]] | None = None  # replan(patterns, seeds=None): the same job's items for other
                                                         # pattern specs (and seeds), unsharded: what a search's rounds plan


@dataclass
class SweepResult:
    planned: int
    done_before: int
    generated: int
    results_dir: Path
    run_id: str
    seconds: float
    scored: dict[str, int] = field(default_factory=dict)  # metric -> rows scored by this job
    report: Any = None  # the analysis.report.Report written after scoring, if any


def layer_maps_for(spec: presets.ModelSpec) -> Callable[[str], LayerMap]:
    """The layer map of each attention site, from the UNet's config file alone (a JSON read: no weights, no torch).

    The config is read when the first map is asked for, so a method can refuse a model before that. A UNet with
    blocks `LayerMap.from_config` does not know is built on the `meta` device instead (diffusers, no weights).
    """
    from styleprobe.models.layers import LayerMap

    config = functools.cache(lambda: loading.load_unet_config(spec))
    unet = functools.cache(lambda: loading.build_unet_structure(config()))
    return functools.cache(lambda site: LayerMap.from_config(config(), site) or LayerMap.from_unet(unet(), site))


def prepare(cfg: DictConfig) -> SweepPlan:
    """Validate every input and expand the plan; raises ConfigError with a one-line fix."""
    from styleprobe.data.prompt_sets import load_prompts
    from styleprobe.data.style_sets import load_style_set
    from styleprobe.methods.base import parse_entries
    from styleprobe.run import scoring
    from styleprobe.run.plan import build_plan, shard

    spec = presets.ModelSpec.from_config(cfg.model)
    seed_list = seeds(cfg.seeds)
    references = load_style_set(cfg.data.style_set)
    prompts = load_prompts(cfg.data.prompts if isinstance(cfg.data.prompts, str) else as_list(cfg.data.prompts))
    batch_size = _batch_size(cfg.engine.batch_size)
    device = devices.device_name(cfg.engine.device)
    dtype = devices.dtype_name(spec.dtype, device)
    layer_map = layer_maps_for(spec)

    def replan(patterns: list[Any], seed_values: list[int] | None = None) -> list[WorkItem]:
        entries = parse_entries(
            OmegaConf.to_container(cfg.method, resolve=True) if cfg.get("method") else {},
            patterns=patterns,
            windows=as_list(cfg.injection.get("windows", None) or ["full"]),
            presets=OmegaConf.to_container(cfg.model.presets, resolve=True) if cfg.model.get("presets") else {},
            sampler=OmegaConf.to_container(cfg.sampler, resolve=True),
            model=OmegaConf.to_container(cfg.model, resolve=True),
            layer_map=layer_map,
            spec=spec,
        )
        return build_plan(model=spec, dtype=dtype, entries=entries, references=references, prompts=prompts,
                          seeds=seed_list if seed_values is None else seed_values)

    every_item = replan(as_list(cfg.injection.patterns))
    items = shard(every_item, cfg.shard.index, cfg.shard.count)
    store = Store(cfg.results_dir)
    metrics = scoring.metric_configs(cfg)
    scorers, weights, scoring_batch = scoring.build(metrics, cfg.scoring, [spec.base]) if metrics else ([], "", 1)
    scoring.check_identities(store, scorers)
    _warn_unscorable(scorers, references)
    analysis = _analysis_settings(cfg, scorers, every_item)
    return SweepPlan(spec, items, store, str(device), batch_size, references, scorers, scoring_batch, weights, analysis,
                     {it.key for it in every_item}, (int(cfg.shard.index), int(cfg.shard.count)), replan)


def _batch_size(value: Any) -> int | None:
    """`engine.batch_size`: a positive integer, or auto (None here: chosen from the device once it is known)."""
    if value == "auto":
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"engine.batch_size={value!r}; give a positive integer or auto")
    return value


def _warn_unscorable(scorers: list[Any], references: list[StyleReference]) -> None:
    """Say before generating when a metric will leave rows empty: leakage needs each reference's content label."""
    unlabelled = [r for r in references if not r.content.strip()]
    for s in scorers:
        if s.needs_content and unlabelled:
            log.warning(
                "%s: %d of %d style references have no content label, so %s stay empty for their images (the report "
                "says so); fill in the manifest's content column with what each image shows, e.g. a rabbit",
                s.name, len(unlabelled), len(references), ", ".join(s.columns),
            )


def _analysis_settings(cfg: DictConfig, scorers: list[Any], items: list[WorkItem]) -> Any:
    """The report's settings when this job should write it: after scoring, if asked (a shard writes it only when it
    finds the whole sweep done, see `write_report`). Settings the results cannot feed fail here, before any work:
    metrics the sweep does not score, and conditions a changed setting names that neither the plan nor the results
    folder has."""
    if not cfg.get("analyze", False) or "analysis" not in cfg:
        return None
    if not scorers:
        log.info("analysis skipped: nothing is scored (metrics=[]); run styleprobe analyze later")
        return None
    from styleprobe.analysis.load import scored_columns
    from styleprobe.analysis.report import AnalysisSettings, check_conditions, check_metrics
    from styleprobe.errors import AnalysisError

    settings = AnalysisSettings.from_config(cfg.analysis)
    store = Store(cfg.results_dir)
    columns = [c for s in scorers for c in s.columns] + scored_columns(store)
    check_metrics(columns, settings, "metrics=[...] of this sweep", {c: r for s in scorers for c, r in s.roles().items()})
    try:
        check_conditions(lambda: _conditions(items, store), settings, "this sweep (with its results folder)")
    except AnalysisError as err:
        if not _in_multirun():
            raise
        log.warning("%s (the other jobs of this multirun may add them)", err)
    return settings


#: The row columns that say which condition an item or a stored row is.
CONDITION_FIELDS = ("method", "injection", "sweep", "layers", "layer_scales", "window")


def _conditions(items: list[WorkItem], store: Store) -> Any:
    """One row per condition the results folder will hold after this sweep: the plan's and those already stored."""
    import pandas as pd

    frames = [pd.DataFrame([{k: it.row.get(k) for k in CONDITION_FIELDS} for it in items], columns=list(CONDITION_FIELDS))]
    if store.row_files():
        stored = store.rows_table()
        frames.append(stored[[c for c in CONDITION_FIELDS if c in stored]])
    return pd.concat(frames, ignore_index=True).drop_duplicates(["method", "injection"], ignore_index=True)


def _in_multirun() -> bool:
    """Whether this job is one of a Hydra multirun's (whose other jobs may make the conditions this one lacks)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except (ImportError, ValueError, AttributeError):
        return False


def run(cfg: DictConfig) -> SweepResult:
    """Run one sweep job end to end; a rerun only makes what is missing. (A config with a `search` is a layer-set search,
    `run.search.run`, which the CLI calls instead: a sequence of such sweeps.)"""
    start = time.perf_counter()
    plan = prepare(cfg)
    from styleprobe.data.style_sets import warn_if_unlike_toy

    warn_if_unlike_toy(cfg.data.style_set, plan.spec.base)
    run_id = new_run_id()
    made = make(plan, plan.items, cfg, run_id, cfg.name)
    compact_tables(plan.store)
    report = write_report(plan) if plan.analysis is not None else None
    seconds = time.perf_counter() - start
    return SweepResult(len(plan.items), made.done_before, made.generated, plan.store.root, run_id, seconds, made.scored,
                       report)


@dataclass
class Made:
    """What `make` did for a list of items."""

    done_before: int
    generated: int
    scored: dict[str, int]


def make(plan: SweepPlan, items: list[WorkItem], cfg: DictConfig, run_id: str, what: str,
         summary: dict[str, Any] | None = None) -> Made:
    """Generate the items not yet in the store and fill the scores they lack: the body of every sweep job, and of each
    round of a search (a run of its own: `run_id` names every file it writes, so each call needs a fresh one)."""
    store = plan.store
    done = store.done_keys()
    pending = [it for it in items if it.key not in done]
    log.info("%s: %d items planned, %d already done, %d to generate -> %s",
             what, len(items), len(items) - len(pending), len(pending), store.root)
    check_model_files(plan, pending, items)
    save_run_config(store, run_id, cfg, {"run_id": run_id, "planned": len(items), "pending": len(pending),
                                          "started": datetime.now(timezone.utc).isoformat(), "device": plan.device,
                                          **(summary or {})})
    store.clean_stale_temp()
    for ref in plan.references:
        store.save_reference(ref.image, ref.digest)
    generated = 0
    if pending:
        from styleprobe.run.engine import Engine

        start = time.perf_counter()
        model = loading.load(plan.spec, plan.device)
        engine = Engine(model, plan.batch_size)  # None: auto, per method once it is attached (memory.py)
        with Progress(len(pending), "generate", "image") as bar:
            stats = engine.generate(pending, store, run_id, on_batch=lambda n, total: bar.update_to(n))
        generated = stats.generated
        costs = generation_costs(stats, model)
        for entry, cost in costs["methods"].items():
            log.info("%s: %d images, %.2f s per image; per-reference preparation %.1f s", entry, cost["images"],
                     cost["seconds_per_image"], cost["prepare_seconds"])
        if costs["peak_gpu_bytes"] is not None:
            log.info("peak GPU memory this job: %.2f GiB", costs["peak_gpu_bytes"] / 2**30)
        save_run_costs(store, run_id, costs)
        log.info("%s: generated %d images in %.1f s; table: %d rows", what, generated, time.perf_counter() - start,
                 len(done) + generated)
    scored: dict[str, int] = {}
    if plan.scorers:
        from styleprobe.run import scoring

        todo = scoring.plan(store, plan.scorers, plan.scoring_batch_size, plan.scoring_weights, {it.key for it in items},
                            done=done | {it.key for it in pending})
        scored = scoring.score(store, todo, run_id).scored
        if todo.n_pending:
            log.info("%s: scored %s", what, ", ".join(f"{k} {v}" for k, v in scored.items()))
        else:
            log.info("%s: every row already has %s", what, ", ".join(s.name for s in plan.scorers))
    return Made(len(items) - len(pending), generated, scored)


def check_model_files(plan: SweepPlan, pending: list[WorkItem], items: list[WorkItem] | None = None) -> None:
    """Find every model file this job will read, or stop with its one-line error, before anything is written or made:
    the base pipeline's and each method's files when images are pending (`Method.needed_files`), each scorer's when
    an item lacks its score (`Scorer.needed_files`); then each method's checks of the found configs (`check_files`).

    Done here, once the resume check knows what is pending, rather than in `prepare`: a finished folder (or `status`)
    needs no weights, so it never asks for them on an offline node.
    """
    from styleprobe.models.files import check_found, pipeline_files
    from styleprobe.run import scoring

    by_entry: dict[str, list[WorkItem]] = {}
    for it in pending:
        by_entry.setdefault(it.entry.name, []).append(it)
    files = pipeline_files(plan.spec) if pending else []
    for items in by_entry.values():
        files += items[0].method.needed_files(plan.spec, items)
    keys = {it.key for it in (plan.items if items is None else items)}
    files += scoring.scorer_files(scoring.unscored(plan.store, plan.scorers, keys))
    check_found(files)
    for items in by_entry.values():
        items[0].method.check_files(plan.spec, items)


def sweep_pending(plan: SweepPlan) -> int:
    """Items of the whole sweep (every shard) that still lack their image or one of this job's metrics."""
    done = plan.store.done_keys()
    missing = plan.sweep_keys - done
    for s in plan.scorers:
        missing |= plan.sweep_keys - plan.store.scored_keys(s.name)
    return len(missing)


def report_is_current(store: Store) -> bool:
    """Whether `analysis/report.md` was written after the newest row and score file (by a shard that finished too)."""
    report = store.root / "analysis" / "report.md"
    if not report.is_file():
        return False
    files = [*store.row_files(), *(f for m in store.metrics() for f in store.score_files(m))]
    return not files or report.stat().st_mtime >= max(f.stat().st_mtime for f in files)


def write_report(plan: SweepPlan) -> Any:
    """The analysis report, written by an unsharded job, or by the shard that finds every shard's items done and scored.

    Shards finish in any order; each checks after its own last write, so the last to finish sees the sweep complete.
    Two that finish together would both see it: a lock on the results folder lets one write, and the other skips
    while it writes or once the report is newer than every row and score file.
    """
    from styleprobe.analysis.report import analyze, log_report

    index, count = plan.shard
    if count > 1:
        pending = sweep_pending(plan)
        if pending:
            log.info(
                "shard %d/%d done; %d items of other shards still pending: the last shard to finish writes the report "
                "(or run styleprobe analyze results_dir=%s)", index, count, pending, plan.store.root,
            )
            return None
    with plan.store.exclusive("report") as mine:
        if not mine:
            log.info("shard %d/%d: another job is writing the report of %s", index, count, plan.store.root)
            return None
        if count > 1 and report_is_current(plan.store):
            log.info("shard %d/%d: the report already holds every shard's results", index, count)
            return None
        if count > 1:
            log.info("shard %d/%d finished the sweep: writing the report", index, count)
        report = analyze(plan.store.root, plan.analysis)
    log_report(report, plan.analysis)
    return report


def generation_costs(stats: Any, model: loading.LoadedModel) -> dict[str, Any]:
    """What this job's generation cost, per method entry: images, seconds, per-reference preparation; peak GPU memory;
    and how the model ran (device, dtype, whether its images carry diffusers' invisible watermark)."""
    methods = {
        entry: {
            "images": n,
            "generate_seconds": round(stats.generate_seconds.get(entry, 0.0), 3),
            "seconds_per_image": round(stats.generate_seconds.get(entry, 0.0) / n, 4) if n else None,
            "prepare_seconds": round(stats.prepare_seconds.get(entry, 0.0), 3),
            "prepared": stats.prepared.get(entry, []),  # per-reference work (trained LoRAs: seconds, steps, loss)
        }
        for entry, n in stats.generated_by.items()
    }
    return {"device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
            "watermark": getattr(model.pipe, "watermark", None) is not None, "peak_gpu_bytes": stats.peak_gpu_bytes,
            "methods": methods}
