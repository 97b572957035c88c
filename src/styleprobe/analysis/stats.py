"""Aggregates and paired differences with bootstrap intervals that respect the crossed design.

Every style reference meets every prompt, so (reference, prompt) cells are crossed, not independent: effects differ
mostly between references, and cells that share a reference share its effect. A cell's value is the mean over its
images (its seeds and training-seed replicates: replicates of the cell, not units), and the default scheme,
`two_way`, resamples references and prompts independently and keeps the cross (Owen's "pigeonhole" bootstrap, Ann.
Appl. Stat. 2007; mildly conservative), so an interval speaks for new references and new prompts. `reference`
resamples references only (prompts fixed); `cell` resamples cells as if independent, which under-covers when effects
vary by reference (tests/analysis/test_analysis_coverage.py shows both). With one reference, or one prompt, `two_way` is the
one-way bootstrap over the other factor. Paired differences subtract a reference condition cell by cell before
resampling, which removes the between-cell spread both conditions share. Percentile intervals throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from styleprobe.analysis.conditions import describe_setting
from styleprobe.analysis.load import CELL_COLUMNS, PROMPT_COLUMN, REFERENCE_COLUMN, require_columns, varying_conditions
from styleprobe.errors import AnalysisError

_CHUNK = 256  # bootstrap replicates drawn at once: bounds memory at 256 x n_cells weights

#: How intervals resample the crossed design (`analysis.bootstrap.scheme`); see the module docstring.
SCHEMES: tuple[str, ...] = ("two_way", "reference", "cell")


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are computed: replicates, two-sided level, the seed that makes them repeatable, and the scheme."""

    n_boot: int = 2000
    level: float = 0.95
    seed: int = 0
    scheme: str = "two_way"
    expanded: bool = True  # Hesterberg's expanded percentile interval: near-nominal with few references or prompts

    def __post_init__(self) -> None:
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, (int, np.integer)) or self.n_boot < 1:
            raise AnalysisError(f"bootstrap n_boot={self.n_boot!r}; give a positive integer, e.g. 2000")
        if not 0 < self.level < 1:
            raise AnalysisError(f"bootstrap level={self.level!r}; give a fraction between 0 and 1, e.g. 0.95")
        if self.scheme not in SCHEMES:
            raise AnalysisError(f"bootstrap scheme={self.scheme!r}; choose {', '.join(SCHEMES)} (two_way: references "
                                "and prompts resampled independently, the default)")

    @property
    def quantiles(self) -> tuple[float, float]:
        tail = (1 - self.level) / 2
        return tail, 1 - tail

    def quantiles_for(self, n_units: int) -> tuple[float, float]:
        """The percentiles an interval over `n_units` independent units takes.

        Plain: the level's own tails. Expanded (Hesterberg, "What teachers should know about the bootstrap", Am.
        Stat. 2015): the tail whose normal quantile is sqrt(n / (n - 1)) times Student's t quantile with n - 1
        degrees of freedom, which corrects the percentile interval's narrowness for small n (with 8 references
        a plain 95% interval covers about 89%, tests/analysis/test_analysis_coverage.py) and vanishes as n grows.
        """
        if not self.expanded or n_units < 2:
            return self.quantiles
        from scipy import stats as sps

        tail = float(sps.norm.cdf(np.sqrt(n_units / (n_units - 1)) * sps.t.ppf((1 - self.level) / 2, n_units - 1)))
        return tail, 1 - tail

    @property
    def alpha(self) -> float:
        """The two-sided error rate of one interval (0.05 at 95%)."""
        return 1 - self.level


def design_codes(frame: pd.DataFrame, columns: Sequence[str] = CELL_COLUMNS) -> np.ndarray:
    """(n, 2) integer codes of each row's style reference and prompt: the two crossed factors of the design.

    A factor absent from `columns` (a benchmark resampling over references only) is one level for every row.
    """
    codes = np.zeros((len(frame), 2), dtype=np.int64)
    for i, column in enumerate((REFERENCE_COLUMN, PROMPT_COLUMN)):
        if column in columns and column in frame:
            codes[:, i] = pd.factorize(frame[column].astype(str))[0]
    return codes


def effective_units(design: np.ndarray | None, n_rows: int, scheme: str) -> int:
    """How many independent units an interval rests on: the fewer of references and prompts under two_way (factors
    with one level left out), the references under `reference`, the rows (cells) under `cell` or without a design."""
    if design is None or scheme == "cell" or not len(design):
        return n_rows
    sizes = [int(len(np.unique(design[:, i]))) for i in ((0, 1) if scheme == "two_way" else (0,))]
    several = [n for n in sizes if n > 1]
    return min(several) if several else 1


