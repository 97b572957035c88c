"""Analysis on synthetic tables with known answers: bootstrap CIs, unit-level aggregates, paired differences,
loading results folders and finding named conditions. No models, no generation."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from styleprobe.analysis.conditions import preset_rows, unet_sort_key, unet_sorted
from styleprobe.analysis.load import load_results, metric_columns, metric_label, require_columns, varying_conditions
from styleprobe.analysis.stats import Bootstrap, aggregate, bootstrap_ci, paired_differences, paired_units
from styleprobe.errors import AnalysisError
from styleprobe.run.store import Store

# ----------------------------------------------------------------------------------------------- helpers

UNIT = ("reference_digest", "prompt", "seed")


def _units(n: int) -> list[tuple[str, str, int]]:
    """n distinct cells (reference x prompt, seed 0), in a fixed order: 8 prompts per reference."""
    grid = itertools.product([f"ref{r}" for r in range(8)], [f"prompt {p}" for p in range(8)], [0])
    return list(itertools.islice(grid, n))


def _table(records, **constant) -> pd.DataFrame:
    """A results-like table: `records` are dicts (unit given as `unit=(ref, prompt, seed)`), defaults filled in."""
    defaults = {"model": "sdxl", "injection": "all", "subtraction": 0.0, "scale": 1.0, "m_model": "probe-model"}
    rows = []
    for rec in records:
        rec = dict(rec)
        ref, prompt, seed = rec.pop("unit")
        rows.append({**defaults, **constant, "reference_digest": ref, "prompt": prompt, "seed": seed, **rec})
    return pd.DataFrame(rows)


def _exact_bootstrap_quantiles(data, statistic, level: float, n_boot: int) -> tuple[float, float]:
    """The percentile-bootstrap limits as n_boot -> infinity, by enumerating all n**n equally likely resamples.

    Non-finite replicates are dropped (as bootstrap_ci does). The quantile of the discrete distribution is its
    inverse CDF. The test's premise is checked too: each requested quantile lies more than 5 Monte-Carlo
    standard deviations (of the empirical CDF at n_boot replicates) away from the CDF steps around it, so the
    sampled quantile must land on the same atom and agree to float precision.
    """
    data = np.asarray(data, dtype=np.float64)
    data = data[:, None] if data.ndim == 1 else data
    n = len(data)
    idx = np.array(list(itertools.product(range(n), repeat=n)))
    with np.errstate(divide="ignore", invalid="ignore"):
        reps = statistic(data[idx].mean(axis=1))
    finite = np.isfinite(reps)
    reps = np.round(reps[finite], 12)
    n_eff = n_boot * finite.mean()  # expected number of finite replicates bootstrap_ci keeps
    tail = (1 - level) / 2
    out = []
    for q in (tail, 1 - tail):
        values = np.unique(reps)
        cdf = np.array([(reps <= v).mean() for v in values])
        i = int(np.searchsorted(cdf, q))  # first atom whose CDF reaches q
        below, at = (cdf[i - 1] if i else 0.0), cdf[i]
        for p, gap in ((below, q - below), (at, at - q)):
            assert gap > 5 * np.sqrt(p * (1 - p) / n_eff) or p in (0.0, 1.0), (level, q, p)
        out.append(float(values[i]))
    return out[0], out[1]


def _ratio(means: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return means[:, 0] / means[:, 1]


# ----------------------------------------------------------------------------------------------- bootstrap_ci
# The plain percentile interval (expanded=False) has exact answers to check against; the expansion is tested below.


@pytest.mark.parametrize("level", [0.95, 0.9, 0.6])
def test_bootstrap_ci_matches_exact_enumeration_of_a_tiny_sample(level):
    """The percentile CI of [1, 2, 4] equals the quantiles of the exact 27-resample distribution of the mean."""
    values = np.array([1.0, 2.0, 4.0])
    n_boot = 40_000
    want_low, want_high = _exact_bootstrap_quantiles(values, lambda m: m[:, 0], level, n_boot)
    estimate, low, high = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=n_boot, level=level, seed=3))
    assert estimate == pytest.approx(7 / 3, abs=1e-12)
    # Atoms are at least 1/3 apart, and the premise check above puts each quantile deep inside one atom.
    assert low == pytest.approx(want_low, abs=1e-9)
    assert high == pytest.approx(want_high, abs=1e-9)


def test_bootstrap_exact_quantiles_differ_between_levels():
    """Guards the enumeration test itself: the three levels ask for different atoms, so it can tell them apart."""
    values = np.array([1.0, 2.0, 4.0])
    got = {level: _exact_bootstrap_quantiles(values, lambda m: m[:, 0], level, 40_000) for level in (0.95, 0.9, 0.6)}
    assert got[0.95] == pytest.approx((1.0, 4.0))
    assert got[0.9] == pytest.approx((4 / 3, 10 / 3))
    assert got[0.6] == pytest.approx((5 / 3, 3.0))


def test_bootstrap_ci_of_a_large_normal_sample_is_the_normal_interval():
    """n=400 normal values: the CI is mean +- 1.96 sd/sqrt(n) (sd with ddof=0) within 10% of the half width."""
    values = np.random.default_rng(7).normal(5.0, 2.0, size=400)
    estimate, low, high = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=4000, seed=1))
    half = 1.96 * values.std(ddof=0) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.1 * half)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_bootstrap_estimate_is_the_plain_mean():
    """The estimate is the mean of the data, not a bootstrap average."""
    values = np.array([0.3, 9.0, -2.5, 4.25, 1.0])
    for seed in range(3):
        estimate, _, _ = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=50, seed=seed))
        assert estimate == values.mean()


def test_bootstrap_seed_makes_the_interval_repeatable():
    """The same seed gives the identical CI; another seed gives a different one."""
    values = np.random.default_rng(0).normal(size=30)
    first = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=500, seed=11))
    again = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=500, seed=11))
    other = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=500, seed=12))
    assert first == again
    assert first[0] == other[0] and (first[1], first[2]) != (other[1], other[2])


def test_bootstrap_lower_level_gives_a_narrower_interval():
    """A 50% CI lies strictly inside the 95% CI of the same sample and seed."""
    values = np.random.default_rng(1).normal(size=50)
    _, low95, high95 = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=2000, level=0.95))
    _, low50, high50 = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=2000, level=0.5))
    assert low95 < low50 < high50 < high95
    assert high50 - low50 < 0.5 * (high95 - low95)
    assert Bootstrap(level=0.5).quantiles == pytest.approx((0.25, 0.75))


@pytest.mark.parametrize("value", [3.0, 0.1])
def test_bootstrap_constant_sample_has_a_zero_width_interval(value):
    """Every resample of a constant sample has the same mean: low == high == estimate == the value."""
    estimate, low, high = bootstrap_ci(np.full(7, value), boot=Bootstrap(expanded=False, n_boot=300))
    assert low == high == estimate
    assert estimate == pytest.approx(value, rel=1e-15)  # the mean of seven 0.1s may be off by one ulp


@pytest.mark.parametrize("empty", [np.array([]), np.empty((0, 2))])
def test_bootstrap_empty_sample_gives_nans(empty):
    """No units: estimate and both limits are NaN (and nothing raises)."""
    assert all(np.isnan(x) for x in bootstrap_ci(empty, boot=Bootstrap(expanded=False, n_boot=10)))


@pytest.mark.parametrize("level", [0.95, 0.6])
def test_bootstrap_ratio_of_paired_columns_drops_non_finite_replicates(level):
    """A ratio of two columns' means: resamples whose denominator is 0 (inf or nan) are left out of the CI.

    Rows (num, den) = (0,0), (1,0), (3,1): 8 of 27 resamples have den mean 0 (1 of them 0/0 = nan, 7 inf);
    the CI must equal the quantiles of the 19 finite ratios.
    """
    values = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 1.0]])
    n_boot = 40_000
    want_low, want_high = _exact_bootstrap_quantiles(values, _ratio, level, n_boot)
    estimate, low, high = bootstrap_ci(values, _ratio, Bootstrap(expanded=False, n_boot=n_boot, level=level, seed=5))
    assert estimate == pytest.approx((4 / 3) / (1 / 3))
    assert np.isfinite(low) and np.isfinite(high)
    assert low == pytest.approx(want_low, abs=1e-9)
    assert high == pytest.approx(want_high, abs=1e-9)


def test_bootstrap_ratio_with_no_finite_replicate_gives_nan_limits():
    """A denominator that is always 0: every replicate is dropped, so the limits are NaN."""
    values = np.array([[1.0, 0.0], [2.0, 0.0]])
    estimate, low, high = bootstrap_ci(values, _ratio, Bootstrap(expanded=False, n_boot=100))
    assert np.isinf(estimate) and np.isnan(low) and np.isnan(high)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n_boot": 0}, "n_boot"), ({"n_boot": -5}, "n_boot"), ({"n_boot": 10.0}, "n_boot"),
     ({"level": 1.5}, "level"), ({"level": 0.0}, "level"), ({"level": 1.0}, "level")],
)
def test_bootstrap_settings_are_checked(kwargs, word):
    """Bad replicate counts and levels are refused with a one-line AnalysisError naming the setting."""
    with pytest.raises(AnalysisError, match=word) as err:
        Bootstrap(**kwargs)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------- aggregate


def test_aggregate_averages_unit_means_not_images():
    """Images of one unit are averaged first: [0, 0, 0] and [1] give 0.5 (unit means), not 0.25 (images)."""
    u = _units(2)
    table = _table(
        [{"unit": u[0], "m": 0.0}, {"unit": u[0], "m": 0.0}, {"unit": u[0], "m": 0.0}, {"unit": u[1], "m": 1.0},
         {"unit": u[0], "m": 2.0, "injection": "style"}, {"unit": u[1], "m": 4.0, "injection": "style"}]
    )
    out = aggregate(table, "m", boot=Bootstrap(n_boot=200)).set_index("injection")
    assert table.loc[table.injection == "all", "m"].mean() == 0.25  # the answer a per-image mean would give
    assert out.loc["all", "mean"] == 0.5
    assert out.loc["style", "mean"] == 3.0
    assert out.loc["all", ["n_units", "n_images"]].tolist() == [2, 4]
    assert out.loc["style", ["n_units", "n_images"]].tolist() == [2, 2]
    assert (out["metric"] == "m").all()
    assert ((out["low"] <= out["mean"]) & (out["mean"] <= out["high"])).all()
    # Two units: the CI's ends are the two unit means (resamples of identical units).
    assert out.loc["all", ["low", "high"]].tolist() == [0.0, 1.0]


def test_aggregate_default_by_is_the_varying_conditions_plus_injection():
    """Constant condition columns (model, scale) are not grouped on; injection always is; subtraction when it varies."""
    u = _units(3)
    one_injection = _table([{"unit": x, "m": float(i)} for i, x in enumerate(u)])
    out = aggregate(one_injection, "m", boot=Bootstrap(n_boot=50))
    assert varying_conditions(one_injection) == ["injection"]
    assert list(out.columns) == ["injection", "metric", "mean", "low", "high", "n_units", "n_references",
                                 "n_prompts", "n_images"]
    assert len(out) == 1 and out["mean"].iloc[0] == 1.0

    records = [{"unit": x, "m": float(i) + s, "subtraction": s, "injection": inj}
               for i, x in enumerate(u) for s in (0.0, 0.5) for inj in ("all", "style")]
    varying = _table(records)
    out = aggregate(varying, "m", boot=Bootstrap(n_boot=50))
    assert list(out.columns[:2]) == ["injection", "subtraction"]
    assert "model" not in out and "scale" not in out
    means = out.set_index(["injection", "subtraction"])["mean"]
    assert means[("all", 0.0)] == 1.0 and means[("style", 0.5)] == 1.5
    assert (out["n_units"] == 3).all() and len(out) == 4


def test_aggregate_drops_missing_scores_and_does_not_count_them():
    """NaN scores are not images of the mean: they leave n_images, and a unit with only NaNs leaves n_units."""
    u = _units(3)
    table = _table(
        [{"unit": u[0], "m": 1.0}, {"unit": u[0], "m": np.nan}, {"unit": u[1], "m": 3.0}, {"unit": u[2], "m": np.nan}]
    )
    row = aggregate(table, "m", boot=Bootstrap(n_boot=50)).iloc[0]
    assert row["mean"] == 2.0
    assert (row["n_units"], row["n_images"]) == (2, 2)


def test_aggregate_names_a_missing_metric():
    """Aggregating a metric the table lacks raises AnalysisError naming it and the metrics it has."""
    table = _table([{"unit": _units(1)[0], "m": 1.0}])
    with pytest.raises(AnalysisError, match="style_csd") as err:
        aggregate(table, "style_csd")
    assert "choose one of its metrics: m" in str(err.value)


# ----------------------------------------------------------------------------------------------- paired differences


def _planted(n_units: int = 24, effect=0.1, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """`all` = unit offset + noise; `style` = offset + effect + noise, as two images (+-0.05) per unit.

    The offsets (0..5) dwarf the effect, so only pairing can see it. Returns the table and the hand-computed
    per-unit differences style - all.
    """
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(0, 5, n_units)
    effects = np.broadcast_to(effect, (n_units,))
    ref = offsets + rng.normal(0, 0.01, n_units)
    cand = offsets + effects + rng.normal(0, 0.01, n_units)
    records = []
    for u, r, c in zip(_units(n_units), ref, cand):
        records += [{"unit": u, "injection": "all", "m": r},
                    {"unit": u, "injection": "style", "m": c - 0.05}, {"unit": u, "injection": "style", "m": c + 0.05}]
    return _table(records), cand - ref


def test_paired_differences_subtract_unit_by_unit():
    """mean_diff is the mean of hand-computed per-cell differences, and its CI is far narrower than unpaired CIs.

    The cells are resampled as independent (`cell`), so the interval is the textbook one of a mean of 24 values.
    """
    table, diffs = _planted()
    boot = Bootstrap(n_boot=2000, seed=2, scheme="cell")
    out = paired_differences(table, "m", {"injection": "all"}, boot=boot)
    assert out["injection"].tolist() == ["style"]  # the reference itself is not a row
    row = out.iloc[0]
    assert row["reference"] == "injection=all" and row["metric"] == "m"
    assert row["n_units"] == 24
    assert row["mean_diff"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert 0 < row["low"] < diffs.mean() < row["high"] < 0.2
    half = 1.96 * diffs.std(ddof=0) / np.sqrt(len(diffs))
    assert (row["high"] - row["low"]) / 2 == pytest.approx(half, rel=0.25)
    unpaired = aggregate(table, "m", boot=boot)
    assert (row["high"] - row["low"]) < 0.05 * (unpaired["high"] - unpaired["low"]).min()


def test_paired_differences_match_other_conditions_rather_than_crossing_them():
    """against injection=all with subtraction varying: each strength is compared with `all` at the same strength.

    s=0.5 lowers every value by 1; matched pairs give +0.1 at both strengths over all units once each, whereas
    crossing strengths would give -0.9 / +1.1 and count every unit twice.
    """
    base, _ = _planted(n_units=10, seed=4)
    shifted = base.assign(subtraction=0.5, m=base["m"] - 1.0)
    table = pd.concat([base, shifted], ignore_index=True)
    out = paired_differences(table, "m", {"injection": "all"}, boot=Bootstrap(n_boot=300))
    assert list(out.columns[:2]) == ["injection", "subtraction"]
    assert sorted(out["subtraction"]) == [0.0, 0.5] and set(out["injection"]) == {"style"}
    assert (out["n_units"] == 10).all()
    assert out["mean_diff"].to_numpy() == pytest.approx([0.1, 0.1], abs=0.02)
    at = out.set_index("subtraction")["mean_diff"]
    assert at[0.0] == pytest.approx(at[0.5], abs=1e-12)  # same units, same differences, shifted together


def test_paired_differences_match_a_number_as_a_number():
    """{"subtraction": 0} finds the float column's 0.0 and compares each injection's s=0.5 with its own s=0."""
    base, _ = _planted(n_units=6, seed=5)
    table = pd.concat([base, base.assign(subtraction=0.5, m=base["m"] - 1.0)], ignore_index=True)
    assert table["subtraction"].dtype == np.float64
    out = paired_differences(table, "m", {"subtraction": 0}, boot=Bootstrap(n_boot=100))
    assert sorted(out["injection"]) == ["all", "style"]
    assert (out["subtraction"] == 0.5).all()
    assert (out["reference"] == "subtraction=0").all()
    assert out["mean_diff"].to_numpy() == pytest.approx([-1.0, -1.0], abs=1e-12)
    assert out[["low", "high"]].to_numpy().ravel() == pytest.approx([-1.0] * 4, abs=1e-12)  # no spread to resample


def test_paired_differences_count_only_units_the_reference_has():
    """Units without a reference value are dropped: n_units and the mean are over the paired units only."""
    n = 12
    effects = 0.1 + 0.05 * np.arange(n)  # unit-specific, so dropping units moves the mean
    table, diffs = _planted(n_units=n, effect=effects, seed=6)
    missing = set(_units(n)[-3:])
    keep = [not (inj == "all" and u in missing) for inj, u in zip(table["injection"], zip(*(table[c] for c in UNIT)))]
    out = paired_differences(table[keep], "m", {"injection": "all"}, boot=Bootstrap(n_boot=200)).iloc[0]
    assert out["n_units"] == n - 3
    assert out["mean_diff"] == pytest.approx(diffs[: n - 3].mean(), abs=1e-12)
    assert out["mean_diff"] != pytest.approx(diffs.mean(), abs=1e-3)


def test_paired_differences_missing_reference_condition_is_named():
    """A reference condition absent from the table raises AnalysisError naming it (one line)."""
    table, _ = _planted(n_units=3)
    with pytest.raises(AnalysisError, match="injection=nope") as err:
        paired_differences(table, "m", {"injection": "nope"})
    assert "\n" not in str(err.value)


def test_paired_differences_against_must_be_a_condition_column():
    """Fixing a column that is not among `by` is refused rather than silently ignored."""
    table, _ = _planted(n_units=3)
    with pytest.raises(AnalysisError, match="subtraction must be among the condition columns"):
        paired_differences(table, "m", {"subtraction": 0}, by=["injection"])


# ----------------------------------------------------------------------------------------------- paired_units


def test_paired_units_keeps_units_present_under_every_mask_aligned_by_row():
    """Rows are units seen under all masks (unit means, NaNs dropped); each row holds one unit's values."""
    u = _units(5)
    records = [{"unit": u[i], "injection": "a", "m": float(i)} for i in range(4)]  # units 0..3
    records.append({"unit": u[1], "injection": "a", "m": 1.5})  # unit 1 mean under a: 1.25
    records += [{"unit": u[i], "injection": "b", "m": 100.0 + i} for i in range(1, 5)]  # units 1..4
    records.append({"unit": u[2], "injection": "b", "m": np.nan})  # ignored, unit 2 keeps 102
    records.append({"unit": u[0], "injection": "b", "m": np.nan})  # unit 0 has no score under b: unpaired
    table = _table(records)
    values = paired_units(table, "m", [table["injection"] == "a", table["injection"] == "b"])
    assert values.shape == (3, 2)
    by_unit = {round(row[1] - 100): tuple(row) for row in values}  # b's value tells which unit a row is
    assert by_unit == {1: (1.25, 101.0), 2: (2.0, 102.0), 3: (3.0, 103.0)}
    assert paired_units(table, "m", []).shape == (0, 0)


