"""A layer set's numbers are the verdict's numbers: the search decides on what the report judges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_analysis_verdict import BOOT, PLANTED, _table

from styleprobe.analysis.layer_search import pareto_front
from styleprobe.analysis.set_scores import Objective, SetScore, best, score_set
from styleprobe.analysis.verdict import Criterion, judge


def _keyed():
    table = _table(PLANTED)
    table["key"] = [f"k{i}" for i in range(len(table))]
    return table


def _keys(table, injection):
    return set(table.loc[table["injection"] == injection, "key"])


def test_a_sets_style_kept_leakage_and_text_are_the_verdicts():
    table, crit = _keyed(), Criterion()
    name = "one_hot:up_blocks.0.attentions.1"
    score = score_set(table, name, ["up_blocks.0.attentions.1"], _keys(table, name), _keys(table, "all"),
                      _keys(table, "none"), crit, Objective(), BOOT)
    checks = {c.name: c for c in next(v for v in judge(table, crit, BOOT) if v.candidate == "style").checks}
    kept, leak, text = checks["style kept"], checks["leakage lower"], checks["text followed better"]
    assert (score.style_kept, score.style_kept_low, score.style_kept_high) == pytest.approx((kept.estimate, kept.low, kept.high))
    assert (score.leak, score.leak_low, score.leak_high) == pytest.approx((leak.estimate, leak.low, leak.high))
    assert (score.text, score.text_low, score.text_high) == pytest.approx((text.estimate, text.low, text.high))
    assert score.n_units == 30 and score.admissible  # it leaks less than all
    assert score.objective == score.style_kept and score.keeps(0.8) and not score.keeps(0.99)


def test_all_keeps_everything_and_leakage_above_alls_is_not_admissible():
    table, crit = _keyed(), Criterion()
    whole = score_set(table, "all", ["x"], _keys(table, "all"), _keys(table, "all"), _keys(table, "none"), crit, Objective(), BOOT)
    assert (whole.style_kept, whole.style_kept_low, whole.style_kept_high) == (1.0, 1.0, 1.0) and whole.admissible
    table.loc[table["injection"] == "style_layout", "leak_clip"] += 0.5  # now it leaks more than all
    leaky = score_set(table, "style_layout", ["a", "b"], _keys(table, "style_layout"), _keys(table, "all"),
                      _keys(table, "none"), crit, Objective(), BOOT)
    assert leaky.leak > 0 and not leaky.admissible
    tolerant = score_set(table, "style_layout", ["a", "b"], _keys(table, "style_layout"), _keys(table, "all"),
                         _keys(table, "none"), crit, Objective(max_leak_rise=1.0), BOOT)
    assert tolerant.admissible
    scalar = score_set(table, "style_layout", ["a", "b"], _keys(table, "style_layout"), _keys(table, "all"),
                       _keys(table, "none"), crit, Objective("scalarised", leak_weight=2.0), BOOT)
    assert scalar.admissible and scalar.objective == pytest.approx(scalar.style_gain - 2.0 * scalar.leak)


def test_best_prefers_admissible_sets_and_says_when_none_is():
    a = SetScore("a", ["a"], style_kept=0.9, objective=0.9, admissible=False)
    b = SetScore("b", ["b"], style_kept=0.5, objective=0.5, admissible=True)
    c = SetScore("c", ["c"], style_kept=0.5, objective=0.5, admissible=True)
    assert best([a, b, c]) == (b, True)  # the first of a tie, in candidate order
    assert best([a, SetScore("d", ["d"], objective=0.95, admissible=False)])[0].name == "d"
    assert best([a])[1] is False
    restored = SetScore.from_record(SetScore("e", ["e"], style_kept=math.nan, objective=0.1).as_record())
    assert math.isnan(restored.style_kept) and restored.objective == 0.1


def test_pareto_front_keeps_the_non_dominated_sets():
    style = np.array([1.0, 0.8, 0.8, 0.5, np.nan, 0.9])
    leak = np.array([0.1, 0.0, 0.05, 0.0, 0.0, 0.2])
    assert pareto_front(style, leak).tolist() == [True, True, False, False, False, False]
