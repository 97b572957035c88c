"""The verdict, rankings and figures on synthetic tables whose answer is known (no model, no images)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from styleprobe.analysis import figures
from styleprobe.analysis.stats import Bootstrap
from styleprobe.analysis.verdict import Criterion, headline, judge, rank_by_style_effect
from styleprobe.errors import AnalysisError

MODULES = [
    "down_blocks.1.attentions.0", "down_blocks.2.attentions.1", "mid_block.attentions.0",
    "up_blocks.0.attentions.1", "up_blocks.1.attentions.0",
]
MODELS = {"style_csd": "CSD ViT-L test", "leak_clip": "CLIP L/14 test", "text_clip": "CLIP L/14 test"}
BOOT = Bootstrap(n_boot=1000, level=0.95, seed=0)


def _condition(name: str, layers: list[str], sweep: str = "preset", target: str = "") -> dict:
    return {"injection": name, "layers": json.dumps(layers), "layer_scales": json.dumps({m: 1.0 for m in layers}),
            "sweep": sweep, "target": target}


CONDITIONS = [
    _condition("none", []),
    _condition("all", MODULES),
    _condition("style_layout", ["down_blocks.2.attentions.1", "up_blocks.0.attentions.1"]),
    *[_condition(f"one_hot:{m}", [m], "one_hot_module", m) for m in MODULES],
]


def _table(means: dict[str, dict[str, float]], n_refs: int = 6, n_prompts: int = 5, noise: float = 0.01,
           subtractions: tuple[float, ...] = (0.0,), seed: int = 0) -> pd.DataFrame:
    """Rows for every condition x unit: metric = condition mean + a unit offset shared by all conditions + noise.

    `means[metric][injection]` sets a condition's mean (default: the metric's `none` value).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_refs):
        for p in range(n_prompts):
            offsets = {m: rng.normal(0, 0.05) for m in MODELS}  # between-unit spread, shared by conditions
            for s in subtractions:
                for cond in CONDITIONS:
                    row = {**cond, "model": "toy", "scale": 1.0, "subtraction": s, "reference_digest": f"r{r}",
                           "style": f"style{r}", "prompt": f"prompt {p}", "seed": 0}
                    for metric in MODELS:
                        mean = means[metric].get(cond["injection"], means[metric]["none"])
                        row[metric] = mean + offsets[metric] + rng.normal(0, noise)
                        row[f"{metric}_model"] = MODELS[metric]
                    rows.append(row)
    return pd.DataFrame(rows)


# InstantStyle's claim, planted: the style module carries ~90% of all's style effect with less leakage, better text.
PLANTED = {
    "style_csd": {"none": 0.30, "all": 0.70, "one_hot:up_blocks.0.attentions.1": 0.66, "style_layout": 0.68},
    "leak_clip": {"none": 0.20, "all": 0.40, "one_hot:up_blocks.0.attentions.1": 0.25, "style_layout": 0.27},
    "text_clip": {"none": 0.30, "all": 0.20, "one_hot:up_blocks.0.attentions.1": 0.27, "style_layout": 0.26},
}
NULL = {m: {"none": v["none"]} for m, v in PLANTED.items()}  # every condition the same


def _by_candidate(verdicts):
    return {v.candidate: v for v in verdicts}


def test_verdict_says_yes_for_a_planted_effect():
    verdicts = _by_candidate(judge(_table(PLANTED), Criterion(), BOOT))
    style, both = verdicts["style"], verdicts["style_layout"]
    assert style.answer and both.answer, headline(list(verdicts.values()))
    assert style.source == "one_hot:up_blocks.0.attentions.1"  # found by its layers, not by name
    kept = style.checks[0]
    assert kept.name == "style kept" and kept.estimate == pytest.approx(0.9, abs=0.03)
    assert kept.low >= 0.8 and kept.n_units == 30
    leak, text = style.checks[1], style.checks[2]
    assert leak.estimate == pytest.approx(-0.15, abs=0.01) and leak.high < 0
    assert text.estimate == pytest.approx(0.07, abs=0.01) and text.low > 0


def test_verdict_says_no_without_an_effect():
    verdicts = judge(_table(NULL), Criterion(), BOOT)
    assert verdicts and not any(v.answer for v in verdicts)
    for v in verdicts:
        assert "does not raise style_csd" in v.checks[0].note  # no style effect to keep a share of
        assert "YES" not in headline([v])