# ----------------------------------------------------------------------------------------------- load_results


def _rows_frame(keys, injection="all", model="sdxl") -> pd.DataFrame:
    units = _units(len(keys))
    return pd.DataFrame(
        {
            "key": keys,
            "model": model,
            "injection": injection,
            "subtraction": 0.0,
            "scale": 1.0,
            "reference_digest": [u[0] for u in units],
            "prompt": [u[1] for u in units],
            "seed": [u[2] for u in units],
            "image_path": [f"images/{k[:2]}/{k}.png" for k in keys],
            "layers": json.dumps(["up_blocks.0.attentions.1"]),
            "layer_scales": json.dumps({"up_blocks.0.attentions.1.transformer_blocks.0": 1.0}),
        }
    )


def _write_results(root, rows: list[pd.DataFrame], scores: pd.DataFrame | None = None, clip_model="clip-A"):
    """A results folder laid out as Store writes it: rows/*.parquet and scores/leak_clip/{metric.yaml,*.parquet}."""
    store = Store(root)
    store.rows.mkdir(parents=True)
    for i, frame in enumerate(rows):
        frame.to_parquet(store.rows / f"run{i}-00000.parquet", index=False)
    if scores is not None:
        folder = store.scores / "leak_clip"
        folder.mkdir(parents=True)
        (folder / "metric.yaml").write_text(f"scorer: clip_leak\nmodel: {clip_model}\n")
        scores.assign(leak_clip_model=clip_model).to_parquet(folder / "x-00000.parquet", index=False)
    return store


