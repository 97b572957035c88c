"""The method benchmark: contenders compared on the same units, with bootstrap CIs, a Pareto front and their cost.

A *contender* is a method at one setting: its `method`, its injection pattern and the settings that vary within
that method and injection in the table (InstantStyle's `style` with and without subtraction are two contenders,
plain IP-Adapter at scales 0.5 and 1.0 two more). It is named by the `names` table of the settings (by method and
injection), with those varying settings appended.

The unit is a style reference x a prompt (`unit`): each contender's images of one unit (its seeds and, for
B-LoRA, its training-seed replicates) are averaged first, then units are resampled. Methods that draw
replicates and those that do not are thus paired on the same units. Cost comes from the run's own
measurements: each row's generation seconds and peak GPU memory, and the per-reference preparation records
(inversions, LoRA trainings) that `runs/<run_id>/costs.yaml` keeps, charged to the contenders whose rows name
them in `prepare_keys`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from styleprobe.analysis.conditions import describe_setting
from styleprobe.analysis.load import condition_columns, is_machinery_check, is_toy_world, metric_roles, require_columns
from styleprobe.analysis.stats import Bootstrap, aggregate, holm, paired_differences, select
from styleprobe.errors import AnalysisError

CONTENDER = "contender"
PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


@dataclass(frozen=True)
class Recipe:
    """A contender's source recipe: where its settings come from, the settings themselves (a setting is a row column;
    a list accepts any of its values), and the reason for any departure styleprobe makes on every model."""

    method: str
    injections: tuple[str, ...]
    source: str
    settings: Mapping[str, Any]
    reasons: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Any) -> "Recipe":
        known = {"method", "injection", "source", "settings", "reasons"}
        if not isinstance(data, Mapping) or not {"method", "injection", "settings"} <= set(data) or set(data) - known:
            raise AnalysisError(f"analysis.benchmark.recipes entry {data!r}; give {{method: ..., injection: ..., "
                                "source: ..., settings: {steps: 30, ...}, reasons: {setting: why}}}")
        injections = data["injection"] if isinstance(data["injection"], (list, tuple)) else [data["injection"]]
        return cls(str(data["method"]), tuple(map(str, injections)), str(data.get("source") or ""),
                   dict(data["settings"] or {}), {str(k): str(v) for k, v in (data.get("reasons") or {}).items()})


@dataclass(frozen=True)
class BenchmarkSettings:
    """The `analysis.benchmark` config group: who is compared against whom, on what, over which unit."""

    reference: Mapping[str, Any] = field(default_factory=lambda: {"method": "ip_adapter", "injection": "style", "subtraction": 0.0})
    style_metric: str = "style_csd"  # the style axis of the trade-off figure and the Pareto front
    text_metric: str = "text_clip"
    leak_metric: str = "leak_clip"
    unit: tuple[str, ...] = ("reference_digest", "prompt")
    names: tuple[tuple[str, str, str], ...] = ()  # (method, injection, display name)
    grid_prompt: str | None = None  # null: the first prompt in A-Z order
    grid_seed: int | None = None  # null: the lowest seed
    published_as: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # a paper's method name -> our rows
    recipes: tuple[Recipe, ...] = ()  # each contender's source settings
    departures: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # model name prefix -> setting -> why

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "BenchmarkSettings":
        known = {"reference", "style_metric", "text_metric", "leak_metric", "unit", "names", "grid", "published_as",
                 "recipes", "departures"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AnalysisError(f"unknown analysis.benchmark setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        names = []
        for entry in data.get("names") or []:
            if not isinstance(entry, Mapping) or not {"method", "injection", "name"} <= set(entry):
                raise AnalysisError(f"analysis.benchmark.names entry {entry!r}; give {{method: ..., injection: ..., name: ...}}")
            names.append((str(entry["method"]), str(entry["injection"]), str(entry["name"])))
        grid = dict(data.get("grid") or {})
        reference = dict(data.get("reference") or {})
        if not reference:
            raise AnalysisError("analysis.benchmark.reference is empty; name the contender to pair against, "
                                "e.g. {method: ip_adapter, injection: style, subtraction: 0.0}")
        unit = tuple(data.get("unit") or cls.unit)
        recipes = tuple(Recipe.from_mapping(r) for r in data.get("recipes") or [])
        departures = data.get("departures") or {}
        if not isinstance(departures, Mapping) or not all(isinstance(v, Mapping) for v in departures.values()):
            raise AnalysisError(f"analysis.benchmark.departures={departures!r}; give {{model: {{setting: why}}}}, "
                                "e.g. {toy: {steps: the toy preset samples 20 steps}}")
        return cls(reference, str(data.get("style_metric", cls.style_metric)), str(data.get("text_metric", cls.text_metric)),
                   str(data.get("leak_metric", cls.leak_metric)), unit, tuple(names), grid.get("prompt"),
                   grid.get("seed"), {str(k): dict(v) for k, v in (data.get("published_as") or {}).items()}, recipes,
                   {str(m): {str(k): str(v) for k, v in r.items()} for m, r in departures.items()})

    def name(self, method: str, injection: str) -> str:
        for m, i, n in self.names:
            if (m, i) == (method, injection):
                return n
        return f"{method}: {injection}"

    def order(self, method: str, injection: str) -> int:
        for n, (m, i, _) in enumerate(self.names):
            if (m, i) == (method, injection):
                return n
        return len(self.names)


def with_contenders(table: pd.DataFrame, settings: BenchmarkSettings) -> pd.DataFrame:
    """The table with a `contender` column: the display name, plus each setting that varies under that name.

    A setting is appended only where it tells rows of one (method, injection) apart: plain IP-Adapter at two
    scales is "IP-Adapter (scale=0.5)" and "IP-Adapter (scale=1.0)", while InstantStyle, at one scale and with its
    own negative prompt, gets neither (a setting that differs only between names needs no suffix).
    """
    require_columns(table, ["method", "injection"], "benchmark")
    table = table.copy()
    columns = [c for c in condition_columns(table) if c in table and c not in ("method", "injection")]
    labels = pd.Series("", index=table.index, dtype=object)
    order: dict[str, tuple[int, str]] = {}
    for (method, injection), part in table.groupby(["method", "injection"], sort=True):
        method, injection = str(method), str(injection)
        varying = [c for c in columns if part[c].dropna().astype(str).nunique() > 1]
        for values, group in part.groupby(varying, sort=True, dropna=False) if varying else [((), part)]:
            values = values if isinstance(values, tuple) else (values,)
            extra = describe_setting({k: _plain(v) for k, v in zip(varying, values)})
            label = settings.name(method, injection) + (f" ({extra})" if extra else "")
            labels[group.index] = label
            order[label] = (settings.order(method, injection), label)
    table[CONTENDER] = labels
    table.attrs["contender_order"] = sorted(order, key=order.__getitem__)
    return table


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def contenders(table: pd.DataFrame) -> list[str]:
    """The contenders of a `with_contenders` table, in the settings' order (then by name)."""
    return list(table.attrs.get("contender_order") or sorted(table[CONTENDER].unique()))


