"""The time probe's figures: effects by pattern x denoising window, and the curves of growing windows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from styleprobe.analysis.conditions import is_instantstyle, preset_rows, unet_sort_key
from styleprobe.analysis.figures import COLORS, _figure, _label, _title, paper
from styleprobe.analysis.stats import Bootstrap
from styleprobe.analysis.time_windows import window_effects, window_settings
from styleprobe.errors import AnalysisError
from styleprobe.run.windows import FULL

CURVE_COLORS = {"all": "black", "style": COLORS["style"], "style_layout": COLORS["layout"]}


def _row(injection: str) -> str:
    """A heatmap row's label: a one-hot pattern by its target, any other by its name (`all`, `style_layout`)."""
    return injection.removeprefix("one_hot:")


def _rows(effects: pd.DataFrame) -> list[str]:
    """The named patterns first (`all` leading), then the one-hot targets in UNet order."""
    injections = list(dict.fromkeys(effects["injection"].astype(str)))
    named = sorted((i for i in injections if not i.startswith("one_hot:")), key=lambda i: (i != "all", i))
    hot = sorted((_row(i) for i in injections if i.startswith("one_hot:")), key=unet_sort_key)
    return [*named, *hot]


def _window_order(effects: pd.DataFrame) -> list[str]:
    """The windows by start then end, the full one last."""
    w = effects.drop_duplicates("window")
    w = w.assign(_full=w["window"] == FULL.name).sort_values(["_full", "window_start", "window_end"])
    return list(w["window"].astype(str))


@paper
def window_heatmap(
    table: pd.DataFrame, metrics: Sequence[str], baseline: str = "none", boot: Bootstrap = Bootstrap(),
    setting: Mapping[str, Any] | None = None, effects: pd.DataFrame | None = None,
) -> Figure:
    """Pattern target x denoising window: each cell's effect vs `baseline` (at the full window); a dot marks cells
    whose simultaneous interval (over the metric's cells) excludes 0. InstantStyle's modules in bold colour.
    `effects`: this setting's `window_effects`, when already computed."""
    effects = window_effects(table, metrics, baseline, boot) if effects is None else effects
    if effects.empty:
        raise AnalysisError(f"window heatmap: no (pattern, window) to compare with `{baseline}` at the full window; "
                            f"add {baseline} to injection.patterns")
    targets, windows = _rows(effects), _window_order(effects)
    fig = _figure(len(metrics) * (0.7 + 0.15 * len(targets)) + 0.9)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, metric) in enumerate(zip(axes, metrics)):
        eff = effects[effects["metric"] == metric]
        grid = np.full((len(targets), len(windows)), np.nan)
        sure = np.zeros_like(grid, dtype=bool)
        for _, r in eff.iterrows():
            y, x = targets.index(_row(str(r["injection"]))), windows.index(str(r["window"]))
            grid[y, x] = r["mean_diff"]
            sure[y, x] = bool(r["simul_low"] > 0 or r["simul_high"] < 0)
        bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto",
                          interpolation="nearest")
        ys, xs = np.nonzero(sure)
        ax.scatter(xs, ys, s=4, color="black", marker="o", linewidths=0)
        ax.set_facecolor("#eeeeee")
        cbar = fig.colorbar(image, ax=ax, shrink=0.95, pad=0.01)
        cbar.set_label(_label(table, metric, f"Δ vs {baseline}: ", 30), fontsize=6)
        ax.set_xticks(range(len(windows)), windows, rotation=90, fontsize=6)
        ax.set_yticks(range(len(targets)), targets, fontsize=6)
        for row, target in enumerate(targets):
            kind = is_instantstyle(target)
            if kind:
                ax.get_yticklabels()[row].set_color(COLORS[kind])
                ax.get_yticklabels()[row].set_fontweight("bold")
        if i == len(metrics) - 1:
            ax.set_xlabel("denoising window [start, end) (fractions of the steps)")
        family = int(eff["family"].max()) if len(eff) else 0
        ax.set_title(f"{metric} ({family} cells)", fontsize=7)
    fig.suptitle(_title(table, f"When: each pattern in one denoising window (dot: its simultaneous {boot.level:.0%} "
                               "CI excludes 0)", setting))
    return fig


def _curve_patterns(table: pd.DataFrame, names: Sequence[str]) -> list[tuple[str, str]]:
    """(label, injection) of the named patterns present (`style` found as its one-hot module in a module probe)."""
    out = []
    for name in dict.fromkeys(names):
        mask, source = preset_rows(table, name)
        if mask.any():
            out.append((name, source))
    return out


@paper
def window_curves(
    table: pd.DataFrame, metrics: Sequence[str], patterns: Sequence[str] = ("all", "style", "style_layout"),
    baseline: str = "none", boot: Bootstrap = Bootstrap(), setting: Mapping[str, Any] | None = None,
    effects: pd.DataFrame | None = None,
) -> Figure:
    """Growing windows: effect vs `baseline` of `[0, e]` against e (left) and of `[s, 1]` against s (right), for `all`
    and InstantStyle's modules, with per-window intervals; the full window is e = 1 and s = 0. `effects`: this
    setting's `window_effects`, when already computed (only their per-window intervals are drawn)."""
    present = _curve_patterns(table, patterns)
    if not present:
        raise AnalysisError(f"window curves: none of {', '.join(patterns)} in the table; add them to injection.patterns")
    if effects is None:
        effects = window_effects(table[table["injection"].isin([s for _, s in present] + [baseline])], metrics,
                                 baseline, boot)
    fig = _figure(2.0 * len(metrics) + 0.9)
    axes = fig.subplots(len(metrics), 2, sharex="col", squeeze=False)
    for row, metric in enumerate(metrics):
        eff = effects[effects["metric"] == metric] if len(effects) else effects
        for col, (side, x_of, keep) in enumerate((
            ("from the start: window [0, e]", "window_end", lambda e: e["window_start"] == 0.0),
            ("from the end: window [s, 1]", "window_start", lambda e: e["window_end"] >= 1.0),
        )):
            ax = axes[row, col]
            for label, source in present:
                part = eff[(eff["injection"] == source)] if len(eff) else eff
                part = part[keep(part)].sort_values(x_of) if len(part) else part
                if part.empty:
                    continue
                color = CURVE_COLORS.get(label, COLORS[""])
                ax.plot(part[x_of], part["mean_diff"], marker="o", markersize=3, color=color, label=label)
                ax.fill_between(part[x_of], part["low"], part["high"], color=color, alpha=0.15, linewidth=0)
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_title(f"{metric}, {side}", loc="left", fontsize=7)
            if col == 0:
                ax.set_ylabel(_label(table, metric, f"Δ vs {baseline}: ", 26))
            if row == len(metrics) - 1:
                ax.set_xlabel("e (end of the window)" if col == 0 else "s (start of the window)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    fig.suptitle(_title(table, "When: windows growing from the start and from the end", setting))
    return fig


def by_setting(build: Any, table: pd.DataFrame, *args: Any, **kwargs: Any) -> list[Figure]:
    """One window figure per setting (method, strength, ...; windows stay together), e.g. in a notebook:
    `display(*window_figures.by_setting(window_figures.window_heatmap, table, metrics))`."""
    return [build(part, *args, setting=setting, **kwargs) for setting, part in window_settings(table)]