def _scores(keys, start=0.0) -> pd.DataFrame:
    n = len(keys)
    return pd.DataFrame({"key": keys, "leak_clip": start + np.arange(n), "leak_margin": -np.arange(n) / 10})


def test_load_results_joins_scores_and_names_each_value_columns_model(tmp_path):
    """Every value column of a metric gets a `<column>_model` companion: leak_margin is scored by leak_clip's model."""
    _write_results(tmp_path / "r", [_rows_frame(["aa1", "bb2"]), _rows_frame(["cc3"], "style")],
                   _scores(["aa1", "bb2", "cc3"]))
    table = load_results(tmp_path / "r")
    assert sorted(table["key"]) == ["aa1", "bb2", "cc3"]
    assert (table["leak_margin_model"] == table["leak_clip_model"]).all()
    assert (table["leak_margin_model"] == "clip-A").all()
    assert set(metric_columns(table)) == {"leak_clip", "leak_margin"}
    assert table.set_index("key").loc["bb2", ["leak_clip", "leak_margin"]].tolist() == [1.0, -0.1]
    assert (table["results_dir"] == str((tmp_path / "r").resolve())).all()
    assert metric_label(table, "leak_margin") == "leak_margin (clip-A)"
    assert metric_label(table, "seed") == "seed"  # no model: just the column


