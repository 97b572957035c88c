"""Read one or many results folders into one table, and name what its columns mean.

Analysis reads only what the store wrote (rows joined with every metric's scores); it never reaches
into generation or scoring internals. Every metric column gets a `<column>_model` companion naming the
scorer's model, so a figure's axis can always say which model a number came from, and a `<column>_role`
companion saying what it measures and which way is better (`metric_role`), as its scorer declared it.
Columns renamed since a folder was scored (`RENAMED`) are read under their new names.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from styleprobe.errors import AnalysisError
from styleprobe.metric_roles import RENAMED, UNKNOWN_ROLE, MetricRole, kind_roles
from styleprobe.run.store import Store
from styleprobe.run.windows import FULL

log = logging.getLogger("styleprobe")

#: What identifies where an image sits in the design: a style reference x a prompt x a seed.
UNIT_COLUMNS: tuple[str, ...] = ("reference_digest", "prompt", "seed")
REFERENCE_COLUMN, PROMPT_COLUMN = "reference_digest", "prompt"
#: The cell of the crossed design: a style reference x a prompt. Seeds and replicates are averaged within a cell;
#: intervals resample references and prompts (`analysis.stats`), and conditions are compared on the same cells.
CELL_COLUMNS: tuple[str, ...] = (REFERENCE_COLUMN, PROMPT_COLUMN)
#: A replicate within a cell that a method draws itself (B-LoRA's training seed, `train_seed=3`): averaged within the
#: cell like seeds, and never a condition. Rows of methods without one have none ("").
REPLICATE_COLUMN = "replicate"


ROLE_SUFFIX = "_role"


def unit_columns(table: pd.DataFrame) -> tuple[str, ...]:
    """The columns that tell one image's place apart: reference, prompt, seed, and the replicate where any row has one."""
    if REPLICATE_COLUMN in table and table[REPLICATE_COLUMN].fillna("").astype(str).ne("").any():
        return (*UNIT_COLUMNS, REPLICATE_COLUMN)
    return UNIT_COLUMNS

#: Generation parameters that can tell two conditions apart (those that vary in a table become its conditions),
#: besides each method's own knobs, which its rows name in `knob_columns`.
CONDITION_COLUMNS: tuple[str, ...] = (
    "model", "method", "injection", "window", "scale", "subtraction",
    "steps", "guidance", "height", "width", "scheduler", "dtype", "negative_prompt",
)