def test_verdict_thresholds_are_applied_and_printed():
    strict = Criterion(style_fraction=0.99)
    verdicts = _by_candidate(judge(_table(PLANTED), strict, BOOT))
    assert not verdicts["style"].answer
    assert verdicts["style"].checks[0].note.startswith("contradicted")  # ~0.9 with a CI well below 0.99
    assert verdicts["style"].checks[1].passed and verdicts["style"].checks[2].passed
    assert "lower CI bound >= 0.99" in "\n".join(strict.describe())
    big_drop = Criterion(min_leak_drop=0.5)
    assert not _by_candidate(judge(_table(PLANTED), big_drop, BOOT))["style"].answer
    assert "upper CI bound < -0.5" in "\n".join(big_drop.describe())


def test_more_leakage_is_a_no_even_with_style_kept():
    leaky = {m: dict(v) for m, v in PLANTED.items()}
    leaky["leak_clip"]["one_hot:up_blocks.0.attentions.1"] = 0.45
    verdict = _by_candidate(judge(_table(leaky), Criterion(), BOOT))["style"]
    assert not verdict.answer and verdict.checks[0].passed
    assert [r.split(":")[0] for r in verdict.reasons()] == ["leakage lower"]


def test_raw_ratio_when_there_is_no_baseline():
    verdict = _by_candidate(judge(_table(PLANTED), Criterion(baseline=None), BOOT))["style"]
    assert verdict.checks[0].estimate == pytest.approx(0.66 / 0.70, abs=0.02)
    assert "raw ratio" in Criterion(baseline=None).describe()[0]


def test_verdict_per_setting_and_missing_conditions():
    table = _table(PLANTED, n_refs=3, n_prompts=3, subtractions=(0.0, 0.5))
    verdicts = judge(table, Criterion(), BOOT)
    assert sorted({v.setting["subtraction"] for v in verdicts}) == [0.0, 0.5] and len(verdicts) == 4
    with pytest.raises(AnalysisError, match="no `all` rows.*add all to injection.patterns"):
        judge(table[table.injection != "all"], Criterion(), BOOT)
    only = judge(table, Criterion(candidates=("style_only_missing",)), BOOT)
    assert not only[0].answer and "no rows for `style_only_missing`" in only[0].reasons()[0]
    with pytest.raises(AnalysisError, match="text_clip"):
        judge(table.drop(columns=["text_clip"]), Criterion(), BOOT)
    with pytest.raises(AnalysisError, match="unknown verdict setting style_fractoin"):
        Criterion.from_mapping({"style_fractoin": 0.9})


def _two_methods(ip_subtractions=(0.0,), sa_norms=(True,)) -> pd.DataFrame:
    """IP-Adapter rows (scale, subtraction) with the planted effect, StyleAligned rows (its own knob, no subtraction)
    without one, on the same units; each method with its own sampler, as in a real multi-method sweep."""
    ip = _table(PLANTED, n_refs=3, n_prompts=3, subtractions=ip_subtractions).assign(
        method="ip_adapter", steps=4, guidance=5.0, knob_columns='["scale", "subtraction"]')
    parts = [ip]
    for i, norms in enumerate(sa_norms):
        sa = _table(NULL, n_refs=3, n_prompts=3, seed=1 + i).drop(columns=["scale", "subtraction"]).assign(
            method="style_aligned", steps=50, guidance=10.0, share_group_norm=norms,
            knob_columns='["share_group_norm", "shared_score_shift"]', shared_score_shift=0.69)
        parts.append(sa)
    return pd.concat(parts, ignore_index=True)