def test_load_results_concatenates_folders_and_keeps_a_shared_key_once(tmp_path):
    """Two folders: rows of both with their folder named; a key in both (equally scored) is kept once, the first's."""
    _write_results(tmp_path / "one", [_rows_frame(["aa1", "bb2"])], _scores(["aa1", "bb2"]), clip_model="clip-A")
    _write_results(tmp_path / "two", [_rows_frame(["bb2", "dd4"])], _scores(["bb2", "dd4"], start=10.0),
                   clip_model="clip-B")
    table = load_results([tmp_path / "one", str(tmp_path / "two")])
    assert sorted(table["key"]) == ["aa1", "bb2", "dd4"]
    by_key = table.set_index("key")
    assert by_key.loc["bb2", "results_dir"] == str((tmp_path / "one").resolve())
    assert by_key.loc["bb2", "leak_clip"] == 1.0  # the first folder's score, not 10.0
    assert by_key.loc["dd4", "results_dir"] == str((tmp_path / "two").resolve())
    assert by_key.loc["dd4", "leak_margin_model"] == "clip-B"
    assert metric_label(table, "leak_clip") == "leak_clip (clip-A; clip-B)"


def test_load_results_keeps_the_scored_copy_of_a_shared_key(tmp_path):
    """A key unscored in the first folder but scored in the second keeps the second folder's scores."""
    _write_results(tmp_path / "one", [_rows_frame(["aa1", "bb2"])], _scores(["aa1"]))
    _write_results(tmp_path / "two", [_rows_frame(["bb2"])], _scores(["bb2"], start=7.0))
    by_key = load_results([tmp_path / "one", tmp_path / "two"]).set_index("key")
    assert by_key.loc["bb2", "leak_clip"] == 7.0
    assert by_key.loc["bb2", "results_dir"] == str((tmp_path / "two").resolve())
    assert by_key.loc["aa1", "leak_clip"] == 0.0


