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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from styleprobe.analysis.conditions import (
    INSTANTSTYLE_MODULES,
    describe_setting,
    is_instantstyle,
    layer_index,
    module_of,
    preset_rows,
    split_by_setting,
    unet_sort_key,
)
from styleprobe.analysis.load import (
    is_machinery_check,
    is_toy_world,
    method_names,
    metric_label,
    model_names,
    require_columns,
    varying_conditions,
)
from styleprobe.analysis.stats import Bootstrap, aggregate, paired_differences, select
from styleprobe.errors import AnalysisError
from styleprobe.layers import PRESETS

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
    return textwrap.fill(prefix + metric_label(table, metric), width)


def _title(table: pd.DataFrame, what: str, setting: Mapping[str, Any] | None = None) -> str:
    where = describe_setting({k: v for k, v in (setting or {}).items() if k not in ("model", "method")})  # named next
    models = ", ".join(model_names(table)) or "?"
    methods = ", ".join(method_names(table)) or "?"
    head = textwrap.fill(f"{what}; model {models}, method {methods}" + (f" ({where})" if where else ""), 110)
    if is_toy_world(table):
        return head + "\nTOY WORLD: findings about the toy, not about SDXL"
    return head + ("\nMACHINERY CHECK: tiny random model and scorers, numbers are not science" if is_machinery_check(table) else "")


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
    boot: Bootstrap = Bootstrap(),
) -> Figure:
    """Style similarity against text alignment and against leakage: one point per condition, CIs on both axes.

    With a `baseline` condition in the table, both axes are paired effects against it (the spread between
    units cancels, so the CIs show what separates conditions); otherwise raw means.
    """
    require_columns(table, [style_metric, *others, "injection"], "trade-off scatter")
    by = varying_conditions(table)
    paired = bool(baseline) and (table["injection"] == baseline).any()

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
    for ax, metric in zip(axes, others):
        both = x.merge(summary(metric), on=by, suffixes=("_x", "_y"))
        for _, p in both.iterrows():
            name = str(p["injection"])
            target = name.split(":", 1)[1] if ":" in name else ""
            kind = is_instantstyle(target) if target else ""
            labelled = name in PRESETS or bool(kind)
            color = COLORS[kind] if kind else ("black" if name in PRESETS else COLORS[""])
            marker = MARKERS[methods.index(str(p["method"])) % len(MARKERS)] if methods else "o"
            ax.errorbar(p["mean_x"], p["mean_y"], xerr=[[p["mean_x"] - p["low_x"]], [p["high_x"] - p["mean_x"]]],
                        yerr=[[p["mean_y"] - p["low_y"]], [p["high_y"] - p["mean_y"]]], fmt=marker,
                        markersize=4 if labelled else 2.5, color=color, elinewidth=0.6, capsize=1.5,
                        alpha=1.0 if labelled else 0.6)
            if labelled:  # the marker says the method; the label says the rest
                extra = describe_setting({c: p[c] for c in by if c not in ("injection", "method")})
                ax.annotate((target or name) + (f" ({extra})" if extra else ""), (p["mean_x"], p["mean_y"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points", color=color)
        if paired:
            ax.axhline(0, color="black", linewidth=0.4)
            ax.axvline(0, color="black", linewidth=0.4)
        ax.set_xlabel(_label(table, style_metric, prefix, 44))
        ax.set_ylabel(_label(table, metric, prefix, 40))
    for i, name in enumerate(methods):
        axes[0].plot([], [], MARKERS[i % len(MARKERS)], color="black", markersize=4, label=name)
    if methods:
        fig.legend(loc="outside lower center", ncols=len(methods), frameon=False, title="method")
    what = "paired effects" if paired else "means"
    fig.suptitle(_title(table, f"Trade-offs, one point per condition ({what}, {boot.level:.0%} CIs; "
                               "red/blue: InstantStyle's style/layout module)"))
    return fig


@paper
def image_grid(
    table: pd.DataFrame, rows: Sequence[str], columns: str = "style", max_columns: int = 6,
    thumb: int = 192, setting: Mapping[str, Any] | None = None,
) -> Figure:
    """Images with conditions as rows and styles (or prompts) as columns; the first row shows the references.

    The other unit columns are fixed to their first value (named in the title). Conditions not in the table
    are skipped; `style` and `style_layout` are found in a module probe by their layers.
    """
    from PIL import Image

    require_columns(table, ["image_path", "results_dir", "injection", "prompt", "seed", "style"], "image grid")
    if columns not in ("style", "prompt"):
        raise _missing("image grid", f"columns={columns!r}", "grid.columns=style or grid.columns=prompt")
    fixed = {"prompt": table["prompt"].iloc[0], "seed": table["seed"].min()}
    if columns == "prompt":
        fixed = {"reference_digest": table["reference_digest"].iloc[0], "seed": table["seed"].min()}
    part = table[select(table, fixed)]
    cols = list(dict.fromkeys(part[columns].astype(str)))[:max_columns]
    conds = []
    for name in rows:
        mask, source = preset_rows(part, name)
        if mask.any():
            conds.append((name if source == name else f"{name}\n(= {source.split(':', 1)[-1]})", part[mask]))
    if not conds:
        raise _missing("image grid", f"any of the conditions {', '.join(rows)}", "grid.rows=[...] naming injections in the table")
    fig = _figure(WIDTH / len(cols) * (len(conds) + 1) * 0.95 + 0.5, WIDTH)
    axes = fig.subplots(len(conds) + 1, len(cols), squeeze=False)
    first = part.drop_duplicates(columns)
    first = first.set_index(first[columns].astype(str))
    for j, col in enumerate(cols):
        show_ref = columns == "style" or j == 0  # with prompts as columns, one reference serves every column
        _show(axes[0, j], _reference_image(first.loc[col]) if show_ref else None, thumb, blank=not show_ref)
        axes[0, j].set_title(textwrap.fill(col, max(12, 110 // len(cols))), fontsize=6.5)
    _row_label(axes[0, 0], "reference")
    for i, (label, rows_) in enumerate(conds, start=1):
        for j, col in enumerate(cols):
            hit = rows_[rows_[columns].astype(str) == col]
            path = Path(hit["results_dir"].iloc[0]) / hit["image_path"].iloc[0] if len(hit) else None
            _show(axes[i, j], Image.open(path) if path and path.exists() else None, thumb)
        _row_label(axes[i, 0], label)
    what = f"prompt '{fixed.get('prompt')}'" if columns == "style" else f"reference {part['style'].iloc[0]}"
    fig.suptitle(_title(table, f"Images: {what}, seed {fixed['seed']}", setting))
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
        raise _missing(what, f"`{name}` rows", f"add {name} to injection.patterns")


def _missing(what: str, lacking: str, fix: str) -> Exception:
    return AnalysisError(f"{what}: the table has no {lacking}; {fix}")


# the method benchmark ---------------------------------------------------------------------------------------------
@paper
def benchmark_tradeoff(
    table: pd.DataFrame, points: pd.DataFrame, style_metric: str, others: Sequence[str], unit_words: str = "",
) -> Figure:
    """Style similarity against each other metric: one point per contender with CIs on both axes, its Pareto front.

    `points` is `benchmark.tradeoffs(...)`: per contender `<metric>_mean/low/high` and `front_<metric>`. Points on the
    front are filled and joined by a step line; text alignment is better up, leakage better down.
    """
    from styleprobe.analysis.benchmark import CONTENDER
    from styleprobe.analysis.load import metric_role

    if points.empty:
        raise AnalysisError("benchmark trade-off: no contender has every metric of the figure; score the table first")
    fig = _figure(3.9)
    axes = fig.subplots(1, len(others), squeeze=False)[0]
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
        ax.set_xlabel(_label(table, style_metric, "", 44) + " (higher is better)")
        ax.set_ylabel(_label(table, metric, "", 32) + f"\n({better})")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", markersize=4.5, color=c, label=n) for n, c in colors.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(points)), frameon=False,
               title="contender (filled: on that panel's Pareto front, joined by the dashed line)")
    fig.suptitle(_title(table, f"Method benchmark: trade-offs (means, CIs over {unit_words or 'units'})"))
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
