"""The method benchmark's report: `report.md` with the method table, trade-offs and Pareto front, image grid, cost
and the published numbers beside ours; its figures and CSV tables. `report.analyze` calls `build` for a benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from styleprobe.analysis import benchmark as bench
from styleprobe.analysis import figures
from styleprobe.analysis.design import describe_design
from styleprobe.analysis.load import (
    metric_columns,
    metric_label,
    metric_role,
    model_names,
    model_notice,
)
from styleprobe.analysis.validity import report_section as metric_validity_section
from styleprobe.errors import AnalysisError

if TYPE_CHECKING:
    from styleprobe.analysis.settings import AnalysisSettings, Report

UP, DOWN = "▲", "▼"


def build(
    table: pd.DataFrame, dirs: list[Path], report: "Report", settings: "AnalysisSettings",
    table_out: Callable[[str, pd.DataFrame], None], figure_out: Callable[[str, str, Any], None],
) -> str:
    """Every table and figure of the benchmark; returns report.md's text."""
    bs, boot = settings.benchmark, settings.bootstrap
    table = bench.with_contenders(table, bs)
    order = bench.contenders(table)
    reference = bench.reference_contender(table, bs)
    metrics = metric_columns(table)
    summary = bench.method_table(table, metrics, reference, bs, boot)
    table_out("benchmark_methods", summary)
    if bs.style_metric in metrics:
        report.headline = headline(summary, reference, bs.style_metric)
    others = [m for m in (bs.text_metric, bs.leak_metric) if m in metrics]
    points = bench.tradeoffs(summary, bs.style_metric, others)
    table_out("benchmark_tradeoffs", points)
    units = table.groupby(list(bs.unit), dropna=False).ngroups
    unit_words = f"{units} cells of " + " x ".join(c.removesuffix("_digest") for c in bs.unit)
    figure_out("trade-offs", "benchmark_tradeoffs",
               lambda: figures.benchmark_tradeoff(table, points, bs.style_metric, others, unit_words))
    quality = quality_metrics(table, metrics)
    quality_points = bench.tradeoffs(summary, bs.style_metric, quality) if quality else pd.DataFrame()
    if quality:
        table_out("benchmark_quality", quality_points)
        figure_out("style vs quality", "benchmark_quality",
                   lambda: figures.benchmark_tradeoff(table, quality_points, bs.style_metric, quality, unit_words,
                                                      "style vs quality"))
    figure_out("image grid", "benchmark_grid", lambda: figures.benchmark_grid(table, order, bs.grid_prompt, bs.grid_seed))
    records = bench.preparation_records(dirs)
    costs = bench.cost_table(table, records)
    table_out("benchmark_costs", costs)
    published = bench.published_comparison(summary, table, bs)
    table_out("benchmark_published", published)
    recipes = bench.departures(table, bs)
    table_out("benchmark_recipes", recipes)
    return _markdown(table, dirs, settings, report, order, reference, summary, points, costs, records, published, recipes,
                     quality_points)