def test_bootstrap_leaves_out_units_with_a_missing_value():
    """A NaN unit is dropped before both the estimate and the resampling, so they describe the same sample."""
    with_nan = bootstrap_ci(np.array([1.0, 2.0, np.nan]), boot=Bootstrap(n_boot=500, seed=3))
    assert with_nan == bootstrap_ci(np.array([1.0, 2.0]), boot=Bootstrap(n_boot=500, seed=3))
    assert with_nan[0] == 1.5


def test_aggregate_without_condition_columns_gives_one_overall_row():
    frame = pd.DataFrame({"reference_digest": ["a", "b", "b"], "prompt": "p", "seed": 0, "m": [1.0, 2.0, 4.0],
                          "m_model": "x"})
    overall = aggregate(frame, "m", by=[], boot=Bootstrap(n_boot=200))
    assert len(overall) == 1 and overall["mean"].iloc[0] == 2.0  # units a=1 and b=3
    assert overall["n_units"].iloc[0] == 2 and overall["n_images"].iloc[0] == 3
    assert overall.columns.tolist() == ["metric", "mean", "low", "high", "n_units", "n_references", "n_prompts",
                                         "n_images"]


def test_bootstrap_refuses_a_bool_replicate_count():
    with pytest.raises(AnalysisError, match="n_boot=True"):
        Bootstrap(n_boot=True)
    assert Bootstrap(n_boot=np.int64(50)).n_boot == 50


