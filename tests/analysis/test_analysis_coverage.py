"""Why intervals resample references and prompts: a coverage simulation of the crossed design, with a known mean.

Each simulated table is 8 style references x 8 prompts, value = mean + reference effect + prompt effect + noise (the
shape of a probe's Δ style: effects differ mostly between references). A 95% interval that speaks for new references
and prompts must cover the population mean in about 95% of tables. Resampling references and prompts independently
(`two_way`, the default) does; resampling cells as if they were independent (`cell`) does not, because cells that
share a reference share its effect. Fixed seeds: the figures are the same on every run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from styleprobe.analysis.stats import Bootstrap, aggregate, bootstrap_ci, design_codes

N_REF, N_PROMPT, MEAN = 8, 8, 0.3
TABLES, N_BOOT = 400, 400


def _crossed(rng: np.random.Generator, reference_sd: float, prompt_sd: float = 0.03, noise_sd: float = 0.05) -> np.ndarray:
    """One table's cell values, (N_REF x N_PROMPT) in row-major order."""
    ref = rng.normal(0, reference_sd, N_REF)[:, None]
    prompt = rng.normal(0, prompt_sd, N_PROMPT)[None, :]
    return (MEAN + ref + prompt + rng.normal(0, noise_sd, (N_REF, N_PROMPT))).ravel()


DESIGN = np.stack(np.meshgrid(np.arange(N_REF), np.arange(N_PROMPT), indexing="ij"), axis=-1).reshape(-1, 2)


def coverage(scheme: str, reference_sd: float, expanded: bool = True, seed: int = 0) -> float:
    """The share of simulated tables whose interval covers the true mean."""
    rng = np.random.default_rng(seed)
    hits = 0
    for t in range(TABLES):
        values = _crossed(rng, reference_sd)
        _, low, high = bootstrap_ci(values, boot=Bootstrap(N_BOOT, 0.95, t, scheme, expanded), design=DESIGN)
        hits += low <= MEAN <= high
    return hits / TABLES


@pytest.mark.parametrize("reference_sd", [0.05, 0.1])
def test_two_way_covers_near_nominal_and_cell_under_covers(reference_sd):
    """two_way: within [0.90, 0.99] at nominal 95%; cell: far below, which is why two_way is the default."""
    two_way, cell = coverage("two_way", reference_sd), coverage("cell", reference_sd)
    assert 0.90 <= two_way <= 0.99, two_way
    assert cell < 0.80, cell
    assert cell < two_way - 0.15


def test_without_a_reference_effect_cell_still_under_covers_through_the_shared_prompts():
    """No reference effect, but prompts still differ (sd 0.03): cells sharing a prompt are not independent either."""
    two_way, cell = coverage("two_way", 0.0), coverage("cell", 0.0)
    assert 0.90 <= two_way <= 0.99 and cell < 0.85, (two_way, cell)


def test_the_plain_percentile_interval_is_short_with_eight_references():
    """Why intervals are expanded: with 8 references the plain percentile interval misses the mean more often than
    5% of the time (it ignores that a spread estimated from 8 units is itself uncertain)."""
    plain, expanded = coverage("two_way", 0.1, expanded=False), coverage("two_way", 0.1)
    assert plain < 0.92 and expanded > plain + 0.03, (plain, expanded)


def test_the_default_aggregate_is_the_two_way_interval():
    """`aggregate` on a results-like table resamples references and prompts: the same interval as bootstrap_ci with
    the table's design under two_way, and wider than the cell interval when references differ."""
    rng = np.random.default_rng(7)
    values = _crossed(rng, 0.1)
    table = pd.DataFrame({"reference_digest": [f"r{r}" for r, _ in DESIGN], "prompt": [f"p{p}" for _, p in DESIGN],
                          "seed": 0, "injection": "all", "m": values, "m_model": "x"})
    boot = Bootstrap(n_boot=1000, seed=3)
    row = aggregate(table, "m", by=["injection"], boot=boot).iloc[0]
    expected = bootstrap_ci(values, boot=boot, design=design_codes(table))
    assert (row["mean"], row["low"], row["high"]) == pytest.approx(expected)
    assert (row["n_units"], row["n_references"], row["n_prompts"]) == (64, 8, 8)
    cell = aggregate(table, "m", by=["injection"], boot=Bootstrap(n_boot=1000, seed=3, scheme="cell")).iloc[0]
    assert row["high"] - row["low"] > 1.5 * (cell["high"] - cell["low"])