def quality_metrics(table: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The scored columns whose role is image quality (ImageReward, PickScore, HPS, aesthetic), in table order."""
    return [m for m in metrics if metric_role(table, m).role == "quality" and table[m].notna().any()]


def _ci(mean: float, low: float, high: float, signed: bool = False) -> str:
    if pd.isna(mean):
        return "n/a"
    f = (lambda x: f"{x:+.4f}") if signed else (lambda x: f"{x:.4f}")
    return f"{f(mean)} [{f(low)}, {f(high)}]"


def _gib(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{x:.2f}"


def _seconds(x: float) -> str:
    return "n/a" if pd.isna(x) else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def _markdown(
    table: pd.DataFrame, dirs: list[Path], settings: "AnalysisSettings", report: "Report", order: list[str],
    reference: str, summary: pd.DataFrame, points: pd.DataFrame, costs: pd.DataFrame, records: pd.DataFrame,
    published: pd.DataFrame, recipes: pd.DataFrame, quality_points: pd.DataFrame | None = None,
) -> str:
    bs, boot = settings.benchmark, settings.bootstrap
    metrics = list(dict.fromkeys(summary["metric"]))
    lines = ["# styleprobe method benchmark", ""]
    lines += model_notice(table, "benchmark", "they rank nothing. Run it on a real model (README: On a real GPU) for results.")
    lines += [
        f"Results: {', '.join(f'`{d}`' for d in dirs)}  ",
        f"Generating model(s): {', '.join(model_names(table))}; {len(order)} contenders; {len(table)} images.",
        "",
        *describe_design(table, boot, bs.unit),
        f"- Differences are paired cell by cell against **{reference}** (`analysis.benchmark.reference`).",
        "", "## Contenders", "",
        "Each method at its source's settings, on the same references, prompts and seeds; each with its own prompt "
        "convention and sampler. The last column lists every setting this folder's rows run differently from the "
        "contender's source (ours, then the source's), with the reasons below (`analysis.benchmark.recipes`).", "",
        "| contender | method | injection | example prompt given to the pipeline | negative prompt | steps | guidance | "
        "scheduler | images | departs from its source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        first = table[table[bench.CONTENDER] == name].sort_values(["prompt", "seed"], kind="stable").iloc[0]
        n = int((table[bench.CONTENDER] == name).sum())
        negative = str(first.get("negative_prompt", "") or "")
        lines.append(f"| {name} | `{first['method']}` | `{first['injection']}` | {first.get('prompt_used', first['prompt'])} | "
                     f"{negative or 'none'} | {first['steps']} | {first['guidance']:g} | "
                     f"{str(first['scheduler']).split('(')[0]} | {n} | {_departs(recipes, name)} |")
    lines += ["", *_recipe_notes(recipes)]
    lines += ["", "## Method table", "", "Mean per contender with its CI; the metric models:", ""]
    lines += [f"- `{m}`: {metric_label(table, m)}; measures {metric_role(table, m).describe()}" for m in metrics]
    lines += ["", "| contender | " + " | ".join(metrics) + " | cells |", "|---|" + "---|" * (len(metrics) + 1)]
    wide = summary.set_index(["contender", "metric"])
    for name in order:
        cells = [_ci(*wide.loc[(name, m), ["mean", "low", "high"]]) if (name, m) in wide.index else "n/a" for m in metrics]
        n = int(wide.loc[(name, metrics[0]), "n_units"]) if (name, metrics[0]) in wide.index else 0
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {n} |")
    family = summary.attrs.get("family", 0)
    lines += ["", f"Paired difference to **{reference}** (contender - reference, cell by cell), with per-comparison "
              f"{boot.level:.0%} CIs. {UP} / {DOWN}: the contender is better / worse there, decided for all {family} "
              f"comparisons (contenders x metrics with a better direction) at once by Holm's step-down on bootstrap "
              f"p-values: the chance of any wrong mark among them is at most {1 - boot.level:.0%} (family-wise). "
              "A CI that excludes 0 without a mark is not significant once the family is counted.", "",
              "| contender | " + " | ".join(f"Δ {m}" for m in metrics) + " | paired cells |", "|---|" + "---|" * (len(metrics) + 1)]
    for name in order:
        if name == reference:
            continue
        cells = []
        for m in metrics:
            r = wide.loc[(name, m)] if (name, m) in wide.index else None
            if r is None or pd.isna(r["diff"]):
                cells.append("n/a")
                continue
            mark = {"better": f" {UP}", "worse": f" {DOWN}"}.get(str(r["better"]), "")
            cells.append(_ci(r["diff"], r["diff_low"], r["diff_high"], signed=True) + mark)
        n = wide.loc[(name, metrics[0]), "n_paired"] if (name, metrics[0]) in wide.index else np.nan
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'n/a' if pd.isna(n) else int(n)} |")
    lines += ["", "## Trade-offs and the Pareto front", ""]
    quality_points = pd.DataFrame() if quality_points is None else quality_points
    fronts = [(points, m) for m in (bs.text_metric, bs.leak_metric) if f"front_{m}" in points]
    fronts += [(quality_points, c.removeprefix("front_")) for c in quality_points.columns if c.startswith("front_")]
    for frame, metric in fronts:
        front = list(frame.loc[frame[f"front_{metric}"], bench.CONTENDER])
        goal = {1: f"more {metric}", -1: f"less {metric}"}.get(bench.direction(summary, metric), f"more {metric}")
        lines.append(f"- {bs.style_metric} vs {metric}: on the front (no contender has more style and {goal} at once): "
                     + (", ".join(f"**{c}**" for c in front) or "none"))
    lines += ["", "The front is taken on the point estimates; read each point's CI bars in the figure before calling "
              "a contender dominated.", ""]
    if not quality_points.empty:
        lines += ["Style against image quality (the quality metrics' own panels): does a contender's style cost "
                  "quality?", ""]
    lines += _figure_links(report, ("benchmark_tradeoffs", "benchmark_quality", "benchmark_grid"))
    lines += ["## Cost", "",
              "From this folder's own measurements: each row's generation seconds (its batch's wall time shared out) and "
              "peak GPU memory, and the per-reference preparation each contender's rows need (DDIM inversion, LoRA "
              f"training) as the runs recorded it. Device(s): {', '.join(bench.devices(dirs)) or 'not recorded'}.", "",
              "| contender | images (timed) | s / image | reference rows | peak GPU GiB | preparation | per reference: s | prep peak GPU GiB | total s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for _, c in costs.iterrows():
        prep = f"{c['preparation'] or '-'} x {c['prepared']}" if c["prepared"] else "-"
        share = c.get("extra_row_share", np.nan)
        lines.append(f"| {c['contender']} | {c['images']} ({c['timed_images']}) | {_seconds(c['seconds_per_image'])} | "
                     f"{'n/a' if pd.isna(share) else f'{share:.0%}'} | {_gib(c['peak_gpu_gib'])} | {prep} | {_seconds(c['prep_seconds_per_reference']) if c['prepared'] else '-'} | "
                     f"{_gib(c['prep_peak_gpu_gib'])} | {_seconds(c['total_seconds'])} |")
    lines += ["", "Reference rows: the share of the UNet's samples in a contender's calls that are not its images (the "
              "reference rows StyleAligned and Visual Style Prompting denoise beside their images, the negative rows of "
              "negative visual query guidance); its s / image already includes them. n/a: rows made before styleprobe "
              "recorded it. Peak GPU memory is n/a on the CPU. Images made before styleprobe timed rows count in "
              "images, not in the timed ones.", ""]
    lines += _published(published)
    lines += metric_validity_section(table, report)  # with the toy judge's columns: tables/metric_validity.csv too
    for section, why in report.skipped.items():
        lines.append(f"- {section}: skipped ({why})")
    lines += ["", "## Tables", ""]
    lines += [f"- [{p.name}]({p.relative_to(report.out_dir).as_posix()})" for p in report.tables]
    lines += ["", "Regenerate with `styleprobe analyze results_dir=... analysis.kind=benchmark`; the settings are "
              "`analysis.benchmark.*` in `experiments/analysis/default.yaml`.", ""]
    return "\n".join(lines)


def _figure_links(report: "Report", names: tuple[str, ...]) -> list[str]:
    lines = []
    for path in report.figures:
        if path.suffix == ".png" and path.stem in names:
            rel = path.relative_to(report.out_dir)
            lines += [f"![{path.stem}]({rel.as_posix()})  ", f"[{path.stem}.pdf]({rel.with_suffix('.pdf').as_posix()})", ""]
    return lines


def _departs(recipes: pd.DataFrame, name: str) -> str:
    """The contenders table's last cell: each departing setting as `setting ours (source: theirs)`."""
    rows = recipes[recipes[bench.CONTENDER] == name]
    if rows.empty or (rows["setting"] == "").all():
        return "no recipe recorded"
    gone = rows[rows["departs"].astype(bool)]
    if gone.empty:
        return "none"
    return "; ".join(f"{r['setting']} {_value(r['ours'])} (source: {_value(r['recipe'])})" for _, r in gone.iterrows())


def _value(text: str, words: int = 3) -> str:
    """A setting as a table cell shows it: empty is none, a long list of words (a negative prompt) is shortened."""
    if text == "":
        return "none"
    parts = [p.strip() for p in str(text).split(",")]
    return ", ".join(parts[:words]) + ", ..." if len(parts) > words + 1 else str(text)


def _recipe_notes(recipes: pd.DataFrame) -> list[str]:
    """The sources, and each departure's reason with the contenders it applies to."""
    if recipes.empty:
        return []
    first = recipes.groupby(bench.CONTENDER, sort=False)["source"].first()
    lines = ["Sources (`analysis.benchmark.recipes`; every value compared is in `tables/benchmark_recipes.csv`):", ""]
    for source, names in first.groupby(first, sort=False):
        lines.append(f"- {', '.join(names.index)}: {source or 'no recipe recorded'}")
    gone = recipes[recipes["departs"].astype(bool)]
    if gone.empty:
        return lines + ["", "No contender departs from its source's settings.", ""]
    lines += ["", "Why they depart:", ""]
    every = set(recipes.loc[recipes["setting"] != "", bench.CONTENDER])
    for (setting, reason), part in gone.groupby(["setting", "reason"], sort=False):
        who = "every contender" if set(part[bench.CONTENDER]) == every and len(every) > 1 else ", ".join(part[bench.CONTENDER])
        lines.append(f"- `{setting}` ({who}): {str(reason).rstrip('.')}.")
    return lines + [""]


def _published(published: pd.DataFrame) -> list[str]:
    context = bool(published.attrs.get("context_only", "rank_agreement" not in published))
    if context:
        lines = ["## Published numbers, for context only", "",
                 "**Context, not a comparison.** These images come from a 64 px toy or tiny model; each table below is "
                 "another paper's set, prompts, resolution and scorer on SDXL-class models. They are shown for orientation: "
                 "no agreement between their ranking and ours is judged, since nothing here is expected to reproduce "
                 "them. No published table compares InstantStyle, StyleAligned and B-LoRA together.", ""]
    else:
        lines = ["## Published numbers, on other papers' protocols", "",
                 "**Not our protocol.** Each table below is another paper's set, prompts, resolution and scorer; only the "
                 "order of methods within one table can be set beside ours. No published table compares InstantStyle, "
                 "StyleAligned and B-LoRA together. `rank agreement`: whether our ranking of the methods both sides have "
                 "(on the matching metric) is the published one. It is agreement of rankings across protocols, not a "
                 "check: a disagreement can come from the sets, prompts or scorers as well as from either run.", ""]
    if published.empty:
        return lines + ["No published numbers are recorded.", ""]
    head = "| their metric | method | published | ours: contender, metric | ours | rank published / ours |"
    for source, part in published.groupby("source", sort=False):
        lines += [f"### {source}", "", f"Protocol: {part['protocol'].iloc[0]}.", "",
                  head + ("" if context else " rank agreement |"), "|---|---|---|---|---|---|" + ("" if context else "---|")]
        for _, r in part.iterrows():
            ours = f"{r['contender'] or 'not in this run'}, `{r['metric'] or 'no counterpart'}`"
            rank = "-" if pd.isna(r["rank_ours"]) else f"{int(r['rank_published'])} / {int(r['rank_ours'])}"
            value = "n/a" if pd.isna(r["ours"]) else f"{r['ours']:.4f}"
            cells = [str(r["their_metric"]), str(r["method"]), f"{r['published']:g}", ours, value, rank]
            if not context:
                cells.append({True: "yes", False: "**no**"}.get(r["rank_agreement"], "-"))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def headline(summary: pd.DataFrame, reference: str, style_metric: str) -> list[str]:
    """One log line per contender: its style metric against the reference, with the CI."""
    rows = summary[summary["metric"] == style_metric]
    if rows.empty:
        raise AnalysisError(f"benchmark: no {style_metric} in the method table")
    return [f"{r['contender']}: {style_metric} {_ci(r['mean'], r['low'], r['high'])}"
            + ("" if r["contender"] == reference else f", vs {reference} {_ci(r['diff'], r['diff_low'], r['diff_high'], True)}")
            for _, r in rows.iterrows()]
