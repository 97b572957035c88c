"""The ablation figures, sized for a paper (7 in wide, 8 pt text), each saved as PNG and PDF.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state), so they work the same in a
script, a test and a notebook. Every value axis names the metric and the model that scored it; every
figure says which generating model made the images, and a tiny-model figure says it is a machinery check.
Effects are paired differences against a baseline condition (`none`), since raw cosines of all conditions
sit close together and far from zero.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from styleprobe.analysis.conditions import (
    INSTANTSTYLE_MODULES,
    MissingCondition,
    add_condition,
    describe_setting,
    is_instantstyle,
    layer_index,
    module_of,
    preset_rows,
    split_by_setting,
    unet_sort_key,
)
from styleprobe.analysis.load import (
    axis_label,
    disclaimers,
    method_names,
    model_names,
    require_columns,
    varying_conditions,
)
from styleprobe.analysis.stats import Bootstrap, aggregate, paired_differences, select
from styleprobe.errors import AnalysisError
from styleprobe.models.layers import PRESETS

WIDTH = 7.0  # inches: a two-column paper's text width
FONT = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
        "legend.fontsize": 7, "figure.titlesize": 9}
COLORS = {"style": "#d62728", "layout": "#1f77b4", "": "#8c8c8c"}
MARKERS = ("o", "s", "^", "D", "v", "P")  # one per method in a figure that shows several
FORMATS = ("png", "pdf")


def _figure(height: float, width: float = WIDTH) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def paper(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build a figure with paper-size fonts, without touching the caller's matplotlib settings."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        import matplotlib

        with matplotlib.rc_context(FONT):
            fig = build(*args, **kwargs)
        for ax in fig.axes:  # ticks are made lazily at draw time: pin their size now
            ax.tick_params(labelsize=FONT["xtick.labelsize"])
        return fig

    return wrapper


def _label(table: pd.DataFrame, metric: str, prefix: str = "", width: int = 34) -> str:
    """An axis label: the metric, what its number is (a cosine, a rate) and its model; the disclaimer is the title's."""
    return textwrap.fill(prefix + axis_label(table, metric), width)


def _title(table: pd.DataFrame, what: str, setting: Mapping[str, Any] | None = None) -> str:
    """What the figure shows, the generating model and method, and once per figure whose findings they are."""
    where = describe_setting({k: v for k, v in (setting or {}).items() if k not in ("model", "method")})  # named next
    models = ", ".join(model_names(table)) or "?"
    methods = ", ".join(method_names(table)) or "?"
    head = textwrap.fill(f"{what}; model {models}, method {methods}" + (f" ({where})" if where else ""), 110)
    return "\n".join([head, *disclaimers(table)[:1]])


def save(fig: Figure, out_dir: Path, name: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `name.png` and `name.pdf` (PNG at 200 dpi); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=200 if fmt == "png" else None)
        paths.append(path)
    return paths


def _one_setting(table: pd.DataFrame, what: str) -> None:
    """Figures that compare injections within one setting refuse a table that mixes methods, strengths, models."""
    settings = [describe_setting(s) for s, _ in split_by_setting(table)]
    if len(settings) > 1:
        raise AnalysisError(
            f"{what}: the table holds {len(settings)} settings ({'; '.join(settings[:3])}{'; ...' if len(settings) > 3 else ''}); "
            "draw one at a time: for setting, part in split_by_setting(table): ...(part, ..., setting=setting)"
        )


def by_setting(build: Callable[..., Figure], table: pd.DataFrame, *args: Any, **kwargs: Any) -> list[Figure]:
    """One figure per setting of the table (per method, subtraction strength, ...), e.g. for a notebook:
    `display(*figures.by_setting(figures.module_bars, table, metrics))`."""
    return [build(part, *args, setting=setting, **kwargs) for setting, part in split_by_setting(table)]


def _effects(table: pd.DataFrame, metric: str, against: str, boot: Bootstrap) -> pd.DataFrame:
    """Paired differences of every injection against `against` (one setting), with `target` attached."""
    diff = paired_differences(table, metric, {"injection": against}, by=["injection"], boot=boot)
    targets = table.drop_duplicates("injection").set_index("injection")["target"].astype(str)
    return diff.assign(target=diff["injection"].map(targets))