def reference_contender(table: pd.DataFrame, settings: BenchmarkSettings) -> str:
    """The one contender whose rows `settings.reference` selects, or a one-line error listing the contenders."""
    known = [c for c in settings.reference if c not in table]
    if known:
        raise AnalysisError(f"analysis.benchmark.reference names column(s) {', '.join(known)} the table lacks; "
                            f"contenders: {'; '.join(contenders(table))}")
    found = sorted(table.loc[select(table, settings.reference), CONTENDER].unique())
    if len(found) != 1:
        what = "no contender" if not found else f"{len(found)} contenders ({'; '.join(found)})"
        raise AnalysisError(
            f"analysis.benchmark.reference={describe_setting(settings.reference)} selects {what}; "
            f"name exactly one of: {'; '.join(contenders(table))}"
        )
    return str(found[0])


def method_table(
    table: pd.DataFrame, metrics: Sequence[str], reference: str, settings: BenchmarkSettings, boot: Bootstrap = Bootstrap()
) -> pd.DataFrame:
    """Per contender and metric: mean [CI] over cells, and the paired difference to `reference` [CI].

    `excludes_zero` is +1 / -1 where the difference's (per-comparison, unadjusted) CI lies above / below 0, else 0.
    `role` and `direction` (+1 higher is better, -1 lower, 0 neither) are the metric's, as its scorer declared them.
    The marks are decided for the family of every contender x metric with a better direction at once: `p_value` is
    each difference's two-sided bootstrap p, `holm` whether Holm's step-down rejects "no difference" at the
    family-wise error rate 1 - level, and `better` ("better" / "worse") is set only where it does.
    """
    unit = list(settings.unit)
    require_columns(table, [*metrics, CONTENDER, *unit], "method table")
    frames = []
    for metric in metrics:
        agg = aggregate(table, metric, by=[CONTENDER], unit=unit, boot=boot)
        diff = paired_differences(table, metric, {CONTENDER: reference}, by=[CONTENDER], unit=unit, boot=boot)
        diff = diff.rename(columns={"mean_diff": "diff", "low": "diff_low", "high": "diff_high", "n_units": "n_paired"})
        merged = agg.merge(diff[[CONTENDER, "diff", "diff_low", "diff_high", "p_value", "n_paired"]], on=CONTENDER, how="left")
        frames.append(merged)
    out = pd.concat(frames, ignore_index=True)
    out["excludes_zero"] = np.where(out["diff_low"] > 0, 1, np.where(out["diff_high"] < 0, -1, 0))
    roles = metric_roles(table, metrics)
    out["role"] = out["metric"].map(lambda m: roles[m].role)
    out["direction"] = out["metric"].map(lambda m: roles[m].sign).astype(int)
    directed = out["direction"] != 0  # a similarity without a better side (to the reference) is reported, never marked
    out["holm"] = holm(out["p_value"].where(directed & (out[CONTENDER] != reference)).to_numpy(), boot.alpha)
    gain = np.sign(out["diff"]) * out["direction"]
    out["better"] = np.where(~out["holm"], "", np.where(gain > 0, "better", "worse"))
    out["reference"] = reference
    out["_m"] = out["metric"].map(list(metrics).index)
    out["_c"] = out[CONTENDER].map({c: i for i, c in enumerate(contenders(table))})
    out = out.sort_values(["_m", "_c"]).drop(columns=["_m", "_c"]).reset_index(drop=True)
    out.attrs["family"] = int(np.isfinite(out["p_value"].where(directed & (out[CONTENDER] != reference))).sum())
    return out


