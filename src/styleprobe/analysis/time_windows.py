"""When does style enter? Effects of patterns acting in denoising windows, and the shortest window that keeps the style.

A results folder whose rows hold windows other than the full one (`injection.windows`, `experiment=time_probe`)
gets, per setting (method, strength, ...):
- `window_effects`: every (pattern, window) against `none` at the full window (the plain model, one image whatever
  the window) on the same units, for each of the verdict's three metrics: the paired difference with its interval,
  and simultaneous intervals over all the (pattern, window) cells of the metric (one family per metric and setting:
  a heatmap makes one claim per cell);
- `when`: for `all` and the verdict's candidates (InstantStyle's modules), the shortest window from the start
  `[0, e]` and from the end `[s, 1]` that keeps at least `style_fraction` of the full window's style effect,
  share = (S_window - S_none) / (S_full - S_none) on the style metric, its lower bound at the verdict's level.
  Windows are tested longest first, in a fixed sequence that stops at the first window that does not keep the
  style: each test at that level, the sequence keeps the chance of naming too short a window at most
  (1 - level) / 2 (fixed-sequence testing). The answer carries its leakage and text differences from the full
  window, with intervals, and how many windows were tested.
The layer analyses (module bars, verdict, rankings) read the full-window rows only (`full_window_rows`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from styleprobe.analysis.conditions import preset_rows, split_by_setting
from styleprobe.analysis.load import require_columns
from styleprobe.analysis.stats import (
    Bootstrap,
    effect_share,
    paired_difference,
    paired_differences,
    select,
    simultaneous_differences,
)
from styleprobe.analysis.verdict import Criterion
from styleprobe.run.windows import FULL

WINDOW_COLUMNS = ("window", "window_start", "window_end")


def has_windows(table: pd.DataFrame) -> bool:
    """Whether the table holds rows made in a window other than the full one."""
    return "window" in table and bool((table["window"].astype(str) != FULL.name).any())


def full_window_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows made at the full window: what the layer analyses compare (windows are the time analysis's axis)."""
    if "window" not in table:
        return table
    return table[table["window"].astype(str) == FULL.name]


def window_settings(table: pd.DataFrame) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """The table split by setting (method, strength, ...) with each setting's windows kept together."""
    return split_by_setting(table, within=("injection", "window"))


def window_effects(table: pd.DataFrame, metrics: Sequence[str], baseline: str = "none",
                   boot: Bootstrap = Bootstrap()) -> pd.DataFrame:
    """Every (injection, window) of one setting minus `baseline` at the full window, per metric, with per-cell and
    simultaneous intervals. Columns: injection, window, window_start, window_end, target, metric, mean_diff, low,
    high, simul_low, simul_high, family, n_units, n_references, n_prompts."""
    require_columns(table, ["injection", "target", *WINDOW_COLUMNS], "window effects")
    against = {"injection": baseline, "window": FULL.name}
    frames = []
    for metric in metrics:
        if metric not in table or table[metric].isna().all():
            continue
        diff = paired_differences(table, metric, against, by=["injection", "window"], boot=boot)
        simul = simultaneous_differences(table, metric, against, by=["injection", "window"], boot=boot)
        merged = diff.merge(simul, on=["injection", "window"], how="left")
        merged["family"] = int(simul.attrs.get("family", 0))
        frames.append(merged)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    info = table.drop_duplicates(["injection", "window"]).set_index(["injection", "window"])
    keys = list(zip(out["injection"], out["window"]))
    for column in ("target", "window_start", "window_end"):
        out[column] = [info.at[k, column] for k in keys]
    return out


@dataclass
class WhenAnswer:
    """The shortest window from one side that keeps the style, for one pattern and setting."""

    injection: str  # the pattern asked for (`all`, a candidate)
    source: str  # the injection whose rows stand for it (`style` in a module probe: one_hot:up_blocks.0.attentions.1)
    side: str  # "from the start" ([0, e]) | "from the end" ([s, 1])
    window: str  # its name, or "" when no window shorter than the full one was tested
    share: float
    low: float
    high: float
    leak_diff: tuple[float, float, float]  # window - full on the leakage metric: estimate, low, high
    text_diff: tuple[float, float, float]
    tested: int  # windows tested in the sequence (the full one excluded)
    n_units: int
    note: str = ""