def _factor_counts(rng: np.random.Generator, levels: np.ndarray, b: int) -> np.ndarray:
    """(b, n_levels) multinomial counts: how often each level is drawn in each of b resamples of the levels."""
    n = int(levels.max()) + 1 if len(levels) else 0
    if n <= 1:
        return np.ones((b, max(n, 1)))
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def replicate_means(
    values: np.ndarray, boot: Bootstrap = Bootstrap(), design: np.ndarray | None = None
) -> np.ndarray:
    """(n_boot, k) bootstrap replicates of the k column means of `values` (n, k), resampled by `boot.scheme`.

    Without a design (or with scheme `cell`) rows are resampled with replacement as independent units. With a
    design, `two_way` weighs each row by how often its reference and its prompt were drawn (their product),
    `reference` by its reference's count alone. A NaN leaves its row out of that column's mean only.
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[:, None] if data.ndim == 1 else data
    rng = np.random.default_rng(boot.seed)
    n = len(data)
    reps = []
    if design is None or boot.scheme == "cell":
        columns = np.ascontiguousarray(data.T)  # one gather per column: 4x faster than data[idx] over (chunk, n, k)
        for start in range(0, boot.n_boot, _CHUNK):
            idx = rng.integers(0, n, size=(min(_CHUNK, boot.n_boot - start), n))
            with np.errstate(invalid="ignore"):
                reps.append(np.stack([np.nanmean(c[idx], axis=1) if np.isnan(c).any() else c[idx].mean(axis=1)
                                      for c in columns], axis=1))
        return np.concatenate(reps)
    finite = np.isfinite(data)
    filled = np.where(finite, data, 0.0)
    ref, prompt = design[:, 0], design[:, 1]
    for start in range(0, boot.n_boot, _CHUNK):
        b = min(_CHUNK, boot.n_boot - start)
        weights = _factor_counts(rng, ref, b)[:, ref]
        if boot.scheme == "two_way":
            weights = weights * _factor_counts(rng, prompt, b)[:, prompt]
        with np.errstate(invalid="ignore", divide="ignore"):
            reps.append((weights @ filled) / (weights @ finite))
    return np.concatenate(reps)


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    boot: Bootstrap = Bootstrap(),
    design: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(estimate, low, high) of a statistic of column means, resampled by `boot.scheme` over `design`.

    `values` is (n,) or (n, k), one row per cell, one column per paired condition; `design` is the rows'
    (reference, prompt) codes (`design_codes`), None to resample rows as independent units. `statistic` maps an
    (m, k) array of column means to m numbers (default: the first column's mean). Rows with a missing value are
    left out; NaN replicates (a ratio whose denominator resampled to zero) are left out of the percentiles.
    """
    estimate, low, high, _, _ = _interval(values, statistic, boot, design)
    return estimate, low, high