def direction(summary: pd.DataFrame, metric: str) -> int:
    """+1 where higher is better for `metric` in a `method_table`, -1 where lower is, 0 where neither."""
    found = summary.loc[summary["metric"] == metric, "direction"]
    return int(found.iloc[0]) if len(found) else 0


def pareto_front(points: pd.DataFrame, x: str, y: str, maximize: tuple[bool, bool] = (True, True)) -> pd.Series:
    """Whether each point is on the Pareto front: no other point is at least as good on both axes and better on one."""
    sx = 1.0 if maximize[0] else -1.0
    sy = 1.0 if maximize[1] else -1.0
    xs, ys = sx * points[x].to_numpy(float), sy * points[y].to_numpy(float)
    front = []
    for i in range(len(points)):
        dominated = (xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i]))
        front.append(bool(np.isfinite(xs[i]) and np.isfinite(ys[i]) and not dominated.any()))
    return pd.Series(front, index=points.index)


def tradeoffs(summary: pd.DataFrame, style_metric: str, others: Sequence[str]) -> pd.DataFrame:
    """One row per contender: the style metric and each other metric (mean, low, high), and the Pareto front of each pair.

    `summary` is `method_table`'s output. Column `front_<metric>` is True where the contender is on the front of
    (style up, and that metric in its better direction; a metric without one is read as higher).
    """
    def part(metric: str) -> pd.DataFrame:
        rows = summary[summary["metric"] == metric].set_index(CONTENDER)[["mean", "low", "high"]]
        return rows.add_prefix(f"{metric}_")

    out = part(style_metric)
    for metric in others:
        out = out.join(part(metric), how="inner")
        out[f"front_{metric}"] = pareto_front(out, f"{style_metric}_mean", f"{metric}_mean", (True, direction(summary, metric) >= 0))
    return out.reset_index()


