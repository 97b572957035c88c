"""The scoring stage: fill the metric columns a results folder lacks, and nothing else.

It reads only the store (rows, images, reference copies) and writes one score file per metric and batch,
so adding a metric to a finished sweep scores only that metric, a rerun scores nothing, an interrupted
run resumes, and it runs as well on another machine as right after generation:

    styleprobe score results_dir=results/toy/layer_probe             the default metrics
    styleprobe score results_dir=... metrics=[default,style_clip_vit_h]   add one

Every check (metric names, options, a metric's model changed under an existing column, missing images
or references) happens before any scoring model is loaded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from styleprobe.config import positive_int
from styleprobe.errors import ConfigError
from styleprobe.progress import Progress
from styleprobe.run.runs import compact_tables, new_run_id, save_run_config
from styleprobe.run.store import Store

log = logging.getLogger("styleprobe")

#: Row columns the scorers read.
NEEDED_COLUMNS = ("key", "image_path", "reference", "reference_digest", "prompt", "content", "subject", "base")
WEIGHTS = ("auto", "tiny", "toy", "hub", "random")


@dataclass
class ScoringPlan:
    """What will be scored, checked before any scoring model is loaded."""

    scorers: list[Any]
    todo: pd.DataFrame  # the rows some metric still lacks (one per key), sorted by key
    pending: dict[str, set[str]]  # metric -> keys it still lacks
    references: dict[str, Path]  # digest -> readable file
    batch_size: int
    weights: str

    @property
    def n_pending(self) -> int:
        return sum(len(v) for v in self.pending.values())


@dataclass
class ScoringResult:
    scored: dict[str, int] = field(default_factory=dict)  # metric -> rows scored in this run
    seconds: float = 0.0


def metric_configs(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The `metrics` group as plain dicts; empty when `metrics=[]`."""
    metrics = cfg.get("metrics")
    return OmegaConf.to_container(metrics, resolve=True) if metrics else {}  # type: ignore[return-value]


def resolve_weights(weights: str, bases: Iterable[str]) -> str:
    """`auto`: the tiny random scorers for a tiny model's outputs, the toy world's trained scorers for the toy
    model's, the real ones for everything else."""
    if weights not in WEIGHTS:
        raise ConfigError(f"scoring.weights={weights!r}; choose one of {', '.join(WEIGHTS)}")
    if weights != "auto":
        return weights
    kinds = {next((k for k in ("tiny", "toy") if str(b).startswith(f"{k}:")), "hub") for b in bases}
    if len(kinds) > 1:
        raise ConfigError(f"these results mix {' and '.join(sorted(kinds))} models; set scoring.weights to one of "
                          f"{', '.join(sorted(kinds))}")
    return kinds.pop() if kinds else "hub"


def build(metrics: Mapping[str, Mapping[str, Any]], scoring: DictConfig, bases: Iterable[str]) -> tuple[list[Any], str, int]:
    """Scorer objects (no weights read yet), the weights they use and the batch size."""
    from styleprobe.metrics import build_scorers
    from styleprobe.models.devices import device_name

    batch_size = positive_int(scoring.batch_size, "scoring.batch_size")
    weights = resolve_weights(str(scoring.weights), bases)
    device = device_name(str(scoring.device))  # a name: torch is imported (and the device checked) when models load
    scorers = build_scorers(metrics, device, weights, preprocess_on_device(str(scoring.get("preprocess", "auto")), device),
                            scoring_dtype(str(scoring.get("dtype", "float32"))))
    return scorers, weights, batch_size


SCORING_DTYPES = ("float32", "bfloat16", "float16")


def scoring_dtype(name: str) -> str:
    """`scoring.dtype`: float32 (the default, the published numbers' precision), bfloat16 or float16 (faster on a GPU;
    the metric's model column and identity say so, so its numbers never mix with float32 ones in one column)."""
    if name not in SCORING_DTYPES:
        raise ConfigError(f"scoring.dtype={name!r}; choose float32, bfloat16 or float16")
    return name


def preprocess_on_device(choice: str, device: str) -> bool:
    """`scoring.preprocess`: tensor (batched on the scoring device), pil (per image, the reference implementation),
    or auto: tensor on a GPU, where PIL's resizing is most of the scoring time, pil on the CPU. `device` is its name."""
    if choice not in ("auto", "tensor", "pil"):
        raise ConfigError(f"scoring.preprocess={choice!r}; choose auto, tensor or pil")
    return choice == "tensor" or (choice == "auto" and str(device).split(":")[0] == "cuda")