def test_methods_are_judged_apart_and_none_of_their_rows_is_dropped():
    from styleprobe.analysis.conditions import split_by_setting
    from styleprobe.analysis.load import varying_conditions

    table = _two_methods(ip_subtractions=(0.0, 0.5))
    # steps and guidance follow from the method: they are not conditions of their own
    assert varying_conditions(table) == ["method", "injection", "subtraction"]
    parts = split_by_setting(table)
    assert sum(len(part) for _, part in parts) == len(table)  # StyleAligned rows (no subtraction) are kept
    verdicts = judge(table, Criterion(), BOOT)
    answers = {(v.setting["method"], v.title(), v.candidate): v.answer for v in verdicts}
    assert len(verdicts) == 6  # (ip_adapter x 2 strengths + style_aligned) x 2 candidates
    assert all(a for (m, _, _), a in answers.items() if m == "ip_adapter")
    assert not any(a for (m, _, _), a in answers.items() if m == "style_aligned")
    sa = [v for v in verdicts if v.setting["method"] == "style_aligned"]
    assert all(c.n_units == 9 for v in sa for c in v.checks)  # its rows are found (subtraction NaN selects them)
    sa_titles = [t for (m, t, _), _ in answers.items() if m == "style_aligned"]
    assert sa_titles == ["style (method=style_aligned)", "style_layout (method=style_aligned)"]  # no subtraction=nan


def test_a_swept_knob_of_one_method_is_a_condition():
    from styleprobe.analysis.load import varying_conditions
    from styleprobe.analysis.stats import aggregate

    table = _two_methods(sa_norms=(True, False))
    assert varying_conditions(table) == ["method", "injection", "share_group_norm"]
    agg = aggregate(table, "style_csd", boot=BOOT)
    sa = agg[agg["method"] == "style_aligned"]
    assert sorted(sa["share_group_norm"].astype(str).unique()) == ["False", "True"]
    assert (sa["n_units"] == 9).all() and (agg[agg["method"] == "ip_adapter"]["n_units"] == 9).all()


def test_probe_figures_refuse_to_mix_methods():
    table = _two_methods()
    with pytest.raises(AnalysisError, match="module bars: the table holds 2 settings .method=ip_adapter; method=style_aligned"):
        figures.module_bars(table, list(MODELS), boot=BOOT)
    fig = figures.module_bars(table[table.method == "style_aligned"], list(MODELS), boot=BOOT, setting={"method": "style_aligned"})
    assert "method style_aligned" in fig._suptitle.get_text()
    both = figures.by_setting(figures.module_bars, table, list(MODELS), boot=BOOT)  # what the notebooks show
    assert ["method ip_adapter" in f._suptitle.get_text() for f in both] == [True, False]
    assert ["method style_aligned" in f._suptitle.get_text() for f in both] == [False, True]


def test_the_tradeoff_figure_marks_each_method(tmp_path):
    fig = figures.tradeoff_scatter(_two_methods(), "style_csd", ["text_clip", "leak_clip"], "none", BOOT)
    legend = fig.legends[0]
    assert legend.get_title().get_text() == "method"
    assert [t.get_text() for t in legend.get_texts()] == ["ip_adapter", "style_aligned"]
    markers = {line.get_marker() for ax in fig.axes for line in ax.lines if line.get_marker() not in (None, "None", "")}
    assert {"o", "s"} <= markers


def test_ranking_puts_the_planted_module_first_and_marks_instantstyle():
    ranking = rank_by_style_effect(_table(PLANTED), Criterion(), BOOT)["one_hot_module"]
    assert ranking.iloc[0]["target"] == "up_blocks.0.attentions.1" and ranking.iloc[0]["instantstyle"] == "style"
    assert ranking.iloc[0]["style_diff"] == pytest.approx(0.36, abs=0.01)
    assert list(ranking["rank"]) == list(range(1, len(MODULES) + 1))
    assert ranking.set_index("target").loc["down_blocks.2.attentions.1", "instantstyle"] == "layout"
    assert (ranking["against"] == "none").all() and (ranking["n_units"] == 30).all()


def test_leave_one_out_ranks_the_costliest_removal_first():
    """Leave-one-out targets are ranked by the style lost against `all`, most lost first."""
    table = _table(PLANTED, n_refs=3, n_prompts=3)
    loo = []
    for i, module in enumerate(MODULES):
        part = table[table.injection == "all"].copy()
        part["injection"], part["sweep"], part["target"] = f"leave_one_out:{module}", "leave_one_out_module", module
        part["style_csd"] -= 0.3 if module == "up_blocks.0.attentions.1" else 0.01 * i
        loo.append(part)
    ranking = rank_by_style_effect(pd.concat([table, *loo], ignore_index=True), Criterion(), BOOT)["leave_one_out_module"]
    assert (ranking["against"] == "all").all()
    assert ranking.iloc[0]["target"] == "up_blocks.0.attentions.1" and ranking.iloc[0]["style_diff"] == pytest.approx(-0.3)
    assert list(ranking["style_diff"]) == sorted(ranking["style_diff"])
    assert ranking.iloc[-1]["target"] == MODULES[0] and ranking.iloc[-1]["style_diff"] == pytest.approx(0.0, abs=1e-12)