def _interval(
    values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray] | None, boot: Bootstrap, design: np.ndarray | None
) -> tuple[float, float, float, np.ndarray, int]:
    """`bootstrap_ci`'s (estimate, low, high), with the finite replicates and the number of units behind them."""
    data = np.asarray(values, dtype=np.float64)
    data = data[:, None] if data.ndim == 1 else data
    keep = np.isfinite(data).all(axis=1)
    data = data[keep]
    design = None if design is None else np.asarray(design)[keep]
    stat = statistic or (lambda means: means[:, 0])
    if len(data) == 0:
        return float("nan"), float("nan"), float("nan"), np.empty(0), 0
    estimate = float(stat(data.mean(axis=0, keepdims=True))[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = stat(replicate_means(data, boot, design))
    replicates = replicates[np.isfinite(replicates)]
    n_units = effective_units(design, len(data), boot.scheme)
    if not len(replicates):
        return estimate, float("nan"), float("nan"), replicates, n_units
    low, high = np.quantile(replicates, boot.quantiles_for(n_units))
    return estimate, float(low), float(high), replicates, n_units


def bootstrap_p(replicates: np.ndarray, estimate: float, n_units: int, boot: Bootstrap = Bootstrap()) -> float:
    """Two-sided p-value of "the mean difference is 0", from the bootstrap's standard error.

    The estimate over the replicates' spread, referred to Student's t with n - 1 degrees of freedom after the same
    sqrt(n / (n - 1)) widening the expanded interval uses (the normal without the expansion), so p < 1 - level
    where the interval excludes 0, up to the replicates' departure from normal. Unlike a count of replicates beyond
    0, it resolves the small p-values a large family needs (Holm over 40 comparisons tests at 0.05 / 40).
    """
    from scipy import stats as sps

    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if not len(reps) or not np.isfinite(estimate):
        return float("nan")
    se = float(reps.std())
    if se == 0:
        return 0.0 if estimate != 0 else 1.0
    z = abs(estimate) / se
    if boot.expanded and n_units >= 2:
        return float(2 * sps.t.sf(z / np.sqrt(n_units / (n_units - 1)), n_units - 1))
    return float(2 * sps.norm.sf(z))


def holm(p_values: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down (1979): which of a family's hypotheses are rejected with family-wise error rate <= alpha.

    NaN p-values are not part of the family (never rejected, and they do not count towards its size).
    """
    p = np.asarray(p_values, dtype=np.float64)
    reject = np.zeros(len(p), dtype=bool)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        if p[i] > alpha / (m - rank):
            break
        reject[i] = True
    return reject


def simultaneous_band(
    values: np.ndarray, boot: Bootstrap = Bootstrap(), design: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Simultaneous intervals for the k column means of `values` (n, k): (estimates, low, high, critical value).

    The max-statistic bootstrap: per replicate the largest studentised deviation over the k columns,
    max_j |rep_j - est_j| / se_j; its `level` quantile c gives est_j +- c se_j, which cover all k means at once with
    probability `level` (so a ranking's every claim holds together). NaN cells leave their column's mean only.
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[:, None] if data.ndim == 1 else data
    with np.errstate(invalid="ignore"):
        estimate = np.nanmean(data, axis=0) if len(data) else np.full(data.shape[1], np.nan)
    if not len(data):
        nan = np.full(data.shape[1], np.nan)
        return estimate, nan, nan, float("nan")
    reps = replicate_means(data, boot, design)
    with np.errstate(invalid="ignore"):
        se = np.nanstd(reps, axis=0)
    scale = np.where(se > 0, se, np.nan)
    with np.errstate(invalid="ignore"):
        deviation = np.nanmax(np.abs(reps - estimate) / scale, axis=1) if np.isfinite(scale).any() else np.zeros(len(reps))
    deviation = deviation[np.isfinite(deviation)]
    low_q, high_q = boot.quantiles_for(effective_units(design, len(data), boot.scheme))
    crit = float(np.quantile(deviation, high_q - low_q)) if len(deviation) else 0.0
    half = np.where(se > 0, crit * se, 0.0)
    return estimate, estimate - half, estimate + half, crit


def cell_means(
    table: pd.DataFrame, metric: str, by: Sequence[str], unit: Sequence[str] | None = None
) -> pd.DataFrame:
    """One value per condition and cell: the metric's mean over that cell's images (seeds, replicates; scores missing
    dropped). `unit` are the cell columns (default: style reference x prompt).

    Columns: by..., unit..., the metric, and n_images (how many images the mean is over).
    """
    unit = list(CELL_COLUMNS if unit is None else unit)
    require_columns(table, [metric, *by, *unit], f"aggregating {metric}")
    scored = table.dropna(subset=[metric])
    grouped = scored.groupby([*by, *unit], sort=False, dropna=False)[metric]
    return grouped.agg(["mean", "size"]).reset_index().rename(columns={"mean": metric, "size": "n_images"})


#: The name the per-unit means had before cells became the unit; kept for notebooks and callers written then.
unit_means = cell_means


def aggregate(
    table: pd.DataFrame,
    metric: str,
    by: Sequence[str] | None = None,
    unit: Sequence[str] | None = None,
    boot: Bootstrap = Bootstrap(),
) -> pd.DataFrame:
    """Mean of `metric` per condition with a bootstrap CI over the crossed cells.

    Columns: the `by` columns (default: every condition column that varies), metric, mean, low, high,
    n_units (cells), n_references, n_prompts, n_images.
    """
    by = list(by) if by is not None else varying_conditions(table)
    if not by:  # one overall row
        return aggregate(table.assign(_all="all"), metric, ["_all"], unit, boot).drop(columns="_all")
    unit = list(CELL_COLUMNS if unit is None else unit)
    means = cell_means(table, metric, by, unit)
    rows = []
    for cond, group in means.groupby(by, sort=False, dropna=False):
        cond = cond if isinstance(cond, tuple) else (cond,)
        estimate, low, high = bootstrap_ci(group[metric].to_numpy(), boot=boot, design=design_codes(group, unit))
        rows.append({**dict(zip(by, cond)), "metric": metric, "mean": estimate, "low": low, "high": high,
                     "n_units": len(group), **_factor_sizes(group, unit), "n_images": int(group["n_images"].sum())})
    return pd.DataFrame(rows, columns=[*by, "metric", "mean", "low", "high", "n_units", "n_references", "n_prompts",
                                       "n_images"])


def _factor_sizes(cells: pd.DataFrame, unit: Sequence[str]) -> dict[str, int]:
    """How many style references and prompts a set of cells spans (the sizes the two-way intervals speak for)."""
    return {name: int(cells[column].nunique()) if column in unit and column in cells else 1
            for name, column in (("n_references", REFERENCE_COLUMN), ("n_prompts", PROMPT_COLUMN))}


def select(table: pd.DataFrame, where: Mapping[str, Any]) -> pd.Series:
    """Rows whose columns equal the given values (numbers compared as numbers, so `0` matches `0.0`).

    A missing value (NaN/None) selects the rows that lack that column's value: another method's rows.
    """
    mask = pd.Series(True, index=table.index)
    for column, value in where.items():
        if column not in table:
            raise AnalysisError(f"no column {column!r} to select {column}={value!r}; columns: {', '.join(table.columns)}")
        col = table[column]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            mask &= col.isna()
        elif pd.api.types.is_numeric_dtype(col) and not isinstance(value, str):
            mask &= np.isclose(col.astype(float), float(value))
        else:
            mask &= col.astype(str) == str(value)
    return mask


def paired_differences(
    table: pd.DataFrame,
    metric: str,
    against: Mapping[str, Any],
    by: Sequence[str] | None = None,
    unit: Sequence[str] | None = None,
    boot: Bootstrap = Bootstrap(),
) -> pd.DataFrame:
    """Each condition minus the reference condition, cell by cell, with a bootstrap CI over the paired cells.

    `against` fixes some condition columns (e.g. {"injection": "all"}); the other `by` columns are matched,
    so {"subtraction": 0} compares every strength with s=0 of the same injection pattern. Only cells present
    in both conditions count (n_units). Columns: by..., metric, reference, mean_diff, low, high, p_value (two-sided
    bootstrap p of "no difference", unadjusted), n_units, n_references, n_prompts. A table without the reference
    condition is an error; one whose reference rows have no score for `metric` (a leakage score needs the
    reference's content label) gives no rows.
    """
    by, unit, paired = _paired(table, metric, against, by, unit, require_reference=True)
    label = describe_setting(against)
    rows = []
    for cond, group in paired.groupby(by, sort=False, dropna=False):
        cond = cond if isinstance(cond, tuple) else (cond,)
        diffs = group["_diff"].to_numpy()
        estimate, low, high, reps, n_units = _interval(diffs, None, boot, design_codes(group, unit))
        p_value = bootstrap_p(reps, estimate, n_units, boot)
        rows.append({**dict(zip(by, cond)), "metric": metric, "reference": label, "mean_diff": estimate, "low": low,
                     "high": high, "p_value": p_value,
                     "n_units": len(group), **_factor_sizes(group, unit)})
    return pd.DataFrame(rows, columns=[*by, "metric", "reference", "mean_diff", "low", "high", "p_value", "n_units",
                                       "n_references", "n_prompts"])


def _paired(
    table: pd.DataFrame, metric: str, against: Mapping[str, Any], by: Sequence[str] | None,
    unit: Sequence[str] | None, require_reference: bool,
) -> tuple[list[str], list[str], pd.DataFrame]:
    """(by, unit, cells): every non-reference condition's cell means beside its matched reference cell, `_diff` their
    difference; only cells both have. The reference is the condition `against` fixes, other `by` columns matched."""
    by = list(by) if by is not None else varying_conditions(table)
    unknown = [c for c in against if c not in by] if by else list(against)
    if unknown:
        raise AnalysisError(f"paired differences: {', '.join(unknown)} must be among the condition columns {by}")
    unit = list(CELL_COLUMNS if unit is None else unit)
    means = cell_means(table, metric, by, unit)
    ref = means[select(means, against)]
    if ref.empty and require_reference and not select(table, against).any():
        raise AnalysisError(
            f"paired differences: no rows with {describe_setting(against)} to compare against; add that condition to the sweep"
        )
    matched = [c for c in by if c not in against]
    ref = ref[[*matched, *unit, metric]].rename(columns={metric: "_ref"})
    paired = means[~select(means, against)].merge(ref, on=[*matched, *unit], how="inner")
    paired["_diff"] = paired[metric] - paired["_ref"]
    return by, unit, paired


def simultaneous_differences(
    table: pd.DataFrame,
    metric: str,
    against: Mapping[str, Any],
    by: Sequence[str] | None = None,
    unit: Sequence[str] | None = None,
    boot: Bootstrap = Bootstrap(),
) -> pd.DataFrame:
    """`paired_differences`' conditions with simultaneous intervals: together they cover every condition's difference
    with probability `level` (max-statistic bootstrap over one shared resampling of the cells; see
    `simultaneous_band`). Columns: by..., simul_low, simul_high; `attrs["critical"]` is the band's multiple of the
    standard error and `attrs["family"]` how many differences it covers.
    """
    by, unit, paired = _paired(table, metric, against, by, unit, require_reference=False)
    out = pd.DataFrame(columns=[*by, "simul_low", "simul_high"])
    if paired.empty:
        out.attrs.update(critical=float("nan"), family=0)
        return out
    paired["_cond"] = paired.groupby(by, sort=False, dropna=False).ngroup()  # NaN-safe (a knob another method lacks)
    wide = paired.groupby([*unit, "_cond"], sort=False, dropna=False)["_diff"].mean().unstack("_cond")
    _, low, high, crit = simultaneous_band(wide.to_numpy(dtype=np.float64), boot, design_codes(wide.reset_index(), unit))
    first = paired.drop_duplicates("_cond").set_index("_cond")
    out = first.loc[list(wide.columns), by].reset_index(drop=True)
    out["simul_low"], out["simul_high"] = low, high
    out.attrs.update(critical=crit, family=len(wide.columns))
    return out


def paired_cells(
    table: pd.DataFrame, metric: str, masks: Sequence[pd.Series], unit: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(values, design): an (n_cells, k) array of the metric's cell means under each of k row selections, for the
    cells present in all k, and the cells' (reference, prompt) codes for `bootstrap_ci`."""
    unit = list(CELL_COLUMNS if unit is None else unit)
    require_columns(table, [metric, *unit], f"pairing {metric}")
    joined: pd.DataFrame | None = None
    for i, mask in enumerate(masks):
        part = table[mask].dropna(subset=[metric]).groupby(unit, dropna=False)[metric].mean().rename(f"c{i}")
        joined = part.to_frame() if joined is None else joined.join(part, how="inner")
    if joined is None:
        return np.empty((0, 0)), np.empty((0, 2), dtype=np.int64)
    return joined.to_numpy(dtype=np.float64), design_codes(joined.reset_index(), unit)


def paired_difference(
    table: pd.DataFrame, metric: str, a: pd.Series, b: pd.Series, boot: Bootstrap = Bootstrap()
) -> tuple[float, float, float, int]:
    """(estimate, low, high, n cells) of the mean of `a` - `b` over the cells both row selections have (NaN, 0: none)."""
    values, design = paired_cells(table, metric, [a, b])
    if not len(values):
        return np.nan, np.nan, np.nan, 0
    return (*bootstrap_ci(values, lambda m: m[:, 0] - m[:, 1], boot, design), len(values))


def effect_share(
    table: pd.DataFrame, metric: str, part: pd.Series, whole: pd.Series, base: pd.Series, boot: Bootstrap = Bootstrap()
) -> tuple[tuple[float, float, float], tuple[float, float, float], int]:
    """How much of `whole`'s effect over `base` `part` keeps, on the cells all three share: (whole - base with its
    interval, (part - base) / (whole - base) with its interval, n cells). The share is NaN when the effect's lower
    bound is not above 0 (there is no effect to keep a share of) or when no cell is shared."""
    nan3 = (np.nan, np.nan, np.nan)
    values, design = paired_cells(table, metric, [part, whole, base])
    if not len(values):
        return nan3, nan3, 0
    effect = bootstrap_ci(values, lambda m: m[:, 1] - m[:, 2], boot, design)
    if not effect[1] > 0:
        return effect, nan3, len(values)
    share = bootstrap_ci(values, lambda m: (m[:, 0] - m[:, 2]) / (m[:, 1] - m[:, 2]), boot, design)
    return effect, share, len(values)


def paired_units(
    table: pd.DataFrame, metric: str, masks: Sequence[pd.Series], unit: Sequence[str] | None = None
) -> np.ndarray:
    """The values of `paired_cells`, without the design (for callers that resample cells themselves)."""
    return paired_cells(table, metric, masks, unit)[0]