@paper
def module_bars(
    table: pd.DataFrame, metrics: Sequence[str], baseline: str = "none", reference: str = "all",
    boot: Bootstrap = Bootstrap(), setting: Mapping[str, Any] | None = None,
) -> Figure:
    """One-hot module probe: each module's effect on each metric (vs `baseline`), in UNet order, with CIs.

    InstantStyle's style and layout modules are coloured; `reference` (all) is the dashed line with its CI band.
    """
    require_columns(table, [*metrics, "sweep", "target", "injection"], "module bars")
    probe = table[(table["sweep"] == "one_hot_module") | table["injection"].isin([baseline, reference])]
    if not (probe["sweep"] == "one_hot_module").any():
        raise _missing("module bars", "one_hot:module", "experiment=layer_probe")
    _one_setting(table, "module bars")
    _need(probe, baseline, "module bars")
    fig = _figure(2.1 * len(metrics) + 0.9)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics):
        eff = _effects(probe, metric, baseline, boot)
        bars = eff[eff["injection"].str.startswith("one_hot:")]
        bars = bars.iloc[sorted(range(len(bars)), key=lambda i: unet_sort_key(bars["target"].iloc[i]))]
        x = np.arange(len(bars))
        kinds = [is_instantstyle(t) for t in bars["target"]]
        ax.bar(x, bars["mean_diff"], color=[COLORS[k] for k in kinds], width=0.7)
        ax.errorbar(x, bars["mean_diff"], yerr=[bars["mean_diff"] - bars["low"], bars["high"] - bars["mean_diff"]],
                    fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ref = eff[eff["injection"] == reference]
        if len(ref):
            r = ref.iloc[0]
            ax.axhline(r["mean_diff"], color="black", linestyle="--", linewidth=0.8,
                       label=f"{reference} (CI shaded)" if ax is axes[0] else None)
            ax.axhspan(r["low"], r["high"], color="black", alpha=0.08, linewidth=0)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_ylabel(_label(table, metric, f"Δ vs {baseline}: ", 26))
        ax.set_xticks(x, list(bars["target"]), rotation=35, ha="right")
        n = int(bars["n_units"].max()) if len(bars) else 0
        ax.set_title(f"{metric}: effect of one module alone (mean, {boot.level:.0%} CI over {n} units)", loc="left")
    for kind, name in (("style", "InstantStyle style module"),
                       ("layout", "InstantStyle layout module"), ("", "other modules")):
        axes[0].bar([np.nan], [np.nan], color=COLORS[kind], label=name)
    fig.legend(loc="outside lower center", ncols=4, frameon=False)
    fig.suptitle(_title(table, "One-hot module probe", setting))
    return fig


@paper
def layer_heatmap(
    table: pd.DataFrame, metrics: Sequence[str], baseline: str = "none",
    boot: Bootstrap = Bootstrap(), setting: Mapping[str, Any] | None = None,
) -> Figure:
    """One-hot layer probe: modules (grouped by block, UNet order) x transformer layer index, effect vs `baseline`."""
    require_columns(table, [*metrics, "sweep", "target", "injection"], "layer heatmap")
    probe = table[(table["sweep"] == "one_hot_layer") | (table["injection"] == baseline)]
    if not (probe["sweep"] == "one_hot_layer").any():
        raise _missing("layer heatmap", "one_hot:layer", "experiment=layer_probe_layers")
    _one_setting(table, "layer heatmap")
    _need(probe, baseline, "layer heatmap")
    targets = probe.loc[probe["sweep"] == "one_hot_layer", "target"].astype(str).unique()
    modules = sorted({module_of(t) for t in targets}, key=unet_sort_key)
    depth = max(layer_index(t) for t in targets) + 1
    fig = _figure(0.9 + 0.24 * len(modules))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for i, (ax, metric) in enumerate(zip(axes, metrics)):
        eff = _effects(probe, metric, baseline, boot)
        eff = eff[eff["injection"].str.startswith("one_hot:")]
        grid = np.full((len(modules), depth), np.nan)
        for t, v in zip(eff["target"], eff["mean_diff"]):
            grid[modules.index(module_of(t)), layer_index(t)] = v
        bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto",
                          interpolation="nearest")
        ax.set_facecolor("#eeeeee")
        cbar = fig.colorbar(image, ax=ax, shrink=0.9)
        cbar.set_label(_label(table, metric, f"Δ vs {baseline}: ", 28))
        ax.set_xticks(range(depth), [str(d) for d in range(depth)])
        ax.set_xlabel("transformer layer in module")
        ax.set_yticks(range(len(modules)), modules if i == 0 else [""] * len(modules))
        for row, module in enumerate(modules):
            kind = INSTANTSTYLE_MODULES.get(module, "")
            if kind and i == 0:
                ax.get_yticklabels()[row].set_color(COLORS[kind])
                ax.get_yticklabels()[row].set_fontweight("bold")
        blocks = [m.split(".attentions")[0] for m in modules]
        for row in range(1, len(modules)):
            if blocks[row] != blocks[row - 1]:
                ax.axhline(row - 0.5, color="black", linewidth=0.8)
        ax.set_title(metric)
    fig.suptitle(_title(table, "One-hot layer probe (grey: no such layer; bold: InstantStyle's modules)", setting))
    return fig