def load_results(results_dirs: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """The table of one or many results folders: one row per image, metric columns joined, `results_dir` added.

    The same key in two folders is the same image made twice; it is kept once (the copy with the most scores)
    so a unit is never counted twice.
    """
    dirs = [results_dirs] if isinstance(results_dirs, (str, Path)) else list(results_dirs)
    if not dirs:
        raise AnalysisError("no results folder given; pass results_dir=<folder> (a sweep's output)")
    frames = []
    for d in dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            raise AnalysisError(f"results folder {root} does not exist; run a sweep first (styleprobe ...) or fix the path")
        store = Store(root)
        if not store.row_files():
            raise AnalysisError(f"results folder {root} has no rows/*.parquet; run a sweep into it first")
        table = store.table()
        if REPLICATE_COLUMN in table:
            table[REPLICATE_COLUMN] = table[REPLICATE_COLUMN].fillna("")
        if "window" in table:  # rows written before windows existed acted on every step
            full = {"window": FULL.name, "window_start": FULL.start, "window_end": FULL.end}
            table = table.fillna({c: v for c, v in full.items() if c in table})
        for column, model in _value_column_models(store).items():
            if column in table and f"{column}_model" not in table:
                table[f"{column}_model"] = table[model]
        for column, role in _value_column_roles(store).items():
            if column in table:
                table[f"{column}{ROLE_SUFFIX}"] = str(role)
        table = _renamed(table)
        table["results_dir"] = str(root.resolve())
        frames.append(table)
    table = pd.concat(frames, ignore_index=True)
    before = len(table)
    if table["key"].duplicated().any():
        scores = table[metric_columns(table)].notna().sum(axis=1)
        order = scores.sort_values(ascending=False, kind="stable").index
        table = table.loc[order].drop_duplicates("key", keep="first").sort_index().reset_index(drop=True)
    if len(table) < before:
        log.info("analysis: %d images appear in more than one results folder; each is counted once", before - len(table))
    return table


def scored_columns(store: Store) -> list[str]:
    """The metric value columns a results folder already has scores for."""
    return list(_value_column_models(store))


def _value_column_models(store: Store) -> dict[str, str]:
    """Each metric's value columns -> its `<metric>_model` column (leak_margin is scored by leak_clip, ...)."""
    out: dict[str, str] = {}
    for metric in store.metrics():
        files = store.score_files(metric)
        if not files:
            continue
        for column in pq.read_schema(files[0]).names:
            if column not in ("key", "run_id") and not column.endswith("_model"):
                out[column] = f"{metric}_model"
    return out


def _value_column_roles(store: Store) -> dict[str, MetricRole]:
    """Each metric value column -> its role: as recorded at scoring, else (folders scored before roles were recorded)
    as the scorer kind of its identity declares it, else unknown."""
    out: dict[str, MetricRole] = {}
    for metric in store.metrics():
        recorded = store.metric_roles(metric)
        if recorded is not None:
            out.update({c: MetricRole.parse(r) for c, r in recorded.items()})
            continue
        identity = store.metric_identity(metric) or {}
        out.update(kind_roles(str(identity.get("scorer")), metric, identity.get("options") or {}))
    for old, (_, role) in RENAMED.items():
        if old in out:
            out[old] = role
    return out


def _renamed(table: pd.DataFrame) -> pd.DataFrame:
    """Old metric columns under their new names (where the new name is not also scored)."""
    names = {}
    for old, (new, _) in RENAMED.items():
        if old in table and new not in table and new not in names.values():
            names.update({f"{old}{suffix}": f"{new}{suffix}" for suffix in ("", "_model", ROLE_SUFFIX) if f"{old}{suffix}" in table})
    return table.rename(columns=names) if names else table


def metric_role(table: pd.DataFrame, metric: str) -> MetricRole:
    """What a metric column measures and which way is better, from the `<metric>_role` its scorer recorded.

    A table without one (built by hand) takes the role that the shipped metric config of that name declares;
    a column neither knows is `unknown` (no better direction), which analysis refuses where a role is needed.
    """
    column = f"{metric}{ROLE_SUFFIX}"
    if column in table:
        values = sorted({str(v) for v in table[column].dropna().unique()})
        if len(values) > 1:
            raise AnalysisError(f"metric {metric} has different roles across the folders read ({', '.join(values)}); "
                                "rescore one of them or give one metric another name")
        if values:
            return MetricRole.parse(values[0])
    return declared_roles().get(metric, UNKNOWN_ROLE)


def declared_roles() -> dict[str, MetricRole]:
    """Every column of the metric configs shipped in `experiments/metrics/` -> the role its scorer declares."""
    return dict(_declared_roles())


@functools.cache
def _declared_roles() -> tuple[tuple[str, MetricRole], ...]:
    import yaml

    from styleprobe.config import CONFIG_DIR

    out: dict[str, MetricRole] = {}
    for path in sorted((CONFIG_DIR / "metrics").glob("*.yaml")):
        for name, options in (yaml.safe_load(path.read_text()) or {}).items():
            if isinstance(options, dict) and "scorer" in options:
                out.update(kind_roles(str(options["scorer"]), str(name), options))
    out.update({old: role for old, (_, role) in RENAMED.items()})
    return tuple(out.items())


def metric_roles(table: pd.DataFrame, metrics: Iterable[str] | None = None) -> dict[str, MetricRole]:
    """`metric_role` of each metric column (or of `metrics`)."""
    return {m: metric_role(table, m) for m in (metric_columns(table) if metrics is None else metrics)}


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The numeric columns that are scores (each has a `<column>_model` companion)."""
    return [c for c in table.columns if f"{c}_model" in table.columns and pd.api.types.is_numeric_dtype(table[c])]


def metric_label(table: pd.DataFrame, metric: str) -> str:
    """`style_csd (CSD ViT-L/14 ...)`: the column and the model(s) that scored it, for axis labels and tables."""
    column = f"{metric}_model"
    models = sorted({str(m) for m in table[column].dropna().unique()}) if column in table else []
    return f"{metric} ({'; '.join(models)})" if models else metric


#: What the number of each metric config in experiments/metrics/ is (the model that scored it is named beside it).
METRIC_KINDS: dict[str, str] = {
    **dict.fromkeys(("style_clip", "style_clip_vit_h", "style_csd", "style_dino", "ref_dinov2", "text_clip",
                     "leak_clip"), "cosine"),
    "leak_margin": "difference of cosines",
    "leak_free": "rate: share of images",
    **dict.fromkeys(("judge_style", "judge_shape", "judge_leak"), "rate: share of images"),
    "quality_imagereward": "standardised reward",
    "quality_pickscore": "logit scale x cosine",
    "quality_hps": "cosine",
    "quality_aesthetic": "rating, 1-10 scale",
}

#: The parts of a scorer's name that say whose findings its numbers are: a figure states them once, in its title.
DISCLAIMER = re.compile(r"\s*\((?:findings about the toy[^)]*|machinery check[^)]*|timing only[^)]*|not about image quality)\)")


def metric_kind(table: pd.DataFrame, metric: str) -> str:
    """What a metric's number is: a cosine, a difference of cosines, a rate; "" when not known.

    A metric config of experiments/metrics/ by its name; another column whose scores are all 0 or 1 is a rate.
    """
    if metric in METRIC_KINDS:
        return METRIC_KINDS[metric]
    values = table[metric].dropna() if metric in table else pd.Series(dtype=float)
    return "rate: share of images" if len(values) and values.isin((0, 1)).all() else ""


def axis_label(table: pd.DataFrame, metric: str) -> str:
    """`style_csd (cosine; CSD ViT-L/14)`: the column, what its number is and who scored it, for a figure's axis.

    The toy world's and the machinery check's disclaimers are left out: the figure's title states them once.
    """
    column = f"{metric}_model"
    models = sorted({DISCLAIMER.sub("", str(m)) for m in table[column].dropna().unique()}) if column in table else []
    parts = [p for p in (metric_kind(table, metric), "; ".join(models)) if p]
    return f"{metric} ({'; '.join(parts)})" if parts else metric


def disclaimers(table: pd.DataFrame) -> list[str]:
    """The findings its numbers are about, once per figure: the toy world's, or a machinery check's."""
    labels = " ".join(str(v) for c in table.columns if c.endswith("_model") for v in table[c].dropna().unique())
    out = []
    if is_toy_world(table) or "findings about the toy" in labels:
        out.append("TOY WORLD: findings about the toy, not about SDXL")
    if is_machinery_check(table):
        out.append("MACHINERY CHECK: tiny random model and scorers, numbers are not science")
    return out


def model_names(table: pd.DataFrame) -> list[str]:
    """The generating models in a table (e.g. `tiny`, `sdxl`)."""
    return sorted(str(m) for m in table["model"].dropna().unique()) if "model" in table else []


def is_machinery_check(table: pd.DataFrame) -> bool:
    """Whether the numbers come from the tiny random model or stand-in scorers: they check code, not science."""
    if "model" in table and table["model"].astype(str).str.startswith("tiny").any():
        return True
    labels = table[[c for c in table.columns if c.endswith("_model")]].astype(str)
    return bool(labels.apply(lambda col: col.str.contains("machinery check|random", regex=True)).to_numpy().any())


def is_toy_world(table: pd.DataFrame) -> bool:
    """Whether the images come from the trained toy world: real effects, but findings about the toy, not SDXL."""
    return "model" in table and table["model"].astype(str).str.startswith("toy").any()


#: Condition columns that name what made an image rather than how it was set.
IDENTITY_COLUMNS: tuple[str, ...] = ("model", "method")


def condition_columns(table: pd.DataFrame) -> list[str]:
    """The shared condition columns, then every method's knob columns (as its rows list them), in a fixed order."""
    knobs: list[str] = []
    if "knob_columns" in table:
        for value in table["knob_columns"].dropna().unique():
            knobs += [k for k in json.loads(value) if k not in knobs]
    return [*CONDITION_COLUMNS, *sorted(k for k in knobs if k not in CONDITION_COLUMNS)]


def varying_conditions(table: pd.DataFrame, always: Iterable[str] = ("injection",)) -> list[str]:
    """The condition columns that take more than one value in this table (plus `always`), in a fixed order.

    A knob column that only one method has is constant within that method, so it varies only where it is swept.
    """
    keep = set(always)
    varying = [c for c in condition_columns(table) if c in table and (c in keep or _varies(table, c))]
    # A setting that follows from the model or the method (a method's own sampler, a model's resolution) is part
    # of that condition, not another one: it would split nothing and only lengthen every label.
    identity = [c for c in IDENTITY_COLUMNS if c in varying]
    if not identity:
        return varying
    grouped = table.groupby(identity, dropna=False)
    return [c for c in varying if c in keep or c in identity or grouped[c].nunique(dropna=False).max() > 1]


def _varies(table: pd.DataFrame, column: str) -> bool:
    """Whether a column takes several values among the rows that have it (rows without it are another method's)."""
    return table[column].dropna().astype(str).nunique() > 1


def method_names(table: pd.DataFrame) -> list[str]:
    """The methods in a table (rows written before methods were plug-ins say `ip_adapter`)."""
    return sorted(str(m) for m in table["method"].dropna().unique()) if "method" in table else []


def require_columns(table: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """A one-line error naming the missing columns and what the table does have."""
    if table.empty:
        raise AnalysisError(f"{what}: the table is empty; run a sweep (and score it) before analysing")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        have = ", ".join(metric_columns(table)) or "none"
        raise AnalysisError(
            f"{what}: the table has no column {', '.join(missing)}; score it first "
            f"(styleprobe score results_dir=... metrics=[...]) or choose one of its metrics: {have}"
        )


def layer_names(value: str) -> list[str]:
    """The `layers` column (a JSON list of the modules or transformer layers switched on) as a list."""
    return list(json.loads(value)) if isinstance(value, str) and value else []


def data_sets(table: pd.DataFrame) -> pd.DataFrame:
    """The style sets and prompt sets a table holds, as the runs that made its rows were configured.

    One row per (results folder, style set, prompt set): the sets' names (`data.style_set`, `data.prompts` of each
    run's saved `runs/<run_id>/config.yaml`; an inline prompt list is named by its length), and the rows, style
    references and prompts of the table that those runs made. Rows whose run config is gone are "unknown".
    """
    import yaml

    names: dict[tuple[str, str], tuple[str, str]] = {}
    if "run_id" in table and "results_dir" in table:
        for (folder, run), _ in table.groupby(["results_dir", "run_id"], sort=False):
            path = Path(str(folder)) / "runs" / str(run) / "config.yaml"
            data = (yaml.safe_load(path.read_text()) or {}).get("data", {}) if path.is_file() else {}
            prompts = data.get("prompts", "unknown")
            prompts = f"{len(prompts)} prompts given inline" if isinstance(prompts, list) else str(prompts)
            names[(str(folder), str(run))] = (str(data.get("style_set", "unknown")), prompts)
    keys = zip(table.get("results_dir", pd.Series("", index=table.index)).astype(str),
               table.get("run_id", pd.Series("", index=table.index)).astype(str))
    sets = pd.DataFrame([names.get(k, ("unknown", "unknown")) for k in keys], columns=["style_set", "prompt_set"],
                        index=table.index)
    frame = table.assign(style_set=sets["style_set"], prompt_set=sets["prompt_set"])
    grouped = frame.groupby(["style_set", "prompt_set"], sort=True)
    return pd.DataFrame({
        "rows": grouped.size(),
        "references": grouped[REFERENCE_COLUMN].nunique(),
        "styles": grouped["style"].agg(lambda s: sorted(s.dropna().astype(str).unique())) if "style" in frame
        else grouped.size().map(lambda _: []),
        "prompts": grouped[PROMPT_COLUMN].nunique(),
    }).reset_index()


def preset_analysis_metrics(results_dirs: Sequence[str | Path]) -> dict[str, str]:
    """The model preset's analysis metrics (`model.analysis_metrics`, e.g. the toy world's judge columns) as the newest
    sweep into each folder saved them in `runs/<run_id>/config.yaml`; {} where a folder's preset has none, a folder
    has no sweep config, or the folders disagree. `styleprobe analyze` has no model preset of its own: with this, its
    `analysis.*_metric` defaults are the same as at the end of the sweep that made the folder."""
    import yaml

    found = []
    for folder in results_dirs:
        chosen: dict[str, str] | None = None
        for path in sorted((Path(folder) / "runs").glob("*/config.yaml"), reverse=True):  # run ids start with the time
            model = (yaml.safe_load(path.read_text()) or {}).get("model")
            if isinstance(model, dict):
                chosen = {str(k): str(v) for k, v in (model.get("analysis_metrics") or {}).items()}
                break
        found.append(chosen or {})
    return found[0] if found and all(f == found[0] for f in found) else {}


def with_preset_metrics(cfg: Any, results_dirs: Sequence[str | Path]) -> Any:
    """`styleprobe analyze`'s config, given the folders' model preset's analysis metrics (`preset_analysis_metrics`)
    as `model.analysis_metrics`, so that `experiments/analysis/default.yaml` picks them as the sweep did. A config that
    has a model is returned as it is; an `analysis.*_metric` given on the command line still wins (it replaced the
    interpolation that reads the preset)."""
    import copy

    from omegaconf import OmegaConf, open_dict

    if "model" in cfg:
        return cfg
    preset = preset_analysis_metrics(results_dirs)
    if not preset:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.model = OmegaConf.create({"analysis_metrics": preset})
    return cfg


def model_notice(table: pd.DataFrame, code: str, machinery_means: str) -> list[str]:
    """The lines a report opens with when its images are not a real model's: the toy world's findings are about the
    toy; the tiny model's numbers exercise `code` and mean `machinery_means`."""
    lines: list[str] = []
    if is_toy_world(table):
        lines += ["> **Toy world.** These images come from styleprobe's trained toy model (drawn shapes in eight styles, an",
                  "> SDXL-shaped UNet, IP-Adapter and scorers trained on them; README: The toy world). Its effects are real,",
                  "> but they are findings about the toy, not about SDXL.", ""]
    if is_machinery_check(table):
        lines += ["> **Machinery check, not science.** These images come from the tiny embedded model (random weights)",
                  f"> and are scored by tiny random stand-ins for the metric models. The numbers exercise the {code} code;",
                  f"> {machinery_means}", ""]
    return lines