def check_identities(store: Store, scorers: list[Any]) -> None:
    """A column holds one metric: refuse to add scores from a different model or definition to it."""
    for s in scorers:
        stored, wanted = store.metric_identity(s.name), s.identity()
        if stored is not None and stored != wanted:
            diff = _differences(stored, wanted)
            raise ConfigError(
                f"{store.scores / s.name} holds {s.name} scores made differently ({diff}); give this variant its own "
                f"name (a copy of experiments/metrics/{s.name}.yaml under another key) or delete that folder to rescore"
            )


def role_names(scorer: Any) -> dict[str, str]:
    """A scorer's column roles as recorded in `_metric.yaml` ('leakage:lower')."""
    return {column: str(role) for column, role in scorer.roles().items()}


def record_roles(store: Store, scorers: list[Any]) -> None:
    """Give already scored metrics the roles their configs declare now: a role says what a number means, so changing
    one relabels the column without rescoring it."""
    for s in scorers:
        identity = store.metric_identity(s.name)
        if identity is not None and store.metric_roles(s.name) != role_names(s):
            store.write_metric_identity(s.name, identity, role_names(s))


def renamed_scores(store: Store, scorer: Any) -> list[str]:
    """The old names (`leak_dino`, now `ref_dinov2`) under which the folder holds this metric's scores with its
    identity, while the new name holds none: scores to move rather than compute again."""
    from styleprobe.metric_roles import RENAMED

    if store.metric_identity(scorer.name) is not None:
        return []
    return [old for old, (new, _) in RENAMED.items() if new == scorer.name and store.metric_identity(old) == scorer.identity()]


def adopt_renamed(store: Store, scorers: list[Any]) -> list[str]:
    """A metric scored under its old name with the same identity (`renamed_scores`) is moved to its new name, not
    scored again. Returns the old names adopted."""
    adopted = []
    for s in scorers:
        old = next((o for o in renamed_scores(store, s) if store.score_files(o)), None)
        if old is not None:
            store.rename_metric(old, s.name, role_names(s))
            log.info("scores of %s are now %s (renamed, not rescored)", old, s.name)
            adopted.append(old)
    return adopted


def unscored(store: Store, scorers: list[Any], keys: set[str]) -> list[Any]:
    """The scorers that still lack a score for some of `keys`: the ones whose weights scoring them will read. Scores
    kept under a renamed metric's old name with the same identity count as scored (`adopt_renamed` moves them)."""
    out = []
    for s in scorers:
        scored = store.scored_keys(s.name)
        for old in renamed_scores(store, s):
            scored |= store.scored_keys(old)
        if keys - scored:
            out.append(s)
    return out


def check_prompts(scorers: Iterable[Any], keys: list[str], prompts: list[Any], where: str) -> None:
    """A metric that scores an image for its prompt (ImageReward, PickScore, HPS) refuses rows without one, before any
    model is loaded: one line naming the metric, how many rows and the fix."""
    empty = [k for k, p in zip(keys, prompts, strict=True) if not isinstance(p, str) or not p.strip()]
    needing = [s.name for s in scorers if getattr(s, "needs_prompt", False)]
    if empty and needing:
        raise ConfigError(
            f"{', '.join(needing)} score{'s' if len(needing) == 1 else ''} each image for its prompt, but {len(empty)} "
            f"of {len(keys)} rows of {where} have none (e.g. {empty[0]}); fill in their prompt column or leave "
            f"{'that metric' if len(needing) == 1 else 'those metrics'} out (metrics=[...])"
        )