@paper
def subtraction_curves(
    table: pd.DataFrame, metrics: Sequence[str], boot: Bootstrap = Bootstrap(),
    setting: Mapping[str, Any] | None = None,
) -> Figure:
    """Each metric against the subtraction strength s, one line per injection preset, with CI bands."""
    require_columns(table, [*metrics, "subtraction", "injection"], "subtraction curves")
    table = table[table["subtraction"].notna()]  # rows of methods without content subtraction have none
    if table["subtraction"].nunique() < 2:
        raise _missing("subtraction curves", "several subtraction strengths", "experiment=subtraction")
    presets = table[table["sweep"] == "preset"] if "sweep" in table else table
    fig = _figure(2.5, WIDTH)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    names = sorted(presets["injection"].astype(str).unique(), key=lambda n: list(PRESETS).index(n) if n in PRESETS else 99)
    colors = dict(zip(names, ["#4d4d4d", "#9467bd", COLORS["style"], COLORS["layout"], "#2ca02c", "#ff7f0e", "#17becf"]))
    n = 0
    for ax, metric in zip(axes, metrics):
        agg = aggregate(presets, metric, by=["injection", "subtraction"], boot=boot)
        n = max(n, int(agg["n_units"].max()))
        for name in names:
            line = agg[agg["injection"] == name].sort_values("subtraction")
            color = colors.get(name, None)
            ax.plot(line["subtraction"], line["mean"], marker="o", markersize=3, label=name, color=color,
                    linestyle=":" if name == "none" else "-")
            ax.fill_between(line["subtraction"], line["low"], line["high"], alpha=0.1, color=color, linewidth=0)
        ax.set_xlabel("content subtraction strength s")
        ax.set_ylabel(_label(table, metric))
    axes[0].legend(frameon=False)
    fig.suptitle(_title(table, f"Content subtraction (mean, {boot.level:.0%} CI over {n} units)", setting))
    return fig