def test_one_reference_makes_two_way_the_one_way_bootstrap_over_prompts():
    """A single style reference: two_way resamples prompts only, exactly as `reference` resamples nothing."""
    values = np.random.default_rng(1).normal(0, 1, 8)
    one_ref = np.stack([np.zeros(8, dtype=int), np.arange(8)], axis=1)
    _, low, high = bootstrap_ci(values, boot=Bootstrap(500, seed=2), design=one_ref)
    assert low < values.mean() < high
    _, rlow, rhigh = bootstrap_ci(values, boot=Bootstrap(500, seed=2, scheme="reference"), design=one_ref)
    assert rlow == rhigh == pytest.approx(values.mean())  # one reference drawn: nothing varies


# ------------------------------------------------------------------------------- many comparisons

TARGETS = 6


def _joint_coverage(simultaneous: bool, tables: int = 200) -> float:
    """Share of tables in which every target's interval covers its true effect at once (targets' effects vary by
    reference too, each with its own true mean)."""
    from styleprobe.analysis.stats import simultaneous_band

    rng = np.random.default_rng(11)
    truth = np.linspace(-0.1, 0.15, TARGETS)
    hits = 0
    for t in range(tables):
        ref = rng.normal(0, 0.05, (N_REF, 1, TARGETS))
        prompt = rng.normal(0, 0.02, (1, N_PROMPT, TARGETS))
        values = (truth + ref + prompt + rng.normal(0, 0.05, (N_REF, N_PROMPT, TARGETS))).reshape(-1, TARGETS)
        boot = Bootstrap(N_BOOT, 0.95, t)
        if simultaneous:
            _, low, high, _ = simultaneous_band(values, boot, DESIGN)
        else:
            low, high = np.array([bootstrap_ci(values[:, j], boot=boot, design=DESIGN)[1:] for j in range(TARGETS)]).T
        hits += bool(((low <= truth) & (truth <= high)).all())
    return hits / tables


def test_simultaneous_band_covers_every_target_at_once_where_per_target_intervals_do_not():
    """Six targets ranked together: the max-statistic band covers all six true effects in about 95% of tables; six
    per-target 95% intervals cover all six markedly less often (each misses 5% of the time, on its own)."""
    joint, separate = _joint_coverage(True), _joint_coverage(False)
    assert 0.90 <= joint <= 0.995, joint
    assert separate < joint - 0.04, (separate, joint)


def test_holm_step_down_on_a_worked_example():
    """p = 0.01, 0.04, 0.03, 0.005 at 5%: 0.005 <= 0.05/4 and 0.01 <= 0.05/3 are rejected; 0.03 > 0.05/2 stops the
    procedure, so 0.03 and 0.04 stand (Bonferroni would reject only 0.005 and 0.01 too; unadjusted, all four)."""
    from styleprobe.analysis.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == [True, False, False, True]
    assert holm([0.01, np.nan, 0.02]).tolist() == [True, False, True]  # NaN is no member: 0.02 <= 0.05/1
    assert holm([0.2, 0.3]).tolist() == [False, False]


def test_bootstrap_p_agrees_with_the_interval_and_resolves_large_effects():
    """p < 5% where the expanded 95% interval excludes 0 (both rest on the same replicates and the same t widening),
    and a large effect gets a p far below what counting 2000 replicates could give (Holm needs 0.05 / m)."""
    from styleprobe.analysis.stats import bootstrap_p, effective_units, replicate_means

    rng = np.random.default_rng(5)
    agree = 0
    shifts = np.linspace(0.0, 0.08, 17)
    for shift in shifts:
        values = _crossed(rng, 0.05) - MEAN + shift
        boot = Bootstrap(2000, 0.95, 1)
        _, low, high = bootstrap_ci(values, boot=boot, design=DESIGN)
        p = bootstrap_p(replicate_means(values, boot, DESIGN)[:, 0], values.mean(), effective_units(DESIGN, 64, "two_way"), boot)
        agree += (p < 0.05) == (low > 0 or high < 0)
    assert agree >= len(shifts) - 1  # at most one borderline case where the replicates' tails are not normal
    values = _crossed(rng, 0.05) - MEAN + 0.5
    boot = Bootstrap(2000, 0.95, 1)
    assert bootstrap_p(replicate_means(values, boot, DESIGN)[:, 0], values.mean(), 8, boot) < 1e-5