# cost ---------------------------------------------------------------------------------------------------------
def preparation_records(results_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """Every per-reference preparation record of every run (`runs/*/costs.yaml`), one row per piece of work.

    Work found already made (`reused`) in a later run repeats the first run's measurement; each key is kept once,
    preferring the run that did the work.
    """
    records = []
    for root in results_dirs:
        for path in sorted(Path(root).glob("runs/*/costs.yaml")):
            costs = yaml.safe_load(path.read_text()) or {}
            for entry, body in (costs.get("methods") or {}).items():
                for rec in body.get("prepared") or []:
                    if "key" in rec:
                        records.append({**rec, "entry": entry, "device": costs.get("device", ""), "run": path.parent.name})
    columns = ["key", "what", "style", "seconds", "peak_gpu_bytes", "reused", "entry", "device", "run"]
    if not records:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(records)
    frame["reused"] = frame.get("reused", False).fillna(False).astype(bool)
    frame = frame.sort_values(["reused", "run"], kind="stable").drop_duplicates("key", keep="first")
    return frame.reset_index(drop=True)


def devices(results_dirs: Sequence[str | Path]) -> list[str]:
    """The devices the runs of these folders generated on (`runs/*/costs.yaml`)."""
    paths = [p for d in results_dirs for p in Path(d).glob("runs/*/costs.yaml")]
    return sorted({str((yaml.safe_load(p.read_text()) or {}).get("device", "")) for p in paths} - {""})


def cost_table(table: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Per contender: images, generation seconds per image, peak GPU memory, and its per-reference preparation.

    Preparation is the work its rows name in `prepare_keys` (a piece shared by two contenders, one LoRA used at
    two strengths, is charged to both: each needs it). `prep_seconds_per_reference` is the mean per piece of work.
    """
    require_columns(table, [CONTENDER], "cost table")
    by_key = records.set_index("key") if len(records) else pd.DataFrame()
    rows = []
    for name in contenders(table):
        part = table[table[CONTENDER] == name]
        seconds = pd.to_numeric(part.get("seconds", pd.Series(dtype=float)), errors="coerce")
        peak = pd.to_numeric(part.get("peak_gpu_bytes", pd.Series(dtype=float)), errors="coerce")
        extra = pd.to_numeric(part.get("extra_row_share", pd.Series(dtype=float)), errors="coerce")
        keys = sorted({k for v in part.get("prepare_keys", pd.Series(dtype=object)).dropna() for k in json.loads(v or "[]")})
        known = by_key.loc[[k for k in keys if k in by_key.index]] if len(by_key) else pd.DataFrame()
        prep_seconds = pd.to_numeric(known.get("seconds", pd.Series(dtype=float)), errors="coerce")
        prep_peak = pd.to_numeric(known.get("peak_gpu_bytes", pd.Series(dtype=float)), errors="coerce")
        rows.append({
            CONTENDER: name,
            "images": len(part),
            "timed_images": int(seconds.notna().sum()),
            "seconds_per_image": float(seconds.mean()) if seconds.notna().any() else np.nan,
            "peak_gpu_gib": float(peak.max()) / 2**30 if peak.notna().any() else np.nan,
            "extra_row_share": float(extra.mean()) if extra.notna().any() else np.nan,
            "preparation": ", ".join(sorted(set(known["what"].astype(str)))) if len(known) else "",
            "prepared": len(keys),
            "prep_measured": int(prep_seconds.notna().sum()),
            "prep_seconds_per_reference": float(prep_seconds.mean()) if prep_seconds.notna().any() else (0.0 if not keys else np.nan),
            "prep_peak_gpu_gib": float(prep_peak.max()) / 2**30 if prep_peak.notna().any() else np.nan,
        })
    out = pd.DataFrame(rows)
    # what one more (reference, prompt, seed) costs is the image; what one more reference costs adds its preparation
    out["total_seconds"] = out["images"] * out["seconds_per_image"] + out["prepared"] * out["prep_seconds_per_reference"].fillna(0)
    return out


# published numbers ------------------------------------------------------------------------------------------------
def published_tables(path: Path = PUBLISHED_FILE) -> list[dict[str, Any]]:
    """The published comparisons (other papers' sets and protocols), as `published.yaml` records them."""
    data = yaml.safe_load(path.read_text())
    return list(data["tables"])


def published_comparison(
    summary: pd.DataFrame, table: pd.DataFrame, settings: BenchmarkSettings, tables: Sequence[Mapping[str, Any]] | None = None
) -> pd.DataFrame:
    """Each published number beside ours on the matching metric, and whether the two rank the methods alike.

    One row per (source, metric, method). `ours` is our mean for the contender the method maps to
    (`published_as`); `rank_published` / `rank_ours` order the methods that both have (1 = best);
    `rank_agreement` is whether the two orders are the same, per (source, metric), where at least two methods
    overlap: agreement of rankings across protocols (other sets, prompts, resolutions, scorers), not a check of
    either. A toy-world or tiny-model table (`context_only`) gets no `rank_agreement` column: a 64 px model beside
    SDXL papers is context, not a comparison (`attrs["context_only"]` says which).
    """
    tables = published_tables() if tables is None else tables
    mapped: dict[str, str] = {}
    for method, where in settings.published_as.items():
        if all(c in table for c in where):
            found = sorted(table.loc[select(table, where), CONTENDER].unique())
            if len(found) == 1:
                mapped[method] = str(found[0])
    rows = []
    for source in tables:
        for their_metric, ours_metric in (source.get("metrics") or {}).items():
            block = []
            for method, values in source["values"].items():
                if their_metric not in values:
                    continue
                contender = mapped.get(method, "")
                ours = np.nan
                if contender and ours_metric:
                    hit = summary[(summary[CONTENDER] == contender) & (summary["metric"] == ours_metric)]
                    ours = float(hit["mean"].iloc[0]) if len(hit) else np.nan
                block.append({"source": source["source"], "protocol": source["protocol"], "their_metric": their_metric,
                              "metric": ours_metric or "", "method": method, "published": float(values[their_metric]),
                              CONTENDER: contender, "ours": ours})
            _rank(block, direction(summary, ours_metric or "") < 0)
            rows += block
    frame = pd.DataFrame(rows, columns=["source", "protocol", "their_metric", "metric", "method", "published", CONTENDER,
                                        "ours", "rank_published", "rank_ours", "agrees"])
    context_only = is_toy_world(table) or is_machinery_check(table)
    frame = frame.drop(columns="agrees") if context_only else frame.rename(columns={"agrees": "rank_agreement"})
    frame.attrs["context_only"] = context_only
    return frame


def _rank(block: list[dict[str, Any]], lower: bool) -> None:
    """Rank the methods both sides have (1 = best) and say whether the orders agree."""
    both = [r for r in block if np.isfinite(r["ours"])]
    sign = 1.0 if lower else -1.0
    for key, out in (("published", "rank_published"), ("ours", "rank_ours")):
        ordered = sorted(both, key=lambda r: sign * r[key])
        for i, r in enumerate(ordered, start=1):
            r[out] = i
    agrees: bool | None = None
    if len(both) >= 2:
        agrees = all(r["rank_published"] == r["rank_ours"] for r in both)
    for r in block:
        r.setdefault("rank_published", np.nan)
        r.setdefault("rank_ours", np.nan)
        r["agrees"] = agrees


def is_benchmark(table: pd.DataFrame) -> bool:
    """Whether a table looks like a method benchmark: several methods, only preset or named patterns (a method's own
    site such as VSP's `up_blocks.1`; no probe sweep) and no `none` rows (the probe's baseline: methods side by side
    with `injection=presets` are a probe, judged per method)."""
    if "method" not in table or table["method"].nunique() < 2:
        return False
    sweeps = table["sweep"].astype(str) if "sweep" in table else pd.Series("preset", index=table.index)
    return bool(sweeps.isin(["preset", "explicit"]).all() and not (table["injection"].astype(str) == "none").any())


# departures from the sources -----------------------------------------------------------------------------------
#: Why a setting departs when neither the model's `departures` nor the recipe says.
UNSTATED = "not the source's setting: chosen by this run's config (sampler.*, method.*) or its model preset"


def recipe_for(method: str, injection: str, settings: BenchmarkSettings) -> Recipe | None:
    """The first recipe for this method and injection, or None."""
    return next((r for r in settings.recipes if r.method == method and injection in r.injections), None)


def departures(table: pd.DataFrame, settings: BenchmarkSettings) -> pd.DataFrame:
    """Each contender's settings beside its source's recipe: one row per contender and recipe setting its rows record.

    `ours` is the contender's value (several joined by " | " if its rows differ), `recipe` the source's (a list: any
    of), `departs` whether ours is not one of them, `reason` why (for a departure only): the model's entry in
    `settings.departures` (the longest model-name prefix that matches), else the recipe's own `reasons`, else
    `UNSTATED`. A contender without a recipe has one row with an empty `setting`; a setting its rows do not record
    (an older table) is left out.
    """
    require_columns(table, [CONTENDER, "method", "injection"], "departures")
    out = []
    for name in contenders(table):
        part = table[table[CONTENDER] == name]
        first = part.iloc[0]
        recipe = recipe_for(str(first["method"]), str(first["injection"]), settings)
        if recipe is None:
            out.append({CONTENDER: name, "source": "", "setting": "", "ours": "", "recipe": "", "departs": False,
                        "reason": ""})
            continue
        models = sorted(set(part["model"].dropna().astype(str))) if "model" in part else []
        for setting, wanted in recipe.settings.items():
            values = list(dict.fromkeys(_plain(v) for v in part[setting].dropna())) if setting in part else []
            if not values:
                continue
            accepted = list(wanted) if isinstance(wanted, (list, tuple)) else [wanted]
            departs = not all(any(_same(setting, v, a) for a in accepted) for v in values)
            out.append({CONTENDER: name, "source": recipe.source, "setting": setting,
                        "ours": " | ".join(map(_setting_text, values)), "recipe": " | ".join(map(_setting_text, accepted)),
                        "departs": departs, "reason": _reason(setting, models, recipe, settings) if departs else ""})
    return pd.DataFrame(out, columns=[CONTENDER, "source", "setting", "ours", "recipe", "departs", "reason"])


def _same(setting: str, ours: Any, theirs: Any) -> bool:
    """Whether a row's value is the recipe's: numbers as numbers, a scheduler by its class, text as written."""
    if setting == "scheduler":
        return str(ours).split("(")[0] == str(theirs)
    if isinstance(theirs, bool) or isinstance(ours, bool):
        return str(ours).lower() == str(theirs).lower()
    if isinstance(theirs, (int, float)) and not isinstance(ours, str):
        return bool(np.isclose(float(ours), float(theirs), rtol=1e-6, atol=0.0))
    return str(ours if ours is not None else "").strip() == str(theirs if theirs is not None else "").strip()


def _setting_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _reason(setting: str, models: Sequence[str], recipe: Recipe, settings: BenchmarkSettings) -> str:
    prefixes = sorted((p for p in settings.departures if any(m.startswith(p) for m in models)), key=len, reverse=True)
    for prefix in prefixes:
        if setting in settings.departures[prefix]:
            return settings.departures[prefix][setting]
    return recipe.reasons.get(setting, UNSTATED)


__all__ = [
    "BenchmarkSettings", "Recipe", "contenders", "cost_table", "departures", "devices", "is_benchmark", "method_table",
    "pareto_front", "preparation_records", "published_comparison", "published_tables", "recipe_for",
    "reference_contender", "tradeoffs", "with_contenders",
]