@paper
def tradeoff_scatter(
    table: pd.DataFrame, style_metric: str, others: Sequence[str], baseline: str | None = "none",
    boot: Bootstrap = Bootstrap(), labels: Mapping[str, str] | None = None,
) -> Figure:
    """Style similarity against text alignment and against leakage: one point per condition, CIs on both axes.

    With a `baseline` condition in the table, both axes are paired effects against it (the spread between
    units cancels, so the CIs show what separates conditions); otherwise raw means. The presets, InstantStyle's
    modules and the injections in `labels` (injection -> label, e.g. a ranking's top targets) are labelled, each
    label placed beside its point where it overlaps no other (`place_labels`).
    """
    require_columns(table, [style_metric, *others, "injection"], "trade-off scatter")
    by = varying_conditions(table)
    paired = bool(baseline) and (table["injection"] == baseline).any()
    labels = dict(labels or {})
    rank = {name: i for i, name in enumerate(labels)}  # a ranking's labels are placed in rank order

    def summary(metric: str) -> pd.DataFrame:
        if paired:
            frame = paired_differences(table, metric, {"injection": baseline}, by=by, boot=boot)
            return frame.rename(columns={"mean_diff": "mean"})
        return aggregate(table, metric, by=by, boot=boot)

    x = summary(style_metric)
    prefix = f"Δ vs {baseline}: " if paired else ""
    methods = sorted(x["method"].astype(str).unique()) if "method" in by else []
    fig = _figure(3.4)
    axes = fig.subplots(1, len(others), squeeze=False)[0]
    pending: list[tuple[Any, list[tuple[float, float, str, str, tuple[int, int]]], list[tuple[float, float]]]] = []
    for ax, metric in zip(axes, others):
        both = x.merge(summary(metric), on=by, suffixes=("_x", "_y"))
        texts, points = [], []
        for _, p in both.iterrows():
            name = str(p["injection"])
            target = name.split(":", 1)[1] if ":" in name else ""
            kind = is_instantstyle(target) if target and module_of(target) == target else ""
            priority = 0 if name in PRESETS else 1 if name in labels else 2 if kind else None
            color = COLORS[is_instantstyle(target)] if target and is_instantstyle(target) else (
                "black" if name in PRESETS else "#555555" if name in labels else COLORS[""])
            marker = MARKERS[methods.index(str(p["method"])) % len(MARKERS)] if methods else "o"
            ax.errorbar(p["mean_x"], p["mean_y"], xerr=[[p["mean_x"] - p["low_x"]], [p["high_x"] - p["mean_x"]]],
                        yerr=[[p["mean_y"] - p["low_y"]], [p["high_y"] - p["mean_y"]]], fmt=marker,
                        markersize=4 if priority is not None else 2.5, color=color, elinewidth=0.6, capsize=1.5,
                        alpha=1.0 if priority is not None else 0.6)
            points.append((p["mean_x"], p["mean_y"]))
            if priority is not None:  # the marker says the method; the label says the rest
                extra = describe_setting({c: p[c] for c in by if c not in ("injection", "method")})
                text = labels.get(name, target or name) + (f" ({extra})" if extra else "")
                texts.append((p["mean_x"], p["mean_y"], text, color, (priority, rank.get(name, 0))))
        pending.append((ax, sorted(texts, key=lambda t: t[4]), points))
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(6))
        if paired:
            ax.axhline(0, color="black", linewidth=0.4)
            ax.axvline(0, color="black", linewidth=0.4)
        ax.set_xlabel(_label(table, style_metric, prefix, 44))
        ax.set_ylabel(_label(table, metric, prefix, 30))  # lines that fit beside the axes' height
    for i, name in enumerate(methods):
        axes[0].plot([], [], MARKERS[i % len(MARKERS)], color="black", markersize=4, label=name)
    if methods:
        fig.legend(loc="outside lower center", ncols=len(methods), frameon=False, title="method")
    what = "paired effects" if paired else "means"
    fig.suptitle(_title(table, f"Trade-offs, one point per condition ({what}, {boot.level:.0%} CIs; "
                               "red/blue: InstantStyle's style/layout module)"))
    for ax, texts, points in pending:
        place_labels(ax, [(x_, y_, t, c) for x_, y_, t, c, _ in texts], points)
    return fig


#: Where `place_labels` tries a label, in points from its point: nearest rings first, around each ring from upper right.
_RINGS = (4.0, 9.0, 15.0, 23.0, 33.0, 45.0, 60.0)
_DIRECTIONS = tuple((float(np.cos(a)), float(np.sin(a))) for a in np.deg2rad([45, -45, 135, -135, 0, 180, 90, -90,
                                                                            22.5, -22.5, 157.5, -157.5, 67.5, -67.5,
                                                                            112.5, -112.5]))
_PAD = 1.5  # pixels kept free around every label


def _side(u: float) -> int:
    """Which way a label extends along one axis from its anchor: +1, -1, or 0 (centred)."""
    return 0 if abs(u) < 0.3 else (1 if u > 0 else -1)