def test_load_results_refuses_missing_or_empty_input_in_one_line(tmp_path):
    """A missing folder, a folder without rows and an empty list each raise a one-line AnalysisError."""
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "has no rows"), ([], "no results folder")]
    for given, words in cases:
        with pytest.raises(AnalysisError, match=words) as err:
            load_results(given)
        assert "\n" not in str(err.value)
    _write_results(tmp_path / "good", [_rows_frame(["aa1"])])
    with pytest.raises(AnalysisError, match="nowhere does not exist"):  # a bad folder after a good one
        load_results([tmp_path / "good", tmp_path / "nowhere"])


def test_require_columns_names_what_is_missing(tmp_path):
    """An empty table and a table without the metric both raise AnalysisError; the latter names the column."""
    with pytest.raises(AnalysisError, match="aggregating style_csd: the table is empty"):
        require_columns(pd.DataFrame(), ["style_csd"], "aggregating style_csd")
    _write_results(tmp_path / "r", [_rows_frame(["aa1"])], _scores(["aa1"]))
    table = load_results(tmp_path / "r")
    with pytest.raises(AnalysisError, match="no column style_csd") as err:
        require_columns(table, ["leak_clip", "style_csd"], "verdict")
    message = str(err.value)
    assert "leak_clip, leak_margin" in message and "\n" not in message
    require_columns(table, ["leak_clip", "injection"], "verdict")  # present: no error