def _flat(label: str) -> str:
    return " ".join(label.split())  # labels are wrapped to fit


def _png_ok(path) -> tuple[int, int]:
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        return im.size


def test_figures_are_written_with_labels_naming_metric_and_model(tmp_path):
    table = _table(PLANTED, n_refs=3, n_prompts=3)
    metrics = list(MODELS)
    fig = figures.module_bars(table, metrics, boot=BOOT)
    assert "style_csd (cosine; CSD ViT-L test)" in _flat(fig.axes[0].get_ylabel())
    ticks = [t.get_text() for t in fig.axes[len(metrics) - 1].get_xticklabels()]  # shared x: labels on the last
    assert ticks == MODULES  # UNet order: down, mid, up
    paths = figures.save(fig, tmp_path, "bars")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    width, _ = _png_ok(paths[0])
    assert width == pytest.approx(figures.WIDTH * 200, abs=2)  # paper width at 200 dpi
    assert paths[1].read_bytes().startswith(b"%PDF") and paths[1].stat().st_size > 1000
    scatter = figures.tradeoff_scatter(table, "style_csd", ["text_clip", "leak_clip"], boot=BOOT)
    assert _flat(scatter.axes[0].get_xlabel()) == "Δ vs none: style_csd (cosine; CSD ViT-L test)"
    assert _flat(scatter.axes[0].get_ylabel()) == "Δ vs none: text_clip (cosine; CLIP L/14 test)"
    _png_ok(figures.save(scatter, tmp_path, "scatter")[0])


def test_subtraction_curves_and_layer_heatmap(tmp_path):
    table = _table(PLANTED, n_refs=2, n_prompts=2, subtractions=(0.0, 0.5, 1.0))
    curves = figures.subtraction_curves(table, list(MODELS), boot=BOOT)
    assert {line.get_label() for line in curves.axes[0].get_lines()} >= {"all", "none", "style_layout"}
    _png_ok(figures.save(curves, tmp_path, "curves")[0])
    layers = table.copy()
    layers = layers[~layers.injection.str.startswith("one_hot:")]
    extra = []
    for i, module in enumerate(MODULES):
        for t in range(2):
            target = f"{module}.transformer_blocks.{t}"
            part = layers[layers.injection == "none"].copy()
            part["injection"], part["sweep"], part["target"] = f"one_hot:{target}", "one_hot_layer", target
            part["style_csd"] += 0.01 * (i + t)
            extra.append(part)
    layers = pd.concat([layers, *extra], ignore_index=True)
    layers = layers[layers.subtraction == 0.0]
    heat = figures.layer_heatmap(layers, list(MODELS), boot=BOOT)
    image = heat.axes[0].get_images()[0].get_array()
    assert image.shape == (len(MODULES), 2)
    assert image[-1, 1] == pytest.approx(0.01 * (len(MODULES) - 1 + 1), abs=1e-9)  # last module, layer 1
    _png_ok(figures.save(heat, tmp_path, "heat")[0])
    with pytest.raises(AnalysisError, match="no one_hot:layer.*experiment=layer_probe_layers"):
        figures.layer_heatmap(table, list(MODELS), boot=BOOT)
    with pytest.raises(AnalysisError, match="several subtraction strengths"):
        figures.subtraction_curves(table[table.subtraction == 0.0], list(MODELS), boot=BOOT)


def test_figures_refuse_an_empty_table_or_a_missing_metric():
    table = _table(PLANTED, n_refs=2, n_prompts=2)
    with pytest.raises(AnalysisError, match="empty"):
        figures.module_bars(table.iloc[0:0], list(MODELS), boot=BOOT)
    with pytest.raises(AnalysisError, match="no column style_dino"):
        figures.module_bars(table, ["style_dino"], boot=BOOT)