def place_labels(ax: Any, labels: Sequence[tuple[float, float, str, Any]], points: Sequence[tuple[float, float]] = (),
                 fontsize: float = 6) -> list[Any]:
    """Annotate each (x, y, text, colour) beside its point so that no two labels overlap (greedy).

    The figure's layout is settled first; then each label in turn, in the order given (the most important first),
    takes the nearest offset of a few rings around its point whose box overlaps no label placed before it, stays
    inside the axes and covers no point, else the nearest that overlaps no label, else the least overlapping. A label
    set away from its point gets a thin leader line. The layout is then kept as it is, so saving does not move the
    axes under the labels (a figure that labels several axes calls this once per axes, after everything is drawn).
    """
    if not labels:
        return []
    fig = ax.figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()  # settles the constrained layout and the data limits the boxes are measured against
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    dots = ax.transData.transform(np.asarray(points, dtype=float)) if len(points) else np.empty((0, 2))
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for x, y, text, color in labels:
        probe = ax.text(0, 0, text, fontsize=fontsize)
        box = probe.get_window_extent(renderer)
        probe.remove()
        w, h = box.width, box.height
        px, py = ax.transData.transform((x, y))
        best: tuple[float, float, float] = (1.0, 1.0, _RINGS[0])
        best_cost: tuple[float, float] | None = None
        best_rect = (px, py, px + w, py + h)
        for radius in _RINGS:
            for ux, uy in _DIRECTIONS:
                sx, sy = _side(ux), _side(uy)
                left = px + ux * radius * scale - (0 if sx > 0 else w if sx < 0 else w / 2)
                bottom = py + uy * radius * scale - (0 if sy > 0 else h if sy < 0 else h / 2)
                rect = (left - _PAD, bottom - _PAD, left + w + _PAD, bottom + h + _PAD)
                overlap = sum(_overlap(rect, other) for other in placed)
                inside = rect[0] >= frame.x0 and rect[2] <= frame.x1 and rect[1] >= frame.y0 and rect[3] <= frame.y1
                covers = int(((dots[:, 0] >= rect[0]) & (dots[:, 0] <= rect[2]) & (dots[:, 1] >= rect[1])
                              & (dots[:, 1] <= rect[3])).sum()) if len(dots) else 0
                cost = (overlap * 1e6 + (not inside) * 1e3 + covers, radius)
                if best_cost is None or cost < best_cost:
                    best, best_cost, best_rect = (ux, uy, radius), cost, rect
            if best_cost is not None and best_cost[0] == 0:
                break
        ux, uy, radius = best
        sx, sy = _side(ux), _side(uy)
        ann = ax.annotate(text, (x, y), xytext=(ux * radius, uy * radius), textcoords="offset points", fontsize=fontsize,
                          color=color, ha="left" if sx > 0 else "right" if sx < 0 else "center",
                          va="bottom" if sy > 0 else "top" if sy < 0 else "center", annotation_clip=False,
                          arrowprops=dict(arrowstyle="-", color=color, linewidth=0.4, shrinkA=0, shrinkB=2)
                          if radius > _RINGS[1] else None)
        placed.append(best_rect)
        out.append(ann)
    fig.set_layout_engine("none")  # keep the layout the labels were placed on: saving must not move the axes
    return out


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """The area two (x0, y0, x1, y1) boxes share (0 when they only touch)."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


@dataclass
class GridChoice:
    """What an image grid shows: its rows (conditions), its columns (styles or prompts) and the unit held fixed.

    `choose_grid` decides it; the report writes `describe()` beside the grid.
    """

    columns: str  # "style" or "prompt"
    fixed: dict[str, Any]  # the other unit columns, held at one value: prompt (or reference_digest) and seed
    fixed_name: str  # that prompt, or the held reference's style
    why: str  # how the fixed prompt or reference was chosen
    shown: list[str]  # the styles or prompts shown, in order
    left_out: list[str]  # those of the table the grid leaves out
    rows: list[tuple[str, str]]  # (row label, injection) of each image row, the references' row not counted
    not_found: list[str] = field(default_factory=list)  # asked-for rows the table has no images of
    add: str = ""  # the line saying how to get them

    def describe(self) -> list[str]:
        kind = "styles" if self.columns == "style" else "prompts"
        held = f"prompt '{self.fixed_name}'" if self.columns == "style" else f"reference {self.fixed_name}"
        total = len(self.shown) + len(self.left_out)
        lines = [f"Rows: {', '.join(f'`{inj}`' for _, inj in self.rows)}. Held: {held}, seed {self.fixed['seed']} "
                 f"({self.why}). Shows {len(self.shown)} of {total} {kind}"
                 + (f"; leaves out {', '.join(f'`{c}`' for c in self.left_out)}." if self.left_out else ".")]
        if self.not_found:
            lines.append(self.add)
        return lines


def choose_grid(
    table: pd.DataFrame, rows: Sequence[str], columns: str = "style", max_columns: int = 6, metric: str | None = None,
    baseline: str = "none", labels: Mapping[str, str] | None = None,
) -> GridChoice:
    """The rows, columns and fixed unit of an image grid (see `image_grid`).

    Rows: each name in `rows` found in the table (`style` and `style_layout` also by their layers, in a module probe),
    once each, labelled by `labels` where given; with none of them in the table, its first four conditions. The
    fixed prompt (styles as columns) or reference (prompts as columns) is the one whose images differ most from
    `baseline`: the largest mean |Δ metric| of the grid's other rows against it, cell by cell (without `baseline`
    rows, the largest spread of the metric between the rows); else the first. Seed: the lowest.
    """
    require_columns(table, ["image_path", "results_dir", "injection", "prompt", "seed", "style"], "image grid")
    if columns not in ("style", "prompt"):
        raise _missing("image grid", f"columns={columns!r}", "grid.columns=style or grid.columns=prompt")
    labels = dict(labels or {})
    found: list[tuple[str, str]] = []
    not_found = []
    for name in dict.fromkeys(rows):
        mask, source = preset_rows(table, name)
        if not mask.any():
            not_found.append(name)
        elif source not in {s for _, s in found}:
            label = labels.get(source, name) if source == name else f"{name}\n(= {source.split(':', 1)[-1]})" + (
                f"\n{labels[source].split(' ', 1)[0]}" if source in labels else "")  # its rank: `style` is #2
            found.append((label, source))
    if not found:
        found = [(labels.get(n, n), n) for n in list(dict.fromkeys(table["injection"].astype(str)))[:4]]
    held = "prompt" if columns == "style" else "reference_digest"
    seed = table["seed"].min()
    at_seed = table[table["seed"] == seed]
    pick, why = _most_distinct(at_seed, held, [s for _, s in found], metric, baseline)
    fixed = {held: pick, "seed": seed}
    part = at_seed[select(at_seed, {held: pick})]
    every = list(dict.fromkeys(part[columns].astype(str)))
    everywhere = list(dict.fromkeys(table[columns].astype(str)))
    shown = every[:max_columns]
    name = str(pick) if columns == "style" else str(part["style"].iloc[0])
    add = add_condition(table, not_found, "their rows in this grid") if not_found else ""
    return GridChoice(columns, fixed, name, why, shown, [c for c in everywhere if c not in shown], found, not_found, add)


def _most_distinct(
    table: pd.DataFrame, held: str, injections: Sequence[str], metric: str | None, baseline: str
) -> tuple[Any, str]:
    """The value of `held` (a prompt or a reference) whose images differ most between the grid's rows, and why."""
    first = table[held].iloc[0]
    if not metric or metric not in table or len(injections) < 2:
        return first, "the first"
    rows = table[table["injection"].astype(str).isin(injections)].dropna(subset=[metric])
    other = "reference_digest" if held == "prompt" else "prompt"
    cells = rows.groupby([held, other, "injection"], sort=False)[metric].mean().unstack("injection")
    if baseline in cells and len(cells.columns) > 1:
        score = cells.drop(columns=baseline).sub(cells[baseline], axis=0).abs().mean(axis=1)
        what = f"its images differ most from `{baseline}`: mean |Δ {metric}|"
    elif len(cells.columns) > 1:
        score = cells.std(axis=1)
        what = f"its images differ most between the rows: sd of {metric}"
    else:
        return first, "the first"
    score = score.groupby(level=held, sort=False).mean().dropna()
    if score.empty:
        return first, "the first"
    pick = score.idxmax()
    return pick, f"{what} {score[pick]:.3f}, the largest of {len(score)} {'prompts' if held == 'prompt' else 'references'}"


