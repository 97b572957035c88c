"""The verdict: are InstantStyle's blocks enough? A stated criterion, checked with paired bootstrap CIs.

A candidate (`style`, `style_layout`) passes when, against injecting everywhere (`all`) on the same units:
  1. style kept: it keeps at least `style_fraction` of `all`'s style effect, the effect being the rise in
     style similarity over no injection (`none`): (candidate - none) / (all - none), CI low end >= fraction.
     Raw cosines of unrelated images are far from 0, so a plain ratio candidate / all would pass trivially;
     with `baseline: null` that plain ratio is what is judged, and the report says so;
  2. leakage lower: candidate - all on the leakage metric, CI high end < -min_leak_drop;
  3. text followed better: candidate - all on text alignment, CI low end > min_text_gain.
Every CI comes from one bootstrap over the units the conditions share. The answer is yes only when all three
hold; otherwise no, with each unmet criterion named (contradicted, or not shown at this level). Each criterion is
a one-sided test at (1 - level) / 2; requiring all of them (an intersection-union test) keeps the chance of a
false YES at most that, 2.5% at the default 95% level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from styleprobe.analysis.conditions import describe_setting, is_instantstyle, preset_rows, split_by_setting
from styleprobe.analysis.load import metric_role, require_columns, varying_conditions
from styleprobe.analysis.stats import (
    Bootstrap,
    bootstrap_ci,
    effect_share,
    paired_cells,
    paired_difference,
    paired_differences,
    select,
    simultaneous_differences,
)
from styleprobe.errors import AnalysisError


@dataclass(frozen=True)
class Criterion:
    """What "enough" means; every field is configurable (`analysis.verdict.*`) and printed in the report."""

    style_metric: str = "style_csd"
    leak_metric: str = "leak_clip"
    text_metric: str = "text_clip"
    candidates: tuple[str, ...] = ("style", "style_layout")
    reference: str = "all"
    baseline: str | None = "none"
    style_fraction: float = 0.8
    min_leak_drop: float = 0.0
    min_text_gain: float = 0.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "Criterion":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AnalysisError(f"unknown verdict setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = dict(values)
        if "candidates" in data:
            data["candidates"] = tuple(data["candidates"])
        crit = cls(**data)
        for name in ("style_fraction", "min_leak_drop", "min_text_gain"):
            if not isinstance(getattr(crit, name), (int, float)) or isinstance(getattr(crit, name), bool):
                raise AnalysisError(f"verdict {name}={getattr(crit, name)!r}; give a number")
        if not crit.candidates:
            raise AnalysisError("verdict candidates is empty; name at least one, e.g. [style, style_layout]")
        return crit

    @property
    def metrics(self) -> tuple[str, str, str]:
        return self.style_metric, self.leak_metric, self.text_metric

    def describe(self) -> list[str]:
        """The criterion in words, thresholds included: printed at the top of the verdict."""
        kept = (
            f"(candidate - {self.baseline}) / ({self.reference} - {self.baseline}) on `{self.style_metric}`"
            if self.baseline
            else f"candidate / {self.reference} on `{self.style_metric}` (raw ratio: no baseline condition)"
        )
        return [
            f"style kept: {kept}, lower CI bound >= {self.style_fraction:g}",
            f"leakage lower: candidate - {self.reference} on `{self.leak_metric}`, upper CI bound < {0.0 - self.min_leak_drop:g}",
            f"text followed better: candidate - {self.reference} on `{self.text_metric}`, lower CI bound > {self.min_text_gain:g}",
        ]


@dataclass
class Check:
    """One criterion for one candidate: the estimate, its CI, the threshold and whether it holds."""

    name: str
    metric: str
    estimate: float
    low: float
    high: float
    threshold: float
    passed: bool
    n_units: int
    note: str = ""


@dataclass
class CandidateVerdict:
    candidate: str
    source: str  # the injection whose rows stand for the candidate
    setting: dict[str, Any]  # the other condition columns, fixed (e.g. subtraction=0.5)
    checks: list[Check] = field(default_factory=list)

    @property
    def answer(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def word(self) -> str:
        return "YES" if self.answer else "NO"

    def title(self, quote: str = "") -> str:
        """The candidate and, when several settings were judged, its setting: `style` (subtraction=0.5)."""
        where = describe_setting(self.setting)
        return f"{quote}{self.candidate}{quote}" + (f" ({where})" if where else "")

    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.note}" for c in self.checks if not c.passed]


def judge(
    table: pd.DataFrame, criterion: Criterion = Criterion(), boot: Bootstrap = Bootstrap()
) -> list[CandidateVerdict]:
    """One verdict per candidate and setting (see the module docstring for the rule)."""
    require_columns(table, [*criterion.metrics, "injection", "layers"], "verdict")
    needed = [criterion.reference] + ([criterion.baseline] if criterion.baseline else [])
    for name in needed:
        if not (table["injection"].astype(str) == name).any():
            raise AnalysisError(
                f"verdict: no `{name}` rows to compare with; add {name} to injection.patterns "
                f"(present: {', '.join(sorted(table['injection'].astype(str).unique()))})"
            )
    verdicts = []
    for setting, _ in split_by_setting(table):
        where = select(table, setting)
        ref = where & (table["injection"] == criterion.reference)
        base = where & (table["injection"] == criterion.baseline) if criterion.baseline else None
        for name in criterion.candidates:
            rows, source = preset_rows(table, name)
            cand = where & rows
            verdict = CandidateVerdict(name, source, setting)
            if not cand.any():
                verdict.checks.append(Check("present", "", np.nan, np.nan, np.nan, np.nan, False, 0,
                                            f"no rows for `{name}`; add it to injection.patterns"))
            else:
                leak_lower = metric_role(table, criterion.leak_metric).sign <= 0  # a leak-free rate is better higher
                verdict.checks = [
                    _style_kept(table, criterion, cand, ref, base, boot),
                    _difference(table, criterion.leak_metric, "leakage lower", cand, ref, boot,
                                -criterion.min_leak_drop if leak_lower else criterion.min_leak_drop, below=leak_lower),
                    _difference(table, criterion.text_metric, "text followed better", cand, ref, boot,
                                criterion.min_text_gain, below=False),
                ]
            verdicts.append(verdict)
    return verdicts


def _outcome(ok: bool, contradicted: bool, passed: str) -> str:
    """How a criterion came out: passed, contradicted (the CI lies on the wrong side), or not shown (it straddles)."""
    return passed if ok else ("contradicted" if contradicted else "not shown")


def _interval(est: float, low: float, high: float) -> str:
    return f"{est:+.4f} [{low:+.4f}, {high:+.4f}]"


def _style_kept(
    table: pd.DataFrame, crit: Criterion, cand: pd.Series, ref: pd.Series, base: pd.Series | None, boot: Bootstrap
) -> Check:
    metric, name = crit.style_metric, "style kept"
    if base is None:
        values, design = paired_cells(table, metric, [cand, ref])
        est, low, high = bootstrap_ci(values, lambda m: m[:, 0] / m[:, 1], boot, design)
        ok = bool(np.isfinite(low) and low >= crit.style_fraction)
        word = _outcome(ok, high < crit.style_fraction, "kept")
        note = f"{word}: ratio {est:.3f} [{low:.3f}, {high:.3f}] vs {crit.style_fraction:g} (n={len(values)})"
        return Check(name, metric, est, low, high, crit.style_fraction, ok, len(values), note)
    effect, (est, low, high), n = effect_share(table, metric, cand, ref, base, boot)
    if n == 0:
        return Check(name, metric, np.nan, np.nan, np.nan, crit.style_fraction, False, 0,
                     f"no units shared by the candidate, {crit.reference} and {crit.baseline}")
    if not effect[1] > 0:
        return Check(name, metric, np.nan, np.nan, np.nan, crit.style_fraction, False, n,
                     f"`{crit.reference}` does not raise {metric} over `{crit.baseline}` "
                     f"({_interval(*effect)}, n={n}): there is no style effect to keep a share of")
    ok = bool(low >= crit.style_fraction)
    word = _outcome(ok, high < crit.style_fraction, "kept")
    note = f"{word}: share of {crit.reference}'s effect {est:.3f} [{low:.3f}, {high:.3f}] vs {crit.style_fraction:g} (n={n})"
    return Check(name, metric, est, low, high, crit.style_fraction, ok, n, note)


def _difference(
    table: pd.DataFrame, metric: str, name: str, cand: pd.Series, ref: pd.Series, boot: Bootstrap,
    threshold: float, below: bool,
) -> Check:
    est, low, high, n = paired_difference(table, metric, cand, ref, boot)
    if n == 0:
        return Check(name, metric, np.nan, np.nan, np.nan, threshold, False, 0, "no cells shared with the reference")
    if below:
        ok, contradicted, side = bool(high < threshold), bool(low >= threshold), "<"
    else:
        ok, contradicted, side = bool(low > threshold), bool(high <= threshold), ">"
    word = _outcome(ok, contradicted, "holds")
    return Check(name, metric, est, low, high, threshold, ok, n,
                 f"{word}: difference {_interval(est, low, high)}, needs CI {side} {threshold:g} (n={n})")


def rank_by_style_effect(
    table: pd.DataFrame, criterion: Criterion = Criterion(), boot: Bootstrap = Bootstrap()
) -> dict[str, pd.DataFrame]:
    """Per generated sweep in the table, its targets ranked by style effect, with leakage and text effects.

    One-hot sweeps: the effect of injecting only the target, against `baseline` (none).
    Leave-one-out sweeps: the style lost by removing the target, against `reference` (all); most lost first.
    A ranking makes one claim per target, so each effect carries a simultaneous interval over the sweep's targets
    (`<role>_low` / `<role>_high`: max-statistic bootstrap; every target's interval holds at once with probability
    `level`); the per-target intervals are kept as `<role>_low_unadjusted` / `<role>_high_unadjusted`.
    `attrs["critical"]` holds the style band's multiple of the standard error.
    """
    require_columns(table, ["sweep", "target", "injection"], "ranking")
    out: dict[str, pd.DataFrame] = {}
    by = varying_conditions(table)
    for sweep in sorted(s for s in table["sweep"].astype(str).unique() if s != "preset"):
        against = criterion.reference if sweep.startswith("leave_one_out") else criterion.baseline
        if not against or not (table["injection"] == against).any():
            continue
        rows = table[(table["sweep"] == sweep) | (table["injection"] == against)]
        targets = rows[rows["sweep"] == sweep].drop_duplicates("injection").set_index("injection")["target"]
        merged: pd.DataFrame | None = None
        critical = float("nan")
        for role, metric in zip(("style", "leak", "text"), criterion.metrics):
            if metric not in rows:
                continue
            diff = paired_differences(rows, metric, {"injection": against}, by=by, boot=boot)
            band = simultaneous_differences(rows, metric, {"injection": against}, by=by, boot=boot)
            critical = band.attrs["critical"] if role == "style" else critical
            diff = diff.merge(band, on=by, how="left")
            diff = diff.rename(columns={"mean_diff": f"{role}_diff", "low": f"{role}_low_unadjusted",
                                        "high": f"{role}_high_unadjusted", "simul_low": f"{role}_low",
                                        "simul_high": f"{role}_high"})
            keep = [*by, f"{role}_diff", f"{role}_low", f"{role}_high", f"{role}_low_unadjusted",
                    f"{role}_high_unadjusted"] + (["n_units"] if merged is None else [])
            merged = diff[keep] if merged is None else merged.merge(diff[keep], on=by, how="outer")
        if merged is None or merged.empty:
            continue
        merged.insert(0, "target", merged["injection"].map(targets))
        merged["instantstyle"] = merged["target"].astype(str).map(is_instantstyle)
        merged["against"] = against
        loo = sweep.startswith("leave_one_out")
        merged = merged.sort_values("style_diff", ascending=loo, kind="stable").reset_index(drop=True)
        merged.insert(0, "rank", np.arange(1, len(merged) + 1))
        merged.attrs["critical"] = critical
        out[sweep] = merged
    return out


def headline(verdicts: Sequence[CandidateVerdict]) -> str:
    """One line per candidate: YES/NO and why not."""
    return "\n".join(
        f"{v.title('`')}: {v.word}" + ("" if v.answer else f" ({'; '.join(v.reasons())})") for v in verdicts
    )
