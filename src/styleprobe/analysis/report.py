"""The analysis of a results folder: tables, figures and the verdict report, written in one atomic step.

    <out_dir>/report.md              criterion (thresholds), verdict with CIs and unit counts, rankings, figures
    <out_dir>/figures/<name>.{png,pdf}
    <out_dir>/tables/<name>.csv      aggregates, paired differences, rankings, the verdict

Everything is built in a hidden folder beside `out_dir` and renamed into place, so a killed run leaves the
previous analysis (or none), never a half-written one. `run(cfg)` is `styleprobe analyze`; a sweep calls
`analyze` after scoring. A section the table cannot support (no one-hot layer probe, no `none` rows) is
skipped with the reason written in the report; a metric name that is not in the table is an error.
A method benchmark (`analysis.kind`, or found from the table) gets `benchmark_report`'s report in the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from styleprobe.analysis import figures, layer_search, time_windows
from styleprobe.analysis.conditions import (
    MissingCondition,
    add_condition,
    describe_setting,
    missing_conditions,
    pattern_specs,
    preset_rows,
    split_by_setting,
)
from styleprobe.analysis.design import describe_design
from styleprobe.analysis.load import (
    RENAMED,
    UNIT_COLUMNS,
    load_results,
    method_names,
    metric_columns,
    metric_label,
    metric_roles,
    model_names,
    model_notice,
    require_columns,
    varying_conditions,
    with_preset_metrics,
)
from styleprobe.analysis.settings import AnalysisSettings, Report, default_settings
from styleprobe.analysis.stats import Bootstrap, aggregate, paired_differences, select
from styleprobe.analysis.validity import report_section as metric_validity_section
from styleprobe.analysis.verdict import CandidateVerdict, Criterion, judge, rank_by_style_effect
from styleprobe.disk import HOST
from styleprobe.errors import AnalysisError
from styleprobe.metric_roles import ROLES, UNKNOWN_ROLE, MetricRole

log = logging.getLogger("styleprobe")


#: The role each metric setting needs its metric to have (`MetricRole.role`).
SETTING_ROLES: dict[str, str] = {"style_metric": "style", "leak_metric": "leakage", "text_metric": "text"}


def metric_settings(settings: AnalysisSettings) -> dict[str, str]:
    """`analysis.<group>.<setting>` -> the metric it names, for the settings this analysis uses."""
    named = {"verdict": dict(zip(SETTING_ROLES, settings.criterion.metrics)),
             "benchmark": {r: getattr(settings.benchmark, r) for r in SETTING_ROLES}}
    groups = {"probe": ("verdict",), "benchmark": ("benchmark",)}.get(settings.kind, tuple(named))
    return {f"{group}.{r}": m for group in groups for r, m in named[group].items()}


def check_metrics(
    available: Sequence[str], settings: AnalysisSettings, where: str, roles: Mapping[str, MetricRole] | None = None,
) -> None:
    """The analysis's metrics must be columns the results will have, each in the role its setting needs (a reference
    similarity is no leakage metric); says which are, and how to choose. `roles`: column -> role, where known."""
    named = metric_settings(settings)
    missing = [m for m in settings.metrics if m not in available]
    if missing:
        fix = " ".join(f"analysis.{r}=<column>" for r, m in named.items() if m in missing)
        renamed = [f"{m} is now {RENAMED[m][0]}" for m in missing if m in RENAMED]
        raise AnalysisError(
            f"analysis needs {', '.join(missing)}, which {where} lacks (it has: {', '.join(available) or 'no metrics'}); "
            f"score it (metrics=[default,...]) or set {fix}" + (f" ({'; '.join(renamed)})" if renamed else "")
        )
    if roles is None:
        return
    for setting, metric in named.items():
        wanted, role = SETTING_ROLES[setting.split(".")[1]], roles.get(metric)
        if role is not None and role.role != wanted:
            fits = [m for m in available if roles.get(m, UNKNOWN_ROLE).role == wanted]
            raise AnalysisError(
                f"analysis.{setting}={metric} measures {ROLES[role.role]}, not {ROLES[wanted]}; set analysis.{setting} to "
                + (f"one of {', '.join(fits)}" if fits else f"a {wanted} metric (score one first)")
            )


def check_conditions(conditions: Callable[[], pd.DataFrame], settings: AnalysisSettings, where: str) -> None:
    """Analysis settings changed from experiments/analysis/default.yaml must name conditions the results will have.

    `conditions()` gives a row per condition the results will hold (`injection`, `sweep`, `layers`, `layer_scales`,
    `method`): the plan's and those already in the results folder; it is called only when a setting was changed. The
    defaults are not checked, since a report without `none` or `all` still has its aggregates and figures and says
    which sections need them; a setting the user chose (`analysis.verdict.reference=style`, `analysis.grid.rows=[...]`)
    names what they mean to see.
    """
    default = default_settings()
    crit, base = settings.criterion, default.criterion
    asked: list[tuple[str, list[str], bool]] = []  # setting, names, found by name only (judge's reference, baseline)
    if crit.reference != base.reference:
        asked.append(("analysis.verdict.reference", [crit.reference], True))
    if crit.baseline and crit.baseline != base.baseline:
        asked.append(("analysis.verdict.baseline", [crit.baseline], True))
    if crit.candidates != base.candidates:
        asked.append(("analysis.verdict.candidates", list(crit.candidates), False))
    if settings.grid_rows != default.grid_rows:
        asked.append(("analysis.grid.rows", list(settings.grid_rows), False))
    if not asked:
        return
    conditions = conditions()
    if conditions.empty or settings.kind_for(conditions) == "benchmark":
        return
    names = conditions["injection"].astype(str)
    for setting, wanted, by_name in asked:
        lacking = [n for n in wanted if not ((names == n).any() if by_name else preset_rows(conditions, n)[0].any())]
        if lacking:
            listed = ", ".join(lacking)
            raise AnalysisError(
                f"{setting} names {listed}, which {where} will not have (its patterns: "
                f"{', '.join(pattern_specs(conditions))}); add {listed} to injection.patterns, or leave {setting} at its "
                "default")


def analyze(
    results_dirs: str | Path | Sequence[str | Path], settings: AnalysisSettings = AnalysisSettings(),
    out_dir: str | Path | None = None,
) -> Report:
    """Load the folders, build every table and figure the data supports, judge, write report.md atomically."""
    start = time.perf_counter()
    dirs = [Path(results_dirs)] if isinstance(results_dirs, (str, Path)) else [Path(d) for d in results_dirs]
    if out_dir is None:
        if len(dirs) != 1:
            raise AnalysisError("several results folders: give out_dir=<folder> for the combined analysis")
        out_dir = dirs[0] / "analysis"
    out = Path(out_dir)
    table = load_results(dirs)
    require_columns(table, [*UNIT_COLUMNS, "injection"], "analysis")
    settings = dataclasses.replace(settings, kind=settings.kind_for(table))
    check_metrics(metric_columns(table), settings, f"the table of {', '.join(map(str, dirs))}", metric_roles(table))
    tmp = out.parent / f".{out.name}.{HOST}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        report = _build_benchmark(table, dirs, tmp, settings) if settings.kind == "benchmark" else _build(table, dirs, tmp, settings)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.out_dir = out
    report.figures = [out / p.relative_to(tmp) for p in report.figures]
    report.tables = [out / p.relative_to(tmp) for p in report.tables]
    report.seconds = time.perf_counter() - start
    return report


def _replace(new: Path, out: Path) -> None:
    """Swap the finished folder into place; the old one goes only after the new one is complete."""
    old = out.parent / f".{out.name}.{HOST}.{os.getpid()}.old"
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def _writers(report: Report, settings: AnalysisSettings) -> tuple[Callable[[str, pd.DataFrame], None], Callable[[str, str, Any], None]]:
    """`table_out(name, frame)` and `figure_out(section, name, build)`, writing into the report's folder.

    A figure the table cannot support (its builder raises AnalysisError) is skipped with the reason kept; one that
    needs a condition the table lacks (MissingCondition) keeps the line saying which to add.
    """
    fig_dir, tab_dir = report.out_dir / "figures", report.out_dir / "tables"
    tab_dir.mkdir(parents=True, exist_ok=True)

    def table_out(name: str, frame: pd.DataFrame) -> None:
        path = tab_dir / f"{name}.csv"
        frame.to_csv(path, index=False)
        report.tables.append(path)

    def figure_out(section: str, name: str, build: Any) -> None:
        """`build()` gives a figure, or (figure, lines the report writes beside it)."""
        try:
            built = build()
        except MissingCondition as err:
            report.missing[section] = str(err)
            return
        except AnalysisError as err:
            report.skipped[section] = str(err)
            return
        fig, notes = built if isinstance(built, tuple) else (built, [])
        if notes:
            report.captions[name] = list(notes)
        report.figures.extend(figures.save(fig, fig_dir, name, settings.formats))

    return table_out, figure_out


def _build_benchmark(table: pd.DataFrame, dirs: list[Path], tmp: Path, settings: AnalysisSettings) -> Report:
    from styleprobe.analysis import benchmark_report

    report = Report(tmp, [], kind="benchmark")
    table_out, figure_out = _writers(report, settings)
    text = benchmark_report.build(table, dirs, report, settings, table_out, figure_out)
    (tmp / "report.md").write_text(text)
    return report


def _build(table: pd.DataFrame, dirs: list[Path], tmp: Path, settings: AnalysisSettings) -> Report:
    """Every table and figure the table supports; a section that needs a condition it lacks says which to add."""
    crit, boot = settings.criterion, settings.bootstrap
    report = Report(tmp, [])
    table_out, figure_out = _writers(report, settings)
    whole, table = table, time_windows.full_window_rows(table)  # the layer analyses: full-window rows

    metrics = metric_columns(table)
    report.unscored = [m for m in metrics if table[m].isna().all()]
    scored = [m for m in metrics if m not in report.unscored]
    by = varying_conditions(table)
    table_out("aggregate", _concat([aggregate(table, m, by, boot=boot) for m in scored]))
    for against in dict.fromkeys(c for c in (crit.baseline, crit.reference) if c):
        if missing_conditions(table, [against]):
            report.missing[f"paired_vs_{against}"] = add_condition(
                table, against, f"`tables/paired_vs_{against}.csv` (every condition's paired difference from `{against}`)")
        else:
            table_out(f"paired_vs_{against}",
                      _concat([paired_differences(table, m, {"injection": against}, by, boot=boot) for m in scored]))
    why_not = _verdict_needs(table, crit, report.unscored)
    if why_not:
        report.skipped["verdict"] = why_not
    else:
        try:
            report.verdicts = judge(table, crit, boot)
            if crit.baseline:
                report.baselines = judge(table, dataclasses.replace(crit, candidates=(crit.baseline,)), boot)
            table_out("verdict", _verdict_table(report.verdicts))
        except AnalysisError as err:
            report.skipped["verdict"] = str(err)
    rankings = rank_by_style_effect(table, crit, boot)
    for sweep, frame in rankings.items():
        table_out(f"ranking_{sweep}", frame)
    for sweep, against in _generated_sweeps(table, crit).items():
        if sweep not in rankings and against and missing_conditions(table, [against]):
            report.missing[f"ranking {sweep}"] = add_condition(
                table, against, f"the ranking of {sweep}'s targets by their effect against `{against}`")

    three = list(crit.metrics)
    settings_split = split_by_setting(table)
    sweeps = table["sweep"] if "sweep" in table else pd.Series("", index=table.index)
    for setting, part in settings_split:
        suffix = _suffix(setting)
        if (sweeps[part.index] == "one_hot_module").any():
            figure_out("module bars", f"module_bars{suffix}",
                       lambda: figures.module_bars(part, three, crit.baseline or "none", crit.reference, boot, setting))
        if (sweeps[part.index] == "one_hot_layer").any():
            figure_out("layer heatmap", f"layer_heatmap{suffix}",
                       lambda: figures.layer_heatmap(part, three, crit.baseline or "none", boot, setting))
    if "subtraction" in table and table["subtraction"].dropna().nunique() > 1:
        figure_out("subtraction curves", "subtraction_curves", lambda: figures.subtraction_curves(table, three, boot))
    top = _top_targets(rankings, settings.grid_top, [c for c in by if c != "injection"])
    figure_out("trade-offs", "tradeoffs", lambda: _tradeoffs(table, crit, boot, top))
    for setting, part in _first_setting_per_method(settings_split):
        suffix = _suffix({k: v for k, v in setting.items() if k == "method"})
        rows = [*settings.grid_rows, *_top_for_setting(top, setting)]
        for columns, label in (("style", "styles"), ("prompt", "prompts")):
            figure_out(f"image grid ({label})", f"grid_{label}{suffix}",
                       functools.partial(_grid, part, rows, columns, settings, top, setting))
    time_lines = _windows(whole, crit, boot, table_out, figure_out) if time_windows.has_windows(whole) else []
    time_lines += layer_search.section(whole, dirs, table_out, figure_out, boot.level)  # a folder a search wrote
    (tmp / "report.md").write_text(_markdown(whole, dirs, settings, report, rankings, time_lines))
    return report


def _windows(table: pd.DataFrame, crit: Criterion, boot: Bootstrap, table_out: Callable[[str, pd.DataFrame], None],
             figure_out: Callable[[str, str, Any], None]) -> list[str]:
    """The time analysis of a table with denoising windows: its tables, figures and report section."""
    from styleprobe.analysis import window_figures

    three, baseline = list(crit.metrics), crit.baseline or "none"
    effects = []
    for setting, part in time_windows.window_settings(table):
        suffix, these = _suffix(setting), time_windows.window_effects(part, three, baseline, boot)
        effects.append(these.assign(**setting))
        figure_out("window heatmap", f"window_heatmap{suffix}",
                   lambda: window_figures.window_heatmap(part, three, baseline, boot, setting, these))
        figure_out("window curves", f"window_curves{suffix}",
                   lambda: window_figures.window_curves(part, three, (crit.reference, *crit.candidates), baseline,
                                                        boot, setting, these))
    effects_table = _concat(effects)
    table_out("window_effects", effects_table)
    when = time_windows.when_table(table, crit, boot)
    table_out("when", when)
    return time_windows.when_lines(effects_table, when, crit, boot)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _verdict_needs(table: pd.DataFrame, crit: Criterion, unscored: Sequence[str]) -> str:
    """Why the verdict cannot be judged on this table (the conditions or scores it lacks), or "" when it can."""
    lacking = missing_conditions(table, [crit.baseline, crit.reference])
    if lacking:
        return add_condition(table, lacking, f"the verdict (each candidate against `{crit.reference}`"
                             + (f", its style effect measured over `{crit.baseline}`)" if crit.baseline else ")"))
    if not any(preset_rows(table, name)[0].any() for name in crit.candidates):
        return add_condition(table, list(crit.candidates), "the verdict (the candidates it judges)")
    empty = [m for m in crit.metrics if m in unscored]
    if empty:
        cause = _unscored_cause(table)
        return f"no row has a score for {', '.join(f'`{m}`' for m in empty)}" + (f" ({cause})" if cause else "")
    return ""


def _unscored_cause(table: pd.DataFrame) -> str:
    """A likely cause of a metric without scores: references without a content label leave leakage undefined."""
    if "content" in table and not table["content"].fillna("").astype(str).str.strip().astype(bool).any():
        return ("no style reference has a content label, which leakage scores need: fill in the manifest's content "
                "column with what each image shows, and sweep into a new results folder")
    return ""


def _generated_sweeps(table: pd.DataFrame, crit: Criterion) -> dict[str, str | None]:
    """Each generated sweep in the table and the condition its ranking compares with (leave-one-out: `all`)."""
    if "sweep" not in table:
        return {}
    names = sorted(s for s in table["sweep"].astype(str).unique() if s not in ("preset", "explicit"))
    return {s: crit.reference if s.startswith("leave_one_out") else crit.baseline for s in names}


def _top_targets(rankings: Mapping[str, pd.DataFrame], k: int, setting_columns: Sequence[str]) -> pd.DataFrame:
    """The k top-ranked targets of each generated sweep, per setting (method, strength, ...), each with the label the
    figures give it (`#1 down_blocks.1.attentions.0`; a leave-one-out target `#1 without ...`)."""
    frames = []
    for sweep, frame in rankings.items():
        columns = [c for c in setting_columns if c in frame]
        parts = [part for _, part in frame.groupby(columns, dropna=False, sort=False)] if columns else [frame]
        word = "without " if sweep.startswith("leave_one_out") else ""
        for part in parts:
            part = part.sort_values("rank", kind="stable").head(k)
            labels = [f"#{i} {word}{t}" for i, t in enumerate(part["target"].astype(str), start=1)]
            frames.append(part.assign(sweep=sweep, label=labels))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["injection", "target", "label"])


def _top_for_setting(top: pd.DataFrame, setting: Mapping[str, Any]) -> list[str]:
    """The injections of the top targets ranked within one setting."""
    if top.empty:
        return []
    where = {c: v for c, v in setting.items() if c in top}
    return list(dict.fromkeys(top.loc[select(top, where), "injection"].astype(str))) if where else \
        list(dict.fromkeys(top["injection"].astype(str)))


def _labels(top: pd.DataFrame) -> dict[str, str]:
    return dict(zip(top["injection"].astype(str), top["label"])) if not top.empty else {}


def _tradeoffs(table: pd.DataFrame, crit: Criterion, boot: Bootstrap, top: pd.DataFrame) -> tuple[Any, list[str]]:
    """The trade-off scatters, the top targets labelled; without the baseline they show means, and say what to add."""
    fig = figures.tradeoff_scatter(table, crit.style_metric, list(crit.metrics[2:0:-1]), crit.baseline, boot,
                                   labels=_labels(top))
    notes = []
    if not top.empty:
        notes.append(f"Labelled: the presets, InstantStyle's modules and the top-ranked targets of each ranking by "
                     f"Δ {crit.style_metric} (`#1` the first).")
    if crit.baseline and missing_conditions(table, [crit.baseline]):
        notes.append("Means, not effects: " + add_condition(
            table, crit.baseline, f"the trade-offs as paired effects over `{crit.baseline}` (the spread between cells cancels)"))
    return fig, notes


def _grid(part: pd.DataFrame, rows: list[str], columns: str, settings: AnalysisSettings, top: pd.DataFrame,
          setting: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """One image grid and what the report says beside it: what it shows, how it chose, what it leaves out."""
    crit = settings.criterion
    choice = figures.choose_grid(part, rows, columns, settings.grid_columns, metric=crit.style_metric,
                                 baseline=crit.baseline or "none", labels=_labels(top))
    return figures.image_grid(part, rows, columns, settings.grid_columns, setting=setting, choice=choice), choice.describe()


def _suffix(setting: Mapping[str, Any]) -> str:
    """`_method=style_aligned_subtraction=0.5`: a setting in a file name (columns a method lacks left out)."""
    text = describe_setting(setting)
    return "".join(f"_{part}" for part in text.split(", ")) if text else ""


def _first_setting_per_method(split: list[tuple[dict[str, Any], pd.DataFrame]]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """The first setting of each method: image grids show every method once, not every strength of each."""
    seen: dict[Any, tuple[dict[str, Any], pd.DataFrame]] = {}
    for setting, part in split:
        seen.setdefault(setting.get("method"), (setting, part))
    return list(seen.values())


def _verdict_table(verdicts: list[CandidateVerdict]) -> pd.DataFrame:
    rows = []
    for v in verdicts:
        for c in v.checks:
            rows.append({"candidate": v.candidate, "source": v.source, **v.setting, "criterion": c.name,
                         "metric": c.metric, "estimate": c.estimate, "low": c.low, "high": c.high,
                         "threshold": c.threshold, "passed": c.passed, "n_units": c.n_units, "answer": v.answer})
    return pd.DataFrame(rows)


def _fmt(x: float, signed: bool = True) -> str:
    return "n/a" if pd.isna(x) else (f"{x:+.4f}" if signed else f"{x:.3f}")


def _cell(check: Any, signed: bool) -> str:
    return "n/a" if check is None or pd.isna(check.estimate) else (
        f"{_fmt(check.estimate, signed)} [{_fmt(check.low, signed)}, {_fmt(check.high, signed)}]")


def _verdict_row(v: CandidateVerdict, baseline: bool = False) -> str:
    """One row of the verdict table; the baseline (`none`) is shown beside the candidates, not judged."""
    cells = {c.name: c for c in v.checks}
    n = min((c.n_units for c in v.checks), default=0)
    setting = describe_setting(v.setting) or "-"
    answer = "baseline, not a candidate" if baseline else f"**{v.word}**"
    return (f"| `{v.candidate}` | `{v.source}` | {setting} | {_cell(cells.get('style kept'), False)} | "
            f"{_cell(cells.get('leakage lower'), True)} | {_cell(cells.get('text followed better'), True)} | {n} | {answer} |")


def _baseline_words(baselines: Sequence[CandidateVerdict], crit: Criterion) -> list[str]:
    """What `none` shows: criteria 2 and 3 follow from injecting less, so only criterion 1 makes them mean something."""
    lines = []
    for v in baselines:
        checks = {c.name: c for c in v.checks}
        leak, text = checks.get("leakage lower"), checks.get("text followed better")
        if leak is None or text is None or pd.isna(leak.estimate):
            continue
        met = [name for name, c in (("leakage lower", leak), ("text followed better", text)) if c.passed]
        where = describe_setting(v.setting)
        lines.append(
            f"Read criteria 2 and 3 beside `{crit.baseline}`{' (' + where + ')' if where else ''}: injecting nothing has "
            f"Δ leakage {_fmt(leak.estimate)} and Δ text {_fmt(text.estimate)} against `{crit.reference}`"
            + (f", so it meets {' and '.join(met)} too: injecting less lowers leakage and frees the text, and only "
               f"criterion 1 (the share of `{crit.reference}`'s style kept) tells a candidate apart from injecting less."
               if met else f"; here it meets neither criterion, so criteria 2 and 3 are not met merely by injecting less."))
    return lines + ([""] if lines else [])


def _verdict_family(verdicts: Sequence[CandidateVerdict], boot: Bootstrap) -> list[str]:
    """How many decisions the verdict makes and the error rate that holds for all of them together."""
    k = len([v for v in verdicts if v.checks and v.checks[0].name != "present"])
    if not k:
        return []
    each = (1 - boot.level) / 2
    return [f"Decisions: {k} verdict{'s' if k != 1 else ''} (candidates x settings). Each is an intersection-union test: "
            f"its chance of a false YES is at most {each:.1%}; for all {k} together at most {min(1.0, k * each):.1%} "
            "(Bonferroni).", ""]


def _markdown(
    table: pd.DataFrame, dirs: list[Path], settings: AnalysisSettings, report: Report,
    rankings: Mapping[str, pd.DataFrame], time_lines: Sequence[str] = (),
) -> str:
    crit, boot = settings.criterion, settings.bootstrap
    lines = ["# styleprobe analysis", ""]
    lines += model_notice(table, "analysis", "they say nothing about where style lives in a real model.")
    lines += [
        f"Results: {', '.join(f'`{d}`' for d in dirs)}  ",
        f"Generating model(s): {', '.join(model_names(table))}; method(s): {', '.join(method_names(table))}; {len(table)} images; "
        f"{table['injection'].nunique()} injection conditions; condition columns that vary: {', '.join(varying_conditions(table))}.",
        "",
        *describe_design(table, boot),
        "", "Metrics:", "",
    ]
    lines += [f"- {metric_label(table, m)}" + (": **no row has a score**; left out of every table and figure"
                                                 if m in report.unscored else "") for m in metric_columns(table)]
    if report.unscored and _unscored_cause(table):
        lines += ["", f"Why {', '.join(f'`{m}`' for m in report.unscored)} {'has' if len(report.unscored) == 1 else 'have'} "
                  f"no scores: {_unscored_cause(table)}."]
    lines += ["", "## Verdict: are InstantStyle's blocks enough?", "",
              f"Criterion (settings `analysis.verdict.*`): a candidate passes when, against `{crit.reference}` on the same units,", ""]
    lines += [f"{i}. {text}" for i, text in enumerate(crit.describe(), start=1)]
    lines += ["", "The answer is YES only when all three hold at this confidence level.", ""]
    if "verdict" in report.skipped:
        lines += [f"Not judged: {report.skipped['verdict']}", ""]
    else:
        lines += ["| candidate | rows used | setting | style kept [CI] | Δ leakage [CI] | Δ text [CI] | cells | answer |",
                  "|---|---|---|---|---|---|---|---|"]
        for v in [*report.verdicts, *report.baselines]:
            lines.append(_verdict_row(v, baseline=v in report.baselines))
        lines += [""]
        for v in report.verdicts:
            lines.append(f"- {v.title('`')}: **{v.word}**" + ("" if v.answer else " - " + "; ".join(v.reasons())))
        lines += [""] + _baseline_words(report.baselines, crit) + _verdict_family(report.verdicts, boot)
    lines += ["## Which modules and layers carry style", ""]
    lacking = {k: v for k, v in report.missing.items() if k.startswith("ranking ")}
    if not rankings and not lacking:
        lines += ["No generated sweep (one_hot:module, one_hot:layer, leave_one_out:...) in this table: add one to the "
                  "sweep (e.g. `injection.patterns=[none,all,one_hot:module]`, or `experiment=layer_probe`) to rank "
                  "modules or layers by their style effect.", ""]
    lines += [f"- {section.removeprefix('ranking ')}: {line}" for section, line in lacking.items()] + ([""] if lacking else [])
    for sweep, frame in rankings.items():
        against = frame["against"].iloc[0]
        loo = sweep.startswith("leave_one_out")
        what = f"style lost when the target is left out (vs `{against}`)" if loo else f"effect of injecting only the target (vs `{against}`)"
        above = int((frame["style_low"] > 0).sum())
        below = int((frame["style_high"] < 0).sum())
        crit_value = frame.attrs.get("critical", float("nan"))
        lines += [f"### {sweep}: {what}", "",
                  f"Ranked by Δ {crit.style_metric}; ★ marks InstantStyle's modules. Top {min(len(frame), 12)} of {len(frame)}.",
                  f"Intervals are simultaneous over the {len(frame)} targets ranked (max-statistic bootstrap, "
                  f"{_fmt(crit_value, False)} standard errors; one band per metric): all of a column's intervals hold "
                  f"together with {boot.level:.0%} confidence, so the {len(frame)} claims of a column share a family-wise "
                  f"error rate of at most {1 - boot.level:.0%}. By Δ {crit.style_metric}, {above} of {len(frame)} targets lie above 0 and "
                  f"{below} below. Per-target (unadjusted) intervals are in `tables/ranking_{sweep}.csv` as `*_unadjusted`.", "",
                  f"| rank | target | Δ {crit.style_metric} [CI] | Δ {crit.leak_metric} [CI] | Δ {crit.text_metric} [CI] | units |",
                  "|---|---|---|---|---|---|"]
        for _, r in frame.head(12).iterrows():
            star = f" ★ {r['instantstyle']}" if r["instantstyle"] else ""
            def ci(role: str) -> str:
                if f"{role}_diff" not in r:
                    return "n/a"
                return f"{_fmt(r[f'{role}_diff'])} [{_fmt(r[f'{role}_low'])}, {_fmt(r[f'{role}_high'])}]"
            extra = ", ".join(f"{c}={r[c]}" for c in varying_conditions(table) if c != "injection" and c in r)
            lines.append(f"| {r['rank']} | `{r['target']}`{star}{' (' + extra + ')' if extra else ''} | {ci('style')} | "
                         f"{ci('leak')} | {ci('text')} | {r['n_units']} |")
        lines += [""]
    lines += list(time_lines)
    lines += metric_validity_section(table, report)  # with the toy judge's columns: tables/metric_validity.csv too
    lines += ["## Figures", ""]
    for path in report.figures:
        if path.suffix == ".png":
            rel = path.relative_to(report.out_dir)
            lines += [f"![{path.stem}]({rel.as_posix()})  ", f"[{path.stem}.pdf]({rel.with_suffix('.pdf').as_posix()})", ""]
            notes = report.captions.get(path.stem, [])
            lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    for section, line in report.missing.items():
        if not section.startswith(("ranking ", "paired_vs_")):
            lines.append(f"- {section}: {line}")
    for section, why in report.skipped.items():
        if section != "verdict":
            lines.append(f"- {section}: skipped ({why})")
    lines += ["", "## Tables", ""]
    lines += [f"- [{p.name}]({p.relative_to(report.out_dir).as_posix()})" for p in report.tables]
    lines += [f"- {section}: {line}" for section, line in report.missing.items() if section.startswith("paired_vs_")]
    lines += ["", "The intervals of `aggregate`, `paired_vs_*` and the `*_unadjusted` columns of the rankings are per "
              f"comparison ({boot.level:.0%} each, no adjustment for the many comparisons a table holds): read them one "
              "at a time, or use the report's simultaneous intervals and counted decisions above.", "",
              "Regenerate with `styleprobe analyze results_dir=...`; the settings are in `experiments/analysis/default.yaml`.", ""]
    return "\n".join(lines)


def run(cfg: DictConfig) -> Report:
    """`styleprobe analyze results_dir=<folder> [out_dir=...] [analysis.verdict.style_fraction=0.9 ...]`."""
    dirs = cfg.results_dir
    dirs = list(OmegaConf.to_container(dirs, resolve=True)) if OmegaConf.is_list(dirs) else [dirs]
    settings = AnalysisSettings.from_config(with_preset_metrics(cfg, dirs).analysis)  # model=toy's: the judge's
    report = analyze([Path(str(d)) for d in dirs], settings, cfg.get("out_dir"))
    log_report(report, settings)
    return report


def log_report(report: Report, settings: AnalysisSettings) -> None:
    """The criterion, its thresholds and the answers (or the benchmark's summary), in the run log; then where the report is."""
    for line in report.headline:
        log.info("benchmark %s", line)
    if report.kind == "benchmark":
        log.info("analysis: %d figures, %d tables in %.1f s -> %s", len(report.figures), len(report.tables), report.seconds, report.path)
        return
    for line in settings.criterion.describe():
        log.info("verdict criterion: %s", line)
    for v in report.verdicts:
        log.info("verdict %s: %s%s", v.title(), v.word, "" if v.answer else " - " + "; ".join(v.reasons()))
    if "verdict" in report.skipped:
        log.info("verdict not judged: %s", report.skipped["verdict"])
    log.info("analysis: %d figures, %d tables in %.1f s -> %s", len(report.figures), len(report.tables), report.seconds, report.path)