@paper
def image_grid(
    table: pd.DataFrame, rows: Sequence[str], columns: str = "style", max_columns: int = 6,
    thumb: int = 192, setting: Mapping[str, Any] | None = None, choice: GridChoice | None = None,
) -> Figure:
    """Images with conditions as rows and styles (or prompts) as columns; the first row shows the references.

    What it shows is `choice`, or `choose_grid(table, rows, columns, max_columns)`: the other unit columns are fixed
    (named in the title), conditions not in the table are skipped, `style` and `style_layout` are found in a module
    probe by their layers.
    """
    from PIL import Image

    choice = choice or choose_grid(table, rows, columns, max_columns)
    columns = choice.columns
    part = table[select(table, choice.fixed)]
    cols = choice.shown
    fig = _figure(WIDTH / len(cols) * (len(choice.rows) + 1) * 0.95 + 0.5, WIDTH)
    axes = fig.subplots(len(choice.rows) + 1, len(cols), squeeze=False)
    first = part.drop_duplicates(columns)
    first = first.set_index(first[columns].astype(str))
    for j, col in enumerate(cols):
        show_ref = columns == "style" or j == 0  # with prompts as columns, one reference serves every column
        _show(axes[0, j], _reference_image(first.loc[col]) if show_ref else None, thumb, blank=not show_ref)
        axes[0, j].set_title(textwrap.fill(col, max(12, 110 // len(cols))), fontsize=6.5)
    _row_label(axes[0, 0], "reference")
    for i, (label, source) in enumerate(choice.rows, start=1):
        rows_ = part[part["injection"].astype(str) == source]
        for j, col in enumerate(cols):
            hit = rows_[rows_[columns].astype(str) == col]
            path = Path(hit["results_dir"].iloc[0]) / hit["image_path"].iloc[0] if len(hit) else None
            _show(axes[i, j], Image.open(path) if path and path.exists() else None, thumb)
        _row_label(axes[i, 0], label)
    what = f"prompt '{choice.fixed_name}'" if columns == "style" else f"reference {choice.fixed_name}"
    fig.suptitle(_title(table, f"Images: {what}, seed {choice.fixed['seed']}", setting))
    return fig


def _reference_image(row: pd.Series) -> Any:
    from PIL import Image

    path = Path(row["results_dir"]) / "references"
    found = sorted(path.glob(f"{row['reference_digest']}.*")) if path.exists() else []
    return Image.open(found[0]) if found else None


def _row_label(ax: Any, label: str) -> None:
    lines = [textwrap.fill(part, 18, break_long_words=False) for part in label.split("\n")]
    ax.set_ylabel("\n".join(lines), rotation=0, ha="right", va="center", fontsize=6.5)


def _show(ax: Any, image: Any, thumb: int, blank: bool = False) -> None:
    if blank:
        pass
    elif image is not None:
        image = image.convert("RGB")
        image.thumbnail((thumb, thumb))
        ax.imshow(np.asarray(image))
    else:
        ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _need(table: pd.DataFrame, name: str, what: str) -> None:
    if not (table["injection"] == name).any():
        raise MissingCondition(add_condition(table, name, f"the {what} (effects against `{name}`)"))


def _missing(what: str, lacking: str, fix: str) -> Exception:
    return AnalysisError(f"{what}: the table has no {lacking}; {fix}")


# the method benchmark ---------------------------------------------------------------------------------------------
@paper
def benchmark_tradeoff(
    table: pd.DataFrame, points: pd.DataFrame, style_metric: str, others: Sequence[str], unit_words: str = "",
    what: str = "trade-offs",
) -> Figure:
    """Style similarity against each other metric: one point per contender with CIs on both axes, its Pareto front.

    `points` is `benchmark.tradeoffs(...)`: per contender `<metric>_mean/low/high` and `front_<metric>`. Points on the
    front are filled and joined by a step line; text alignment is better up, leakage better down.
    """
    from styleprobe.analysis.benchmark import CONTENDER
    from styleprobe.analysis.load import metric_role

    if points.empty:
        raise AnalysisError("benchmark trade-off: no contender has every metric of the figure; score the table first")
    cols = min(len(others), 2)  # two panels a row: more (the quality scores) wrap onto further rows
    rows = -(-len(others) // cols)
    fig = _figure(3.9 * rows if rows == 1 else 3.2 * rows + 1.2)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for spare in axes[len(others):]:
        spare.set_visible(False)
    colors = _contender_colors(list(points[CONTENDER]))
    for ax, metric in zip(axes, others):
        for _, p in points.iterrows():
            name, on_front = str(p[CONTENDER]), bool(p[f"front_{metric}"])
            x, y = p[f"{style_metric}_mean"], p[f"{metric}_mean"]
            ax.errorbar(x, y, xerr=[[x - p[f"{style_metric}_low"]], [p[f"{style_metric}_high"] - x]],
                        yerr=[[y - p[f"{metric}_low"]], [p[f"{metric}_high"] - y]], fmt="o", markersize=4.5,
                        color=colors[name], markerfacecolor=colors[name] if on_front else "white", elinewidth=0.7,
                        capsize=1.5)
        front = points[points[f"front_{metric}"]].sort_values(f"{style_metric}_mean")
        if len(front) > 1:
            ax.plot(front[f"{style_metric}_mean"], front[f"{metric}_mean"], color="black", linewidth=0.6, linestyle="--",
                    drawstyle="steps-post" if metric_role(table, metric).sign >= 0 else "steps-pre", zorder=0)
        role = metric_role(table, metric)
        better = f"{role.better} is better" if role.has_direction else "no better side"
        ax.set_xlabel(_label(table, style_metric, "", 44) + "\n(higher is better)")
        ax.set_ylabel(_label(table, metric, "", 32) + f"\n({better})")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", markersize=4.5, color=c, label=n) for n, c in colors.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(points)), frameon=False,
               title="contender (filled: on that panel's Pareto front, joined by the dashed line)")
    fig.suptitle(_title(table, f"Method benchmark: {what} (means, CIs over {unit_words or 'units'})"))
    return fig


def _contender_colors(names: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


@paper
def benchmark_grid(
    table: pd.DataFrame, order: Sequence[str], prompt: str | None = None, seed: int | None = None, max_rows: int = 8,
    thumb: int = 160,
) -> Figure:
    """Rows = style references (the reference first), columns = contenders; one prompt and seed throughout.

    A method that draws replicates (B-LoRA's training seeds) shows its first.
    """
    from PIL import Image

    from styleprobe.analysis.benchmark import CONTENDER

    require_columns(table, ["image_path", "results_dir", CONTENDER, "prompt", "seed", "reference_digest"], "benchmark grid")
    prompt = prompt if prompt is not None else str(min(table["prompt"].astype(str)))
    seed = seed if seed is not None else int(table["seed"].min())
    part = table[(table["prompt"].astype(str) == prompt) & (table["seed"] == seed)]
    if part.empty:
        raise AnalysisError(f"benchmark grid: no images for prompt {prompt!r} at seed {seed}; "
                            "set analysis.benchmark.grid.prompt / grid.seed to ones in the table")
    if "replicate" in part:
        part = part.sort_values("replicate", kind="stable")
    refs = part.drop_duplicates("reference_digest").sort_values("style").head(max_rows)
    cols = [c for c in order if (part[CONTENDER] == c).any()]
    fig = _figure(WIDTH / (len(cols) + 1) * len(refs) * 1.02 + 0.9, WIDTH)
    axes = fig.subplots(len(refs), len(cols) + 1, squeeze=False)
    for i, (_, ref) in enumerate(refs.iterrows()):
        _show(axes[i, 0], _reference_image(ref), thumb)
        _row_label(axes[i, 0], str(ref["style"]))
        for j, name in enumerate(cols, start=1):
            hit = part[(part["reference_digest"] == ref["reference_digest"]) & (part[CONTENDER] == name)]
            path = Path(hit["results_dir"].iloc[0]) / hit["image_path"].iloc[0] if len(hit) else None
            _show(axes[i, j], Image.open(path) if path and path.exists() else None, thumb)
    for j, name in enumerate(["reference", *cols]):
        axes[0, j].set_title(textwrap.fill(name, 16, break_long_words=False), fontsize=6)
    fig.suptitle(_title(table, f"Method benchmark: prompt '{prompt}', seed {seed}"))
    return fig