def scorer_files(scorers: Iterable[Any]) -> list[Any]:
    """Every weights file these scorers read (`models.files.ModelFile`s), for `models.files.check_found`."""
    return [f for s in scorers for f in s.needed_files()]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The options that differ between two identities, as 'key: old there, new now'."""

    def flat(identity: Mapping[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in identity.items() if k not in ("options", "model")}, **identity.get("options", {})}

    flat_old, flat_new = flat(old), flat(new)
    keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    if not keys:
        flat_old, flat_new, keys = {"model": old.get("model")}, {"model": new.get("model")}, ["model"]
    return ", ".join(f"{k}: {flat_old.get(k)!r} there, {flat_new.get(k)!r} now" for k in keys)


def plan(
    store: Store,
    scorers: list[Any],
    batch_size: int,
    weights: str,
    keys: set[str] | None = None,
    rows: pd.DataFrame | None = None,
    done: set[str] | None = None,
) -> ScoringPlan:
    """Which rows each metric still lacks, with every input they need checked to exist.

    First the folder's metric records are brought up to date without scoring anything: scores under a renamed
    metric's old name move to the new one (`adopt_renamed`), and scored metrics take the roles declared now
    (`record_roles`).

    `rows` is the store's generated rows when the caller has read them already, `done` their keys. The rows themselves
    are read only when some metric lacks some: a finished folder is checked from its key columns alone.
    """
    columns = list(rows.columns) if rows is not None else store.row_columns()
    if not columns or (rows is not None and rows.empty):
        return ScoringPlan(scorers, pd.DataFrame(), {s.name: set() for s in scorers}, {}, batch_size, weights)
    reserved = set(columns)
    for s in scorers:
        clash = [c for c in (*s.columns, s.model_column) if c in reserved]
        if clash:
            raise ConfigError(f"metric {s.name} would write column {clash[0]!r}, which the table already has; rename the metric")
    missing_cols = [c for c in NEEDED_COLUMNS if c not in columns]
    if missing_cols:
        raise ConfigError(f"{store.rows} lacks column(s) {', '.join(missing_cols)}; was it written by styleprobe's sweep?")
    adopt_renamed(store, scorers)
    check_identities(store, scorers)
    record_roles(store, scorers)
    available = set(rows.key) if rows is not None else (done if done is not None else store.done_keys())
    if keys is not None:
        available = available & keys
    pending = {s.name: available - store.scored_keys(s.name) for s in scorers}
    needed = set().union(*pending.values())
    if not needed:
        return ScoringPlan(scorers, pd.DataFrame(columns=columns), pending, {}, batch_size, weights)
    rows = store.rows_table() if rows is None else rows
    todo = rows[rows.key.isin(needed)].sort_values("key").reset_index(drop=True)
    prompted = [s for s in scorers if getattr(s, "needs_prompt", False) and pending[s.name]]
    if prompted:
        wanted = todo[todo.key.isin(set().union(*(pending[s.name] for s in prompted)))]
        check_prompts(prompted, list(wanted.key), list(wanted.prompt), str(store.rows))
    references: dict[str, Path] = {}
    for digest, ref in todo.groupby("reference_digest")["reference"].first().items():
        path = store.reference_copy(str(digest)) or Path(str(ref))
        if not path.is_file():
            raise ConfigError(
                f"style reference {ref} (digest {digest}) is not in {store.references} nor at its path; "
                "copy the style set to that path or rerun the sweep once to store the reference copies"
            )
        references[str(digest)] = path
    absent = [p for p in todo.image_path if not (store.root / p).is_file()]
    if absent:
        raise ConfigError(f"{len(absent)} images named in {store.rows} are missing (e.g. {absent[0]}); rerun the sweep to remake them")
    return ScoringPlan(scorers, todo, pending, references, batch_size, weights)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def score(store: Store, p: ScoringPlan, run_id: str) -> ScoringResult:
    """Score what is pending, batch by batch; each batch's scores land in one file per metric."""
    start = time.perf_counter()
    result = ScoringResult({s.name: 0 for s in p.scorers})
    todo = p.todo
    if todo.empty:
        return result
    from styleprobe.models.loading import quiet_libraries

    quiet_libraries()
    unrecorded = {s.name for s in p.scorers if store.metric_identity(s.name) is None}
    references = {d: _open(path) for d, path in p.references.items()}
    log.info("scoring %d rows: %s", len(todo), ", ".join(f"{k} {len(v)}" for k, v in p.pending.items() if v))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as decoder:  # PNG decoding releases the GIL
        _score_batches(store, p, run_id, todo, references, unrecorded, result, decoder)
    result.seconds = time.perf_counter() - start
    return result