def when_answers(table: pd.DataFrame, crit: Criterion, boot: Bootstrap = Bootstrap()) -> list[WhenAnswer]:
    """For `crit.reference` and each candidate present, per side: the shortest window keeping the style (see the
    module docstring). One setting; a pattern without windows on a side gives no answer for that side."""
    require_columns(table, ["injection", *WINDOW_COLUMNS, *crit.metrics], "when")
    answers = []
    base = select(table, {"injection": crit.baseline or "none", "window": FULL.name})
    for name in dict.fromkeys([crit.reference, *crit.candidates]):
        mask, source = preset_rows(table, name)
        rows = table[mask]
        full = select(table, {"injection": source, "window": FULL.name})
        if rows.empty or not full.any() or not base.any():
            continue
        for side, windows in (("from the start", _from_start(rows)), ("from the end", _to_end(rows))):
            if windows:
                answer = _shortest(table, crit, boot, source, side, windows, full, base)
                answers.append(dataclasses.replace(answer, injection=name, source=source))
    return answers


def _from_start(rows: pd.DataFrame) -> list[str]:
    """Windows [0, e) with e < 1, longest first."""
    w = rows[(rows["window_start"] == 0.0) & (rows["window_end"] < 1.0)].drop_duplicates("window")
    return list(w.sort_values("window_end", ascending=False)["window"].astype(str))


def _to_end(rows: pd.DataFrame) -> list[str]:
    """Windows [s, 1] with s > 0, longest first."""
    w = rows[(rows["window_end"] >= 1.0) & (rows["window_start"] > 0.0)].drop_duplicates("window")
    return list(w.sort_values("window_start")["window"].astype(str))


def _shortest(table: pd.DataFrame, crit: Criterion, boot: Bootstrap, injection: str, side: str,
              windows: list[str], full: pd.Series, base: pd.Series) -> WhenAnswer:
    """The last window of the fixed sequence (longest first) whose style share's lower bound reaches the fraction."""
    metric = crit.style_metric
    _, effect_low, _, n = paired_difference(table, metric, full, base, boot)
    nan3 = (np.nan, np.nan, np.nan)
    if not effect_low > 0:
        return WhenAnswer(injection, injection, side, "", np.nan, np.nan, np.nan, nan3, nan3, 0, n,
                          f"`{injection}` at the full window does not raise {metric} over `{crit.baseline}`: "
                          "no style effect to keep a share of")
    chosen, share, tested = "", (1.0, 1.0, 1.0), 0
    for window in windows:
        tested += 1
        mask = select(table, {"injection": injection, "window": window})
        est = effect_share(table, metric, mask, full, base, boot)[1]
        if not est[1] >= crit.style_fraction:
            break
        chosen, share = window, est
    if not chosen:
        return WhenAnswer(injection, injection, side, "", np.nan, np.nan, np.nan, nan3, nan3, tested, n,
                          f"no window shorter than the full one keeps {crit.style_fraction:g} of the style")
    mask = select(table, {"injection": injection, "window": chosen})
    leak, text = (paired_difference(table, m, mask, full, boot)[:3] for m in (crit.leak_metric, crit.text_metric))
    return WhenAnswer(injection, injection, side, chosen, *share, leak, text, tested, n)


def when_table(table: pd.DataFrame, crit: Criterion, boot: Bootstrap = Bootstrap()) -> pd.DataFrame:
    """`when_answers` for every setting of the table, as rows (setting columns first)."""
    rows = []
    for setting, part in window_settings(table):
        for a in when_answers(part, crit, boot):
            rows.append({**setting, "injection": a.injection, "source": a.source, "side": a.side, "window": a.window,
                         "style_share": a.share, "style_share_low": a.low, "style_share_high": a.high,
                         "leak_vs_full": a.leak_diff[0], "leak_vs_full_low": a.leak_diff[1],
                         "leak_vs_full_high": a.leak_diff[2], "text_vs_full": a.text_diff[0],
                         "text_vs_full_low": a.text_diff[1], "text_vs_full_high": a.text_diff[2],
                         "windows_tested": a.tested, "n_units": a.n_units, "note": a.note})
    return pd.DataFrame(rows)


