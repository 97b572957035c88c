"""The time analysis: effects by pattern x window, the "when" answer's fixed-sequence search, and the time probe end
to end on the tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import on_tiny
from hydra import compose, initialize_config_dir

from styleprobe.analysis.stats import Bootstrap
from styleprobe.analysis.time_windows import full_window_rows, has_windows, when_answers, window_effects
from styleprobe.analysis.verdict import Criterion
from styleprobe.config import CONFIG_DIR
from styleprobe.run.sweep import prepare, run
from styleprobe.run.windows import FULL, expand_windows

CRIT = Criterion(candidates=("style",))
BOOT = Bootstrap(n_boot=400, seed=0)


def _share_from_start(end: float) -> float:
    return min(1.0, end / 0.6)  # [0, 0.6] already keeps everything; [0, 0.4] two thirds


def _share_to_end(start: float) -> float:
    return 1.0 if start <= 0.2 else 0.3  # [0.2, 1] keeps everything, later starts lose most


def _table(noise: float = 0.01) -> pd.DataFrame:
    """5 references x 5 prompts; `none` at 0, `all` at the full window 1 on style, its windows at the shares above;
    `style` at half of `all`'s effect everywhere. Leakage and text: all's windows leak 0.1 less than the full one."""
    rng = np.random.default_rng(0)
    windows = expand_windows(["full", "from_start:5", "to_end:5"])
    rows = []
    for ref in range(5):
        for prompt in range(5):
            unit = {"reference_digest": f"r{ref}", "prompt": f"p{prompt}", "seed": 0, "method": "ip_adapter"}
            rows.append({**unit, "injection": "none", "target": "none", **FULL.columns(10), "style_csd": 0.0,
                         "leak_clip": 0.5, "text_clip": 0.3})
            for injection, scale in (("all", 1.0), ("style", 0.5)):
                for w in windows:
                    share = 1.0 if w.full else _share_from_start(w.end) if w.start == 0 else _share_to_end(w.start)
                    rows.append({**unit, "injection": injection, "target": injection, **w.columns(10),
                                 "style_csd": scale * share + rng.normal(0, noise),
                                 "leak_clip": 0.6 - (0.0 if w.full else 0.1), "text_clip": 0.3})
    return pd.DataFrame(rows)


def test_the_when_answer_is_the_last_window_of_the_fixed_sequence_that_keeps_the_style():
    answers = {(a.injection, a.side): a for a in when_answers(_table(), CRIT, BOOT)}
    start, end = answers[("all", "from the start")], answers[("all", "from the end")]
    assert start.window == "0.00-0.60" and start.tested == 3  # [0, .8] and [0, .6] pass, [0, .4] fails: stop
    assert start.low >= 0.8 and start.share == pytest.approx(1.0, abs=0.02)
    assert end.window == "0.20-1.00" and end.tested == 2
    assert start.leak_diff[0] == pytest.approx(-0.1) and start.text_diff[0] == pytest.approx(0.0)
    assert answers[("style", "from the start")].window == "0.00-0.60"  # the same shares of a smaller effect


def test_no_window_is_named_when_the_first_shorter_one_fails():
    table = _table()
    table.loc[(table.injection == "all") & (table.window == "0.00-0.80"), "style_csd"] = 0.2
    (start,) = [a for a in when_answers(table, CRIT, BOOT) if a.injection == "all" and a.side == "from the start"]
    assert start.window == "" and start.tested == 1 and "no window shorter than the full one" in start.note


def test_window_effects_pair_every_window_with_none_at_the_full_window():
    effects = window_effects(_table(noise=0.0), ["style_csd", "leak_clip"], "none", BOOT)
    row = effects[(effects.injection == "all") & (effects.window == "0.00-0.40") & (effects.metric == "style_csd")].iloc[0]
    assert row["mean_diff"] == pytest.approx(0.4 / 0.6) and row["n_units"] == 25
    assert row["simul_low"] <= row["low"] <= row["mean_diff"] <= row["high"] <= row["simul_high"]
    assert set(effects["family"]) == {2 * 9}  # all and style x 9 windows (the full one too) per metric


def test_layer_analyses_read_the_full_window_rows():
    table = _table()
    assert has_windows(table) and not has_windows(full_window_rows(table))
    assert set(full_window_rows(table)["window"]) == {FULL.name}
    old = table.drop(columns=["window", "window_start", "window_end", "window_steps"])
    assert not has_windows(old) and full_window_rows(old) is old  # folders written before windows


def _cfg(root, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=on_tiny([f"results_root={root}", *overrides]))


def test_the_time_probe_plans_the_module_probe_crossed_with_twelve_windows(tmp_path):
    plan = prepare(_cfg(tmp_path, "experiment=time_probe", "model=toy", "metrics=[]"))
    windows = {it.window for it in plan.items}
    assert len(windows) == 12 and len({it.pattern.name for it in plan.items}) == 14
    assert len(plan.items) == 64 * (13 * 12 + 1)  # 8 x 8 units; none once, at the full window


def test_the_time_probe_on_the_tiny_model_writes_the_when_section(tmp_path, tiny_model):
    result = run(_cfg(tmp_path, "experiment=time_probe", "data=small", "sampler.steps=5",
                      "injection.patterns=[none,all,style,style_layout]", "metrics=[style_csd,leak_clip,text_clip]"))
    assert result.generated == 4 * (3 * 12 + 1)  # style_layout, style and all at 12 windows, none once; 2 x 2 units
    out = result.results_dir / "analysis"
    text = (out / "report.md").read_text()
    assert "## When does style enter? Denoising windows" in text and "fixed-sequence" in text
    assert "| `all` | `all` | - | from the start |" in text
    for name in ("window_heatmap", "window_curves"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    effects = pd.read_csv(out / "tables" / "window_effects.csv")
    assert set(effects["window"]) == {w.name for w in expand_windows(["full", "one_hot:window:5", "from_start:5",
                                                                      "to_end:5"])}
    aggregate = pd.read_csv(out / "tables" / "aggregate.csv")
    assert "window" not in aggregate or set(aggregate["window"].dropna()) <= {FULL.name}  # layers: full window only
    again = run(_cfg(tmp_path, "experiment=time_probe", "data=small", "sampler.steps=5",
                     "injection.patterns=[none,all,style,style_layout]", "metrics=[style_csd,leak_clip,text_clip]",
                     "analyze=false"))
    assert again.generated == 0