def _score_batches(
    store: Store, p: ScoringPlan, run_id: str, todo: pd.DataFrame, references: dict[str, Image.Image],
    unrecorded: set[str], result: ScoringResult, decoder: ThreadPoolExecutor,
) -> None:
    """Every batch in turn, decoding the next one ahead; progress per row."""
    chunks = [todo.iloc[i : i + p.batch_size] for i in range(0, len(todo), p.batch_size)]

    def decode(chunk: pd.DataFrame) -> list[Any]:
        return [decoder.submit(_open, store.root / path) for path in chunk.image_path]

    upcoming = decode(chunks[0])
    with Progress(len(todo), "score", "row") as bar:
        for n, chunk in enumerate(chunks):
            # the next batch decodes on the worker threads while this one is scored
            futures, upcoming = upcoming, (decode(chunks[n + 1]) if n + 1 < len(chunks) else [])
            images = dict(zip(chunk.key, (f.result() for f in futures), strict=True))
            _score_chunk(store, p, run_id, n, chunk, images, references, unrecorded, result)
            bar.update(len(chunk))


def _score_chunk(
    store: Store, p: ScoringPlan, run_id: str, n: int, chunk: pd.DataFrame, images: dict[str, Image.Image],
    references: dict[str, Image.Image], unrecorded: set[str], result: ScoringResult,
) -> None:
    """Score one batch of rows with every metric that lacks some of them; one score file per metric."""
    from styleprobe.metrics import ScoreBatch

    groups: dict[tuple[str, ...], list[Any]] = {}
    for s in p.scorers:
        need = tuple(k for k in chunk.key if k in p.pending[s.name])
        if need:
            groups.setdefault(need, []).append(s)
    for need, scorers in groups.items():
        sub = chunk.set_index("key").loc[list(need)]
        batch = ScoreBatch(
            images=[images[k] for k in need],
            references=[references[d] for d in sub.reference_digest],
            reference_ids=list(sub.reference_digest),
            prompts=list(sub.prompt),
            contents=list(sub.content),
            subjects=list(sub.subject),
            device=scorers[0].settings.device,
            preprocess_on_device=scorers[0].settings.preprocess_on_device,
        )
        for s in scorers:
            values = s.score(batch)
            frame = pd.DataFrame({"key": list(need), **{c: values[c] for c in s.columns}})
            frame[s.model_column] = s.describe_model()
            if s.name in unrecorded:  # with the first scores, so a failed load leaves no trace
                store.write_metric_identity(s.name, s.identity(), role_names(s))
                unrecorded.discard(s.name)
            store.write_scores(s.name, frame, run_id, n)
            result.scored[s.name] += len(need)

def shard_keys(rows: pd.DataFrame, index: int, count: int) -> set[str]:
    """The keys of shard `index` of `count`, split as the sweep splits its items (by each row's shard key)."""
    from styleprobe.run.plan import check_shard, in_shard, shard_key

    check_shard(index, count)
    work = rows["prepare_keys"] if "prepare_keys" in rows else pd.Series("", index=rows.index)
    return {k for k, w in zip(rows["key"], work) if in_shard(shard_key(k, w), index, count)}


def run(cfg: DictConfig) -> ScoringResult:
    """`styleprobe score`: score an existing results folder with the configured metrics."""
    results_dir = Path(str(cfg.results_dir))
    store = Store(results_dir)
    if not store.row_files():
        raise ConfigError(f"no results in {results_dir} (no rows/*.parquet); give results_dir=<a sweep's results folder>")
    metrics = metric_configs(cfg)
    if not metrics:
        raise ConfigError("no metrics chosen; e.g. metrics=[default] or metrics=[style_clip,text_clip]")
    rows = store.rows_table()
    scorers, weights, batch_size = build(metrics, cfg.scoring, rows.base.unique() if "base" in rows else [])
    keys = shard_keys(rows, cfg.shard.index, cfg.shard.count)
    p = plan(store, scorers, batch_size, weights, keys, rows)
    run_id = new_run_id()
    log.info("scoring %s: %d rows, %d metric values missing (weights: %s)", results_dir, len(keys), p.n_pending, weights)
    if not p.n_pending:
        log.info("nothing to score")
        return ScoringResult({s.name: 0 for s in scorers})
    from styleprobe.models.files import check_found

    check_found(scorer_files(s for s in scorers if p.pending[s.name]))  # before the run is recorded or a model loaded
    summary = {"stage": "score", "run_id": run_id, "pending": {k: len(v) for k, v in p.pending.items()},
               "started": datetime.now(timezone.utc).isoformat()}
    save_run_config(store, run_id, cfg, summary)
    store.clean_stale_temp()
    result = score(store, p, run_id)
    log.info("scored %s in %.1f s", ", ".join(f"{k} {v}" for k, v in result.scored.items()), result.seconds)
    compact_tables(store)
    return result