def _ci(est: float, low: float, high: float, signed: bool = True) -> str:
    if not np.isfinite(est):
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(est)} [{f.format(low)}, {f.format(high)}]"


def when_lines(effects: pd.DataFrame, when: pd.DataFrame, crit: Criterion, boot: Bootstrap) -> list[str]:
    """The report's section on windows: the criterion, the answers per pattern and side, and how to read the rest."""
    baseline = crit.baseline or "none"
    one_sided = (1 - boot.level) / 2
    lines = ["## When does style enter? Denoising windows", "",
             "Each pattern acted only during the steps of a window [start, end) (fractions of the trajectory, 0 the "
             f"first step, 1 after the last); outside it the method acted as `{baseline}`. Every effect is against "
             f"`{baseline}` (the plain model, one image whatever the window) on the same units.", "",
             f"Criterion: the shortest window from the start `[0, e]` (and from the end `[s, 1]`) that keeps at least "
             f"{crit.style_fraction:g} of the full window's style effect on `{crit.style_metric}`, share = (window - "
             f"{baseline}) / (full - {baseline}), lower bound of its {boot.level:.0%} interval >= {crit.style_fraction:g}. "
             "Windows are tested longest first and the search stops at the first window that fails (fixed-sequence "
             f"testing: each test one-sided at {one_sided:.1%}, so the chance of naming too short a window is at most "
             f"{one_sided:.1%} per pattern and side). The answer's leakage and text columns are its differences from "
             "the full window.", ""]
    if when is None or when.empty:
        lines += [f"No answer: the table has no `[0, e]` or `[s, 1]` windows for `{crit.reference}` or the candidates "
                  f"({', '.join(crit.candidates)}), or no `{baseline}`; add e.g. `injection.windows=[full,from_start:5,"
                  "to_end:5]` (`experiment=time_probe`).", ""]
    else:
        setting_columns = [c for c in when.columns if c not in _WHEN_COLUMNS]
        lines += [f"| pattern | rows used | setting | side | shortest window | style share [CI] | Δ {crit.leak_metric} "
                  f"vs full [CI] | Δ {crit.text_metric} vs full [CI] | windows tested | units |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in when.iterrows():
            setting = ", ".join(f"{c}={r[c]}" for c in setting_columns if pd.notna(r[c])) or "-"
            window = f"`{r['window']}`" if r["window"] else f"none shorter ({r['note']})" if r["note"] else "-"
            lines.append(
                f"| `{r['injection']}` | `{r['source']}` | {setting} | {r['side']} | {window} | "
                f"{_ci(r['style_share'], r['style_share_low'], r['style_share_high'], False)} | "
                f"{_ci(r['leak_vs_full'], r['leak_vs_full_low'], r['leak_vs_full_high'])} | "
                f"{_ci(r['text_vs_full'], r['text_vs_full_low'], r['text_vs_full_high'])} | {r['windows_tested']} | "
                f"{r['n_units']} |")
        lines += [""]
    if effects is not None and not effects.empty:
        families = effects.groupby("metric")["family"].max()
        lines += [f"`tables/window_effects.csv`: every (pattern, window) against `{baseline}` per metric, with its own "
                  f"{boot.level:.0%} interval (`low`, `high`) and a simultaneous one over all the metric's cells of its "
                  f"setting (`simul_low`, `simul_high`; {', '.join(f'{m}: {n} cells' for m, n in families.items())}), "
                  "which the heatmaps mark.", ""]
    return lines


_WHEN_COLUMNS = {"injection", "source", "side", "window", "style_share", "style_share_low", "style_share_high",
                 "leak_vs_full", "leak_vs_full_low", "leak_vs_full_high", "text_vs_full", "text_vs_full_low",
                 "text_vs_full_high", "windows_tested", "n_units", "note"}