# ----------------------------------------------------------------------------------------------- conditions


def test_unet_sort_key_follows_the_data_flow():
    """Down blocks, then the mid block, then up blocks; within each by block, module and layer index."""
    ordered = [
        "down_blocks.1.attentions.0",
        "down_blocks.2.attentions.1",
        "mid_block.attentions.0",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1.transformer_blocks.2",
        "up_blocks.0.attentions.1.transformer_blocks.10",  # numeric, not lexical
        "up_blocks.1.attentions.0",
    ]
    keys = [unet_sort_key(n) for n in ordered]
    assert keys == sorted(keys)
    assert unet_sorted(list(reversed(ordered))) == ordered
    assert unet_sort_key("something_else") > unet_sort_key("up_blocks.9.attentions.9")


def _preset_table(injections: dict[str, tuple[list[str], dict[str, float]]]) -> pd.DataFrame:
    """Two rows per injection, with its `layers` and `layer_scales` as the sweep writes them (JSON)."""
    return pd.DataFrame(
        [{"injection": name, "layers": json.dumps(layers), "layer_scales": json.dumps(scales), "seed": seed}
         for name, (layers, scales) in injections.items() for seed in (0, 1)]
    )


_STYLE = "up_blocks.0.attentions.1"
_STYLE_LAYERS = {f"{_STYLE}.transformer_blocks.{i}": 1.0 for i in range(3)}


def test_preset_rows_finds_style_through_a_module_probe():
    """`style` is found as one_hot:up_blocks.0.attentions.1 (its module at uniform scales), not an uneven lookalike."""
    table = _preset_table({
        "all": (["down_blocks.2.attentions.1", _STYLE], {}),
        "custom": ([_STYLE], {**_STYLE_LAYERS, f"{_STYLE}.transformer_blocks.0": 0.5}),  # same module, uneven
        "one_hot:down_blocks.2.attentions.1": (
            ["down_blocks.2.attentions.1"], {"down_blocks.2.attentions.1.transformer_blocks.0": 1.0}
        ),
        f"one_hot:{_STYLE}": ([_STYLE], _STYLE_LAYERS),
    })
    mask, source = preset_rows(table, "style")
    assert source == f"one_hot:{_STYLE}"
    assert mask.tolist() == (table["injection"] == source).tolist() and mask.sum() == 2


def test_preset_rows_prefers_the_exact_name():
    """Rows named `style` win over a module probe that switches on the same layers."""
    table = _preset_table({f"one_hot:{_STYLE}": ([_STYLE], _STYLE_LAYERS), "style": ([_STYLE], _STYLE_LAYERS)})
    mask, source = preset_rows(table, "style")
    assert source == "style"
    assert mask.tolist() == [False, False, True, True]


def test_preset_rows_without_a_match_selects_nothing():
    """No `style` rows and no pattern with exactly its layers: an all-False mask under the asked name."""
    table = _preset_table({
        "all": (["down_blocks.2.attentions.1", _STYLE], {}),
        "style_layout": (["down_blocks.2.attentions.1", _STYLE], {}),
    })
    for name in ("style", "not_a_preset"):
        mask, source = preset_rows(table, name)
        assert source == name and len(mask) == len(table) and not mask.any()


def test_bootstrap_ci_agrees_with_scipys_percentile_bootstrap():
    """The same percentile interval as scipy.stats.bootstrap (scikit-image's dependency, in the test extras)."""
    stats = pytest.importorskip("scipy.stats", reason="scipy comes with the test extras (scikit-image)")
    sample = np.random.default_rng(11).gamma(2.0, 1.0, size=60)  # skewed: percentile != normal interval
    ours = bootstrap_ci(sample, boot=Bootstrap(expanded=False, n_boot=40000, level=0.9, seed=1))
    theirs = stats.bootstrap((sample,), np.mean, n_resamples=40000, confidence_level=0.9, method="percentile",
                             random_state=2).confidence_interval
    half = (theirs.high - theirs.low) / 2
    assert ours[1] == pytest.approx(theirs.low, abs=0.03 * half)
    assert ours[2] == pytest.approx(theirs.high, abs=0.03 * half)


def test_expanded_percentile_tails_follow_student_t_and_vanish_with_many_units():
    """The expanded interval's tails: Phi(sqrt(n/(n-1)) t_{n-1}) (Hesterberg 2015); 8 units at 95% take the 0.57%
    and 99.43% percentiles, many units the plain 2.5% / 97.5%, and expanded=False always the plain ones."""
    from scipy import stats as sps

    boot = Bootstrap()
    low, high = boot.quantiles_for(8)
    assert low == pytest.approx(sps.norm.cdf(np.sqrt(8 / 7) * sps.t.ppf(0.025, 7))) and low == pytest.approx(0.0057, abs=2e-4)
    assert high == pytest.approx(1 - low)
    assert boot.quantiles_for(100_000) == pytest.approx((0.025, 0.975), abs=1e-4)
    assert boot.quantiles_for(1) == boot.quantiles == Bootstrap(expanded=False).quantiles_for(8)
    values = np.random.default_rng(0).normal(0, 1, 8)
    _, plain_low, plain_high = bootstrap_ci(values, boot=Bootstrap(expanded=False, n_boot=4000))
    _, low, high = bootstrap_ci(values, boot=Bootstrap(n_boot=4000))
    assert low < plain_low and high > plain_high
