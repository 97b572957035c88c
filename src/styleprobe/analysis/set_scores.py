"""How good one set of layers is, measured as the verdict measures a candidate: the numbers a layer-set search decides on.

A set's rows are compared with `all`'s and `none`'s on the cells (reference x prompt) all three share:
  - style kept: (set - none) / (all - none) on the style metric, with its crossed-bootstrap interval (`effect_share`);
  - leakage and text: set - all on those metrics, paired cell by cell (`paired_difference`).
The objective a search maximises is then either the style kept among sets whose leakage is not worse than `all`'s
(`style_kept`, the default), or a scalarised sum, style gain over `none` plus weighted leakage and text changes, each
signed by its metric's better direction (`scalarised`). Rows are chosen by item key, so a set is exactly the images
its search planned, whatever else the results folder holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from styleprobe.analysis.load import metric_role
from styleprobe.analysis.stats import Bootstrap, bootstrap_ci, effect_share, paired_cells, paired_difference
from styleprobe.analysis.verdict import Criterion

OBJECTIVES = ("style_kept", "scalarised")


@dataclass(frozen=True)
class Objective:
    """What a search maximises (see the module docstring); recorded in every search record and report."""

    kind: str = "style_kept"
    leak_weight: float = 1.0  # scalarised: weight of the leakage change (counted against the set when it leaks more)
    text_weight: float = 0.0  # scalarised: weight of the text change (counted for the set when it follows the text better)
    max_leak_rise: float = 0.0  # style_kept: a set is admissible when its leakage is worse than all's by at most this

    def describe(self, crit: Criterion) -> str:
        if self.kind == "scalarised":
            return (f"scalarised: Δ{crit.style_metric} over `{crit.baseline}` + {self.leak_weight:g} x (leakage better "
                    f"than `{crit.reference}` on {crit.leak_metric}) + {self.text_weight:g} x (text better than "
                    f"`{crit.reference}` on {crit.text_metric}); every set admissible")
        rise = f" by more than {self.max_leak_rise:g}" if self.max_leak_rise else ""
        return (f"style kept: the largest share of `{crit.reference}`'s style effect over `{crit.baseline}` on "
                f"{crit.style_metric}, among sets whose leakage ({crit.leak_metric}, point estimate) is not worse than "
                f"`{crit.reference}`'s{rise}")


@dataclass
class SetScore:
    """One set's numbers on the units it was measured on (estimates with their intervals; NaN where undefined)."""

    name: str  # the injection name its rows carry
    members: list[str]
    style_kept: float = math.nan
    style_kept_low: float = math.nan
    style_kept_high: float = math.nan
    style_gain: float = math.nan  # set - none on the style metric
    leak: float = math.nan  # set - all on the leakage metric
    leak_low: float = math.nan
    leak_high: float = math.nan
    text: float = math.nan  # set - all on the text metric
    text_low: float = math.nan
    text_high: float = math.nan
    n_units: int = 0
    admissible: bool = False
    objective: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)

    def keeps(self, fraction: float) -> bool:
        """Whether the style kept's lower bound reaches `fraction` (the search's stopping rule)."""
        return bool(np.isfinite(self.style_kept_low) and self.style_kept_low >= fraction)

    def as_record(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "SetScore":
        return cls(**{k: (math.nan if v is None and k not in ("name", "members", "notes") else v) for k, v in record.items()})


def score_set(
    table: pd.DataFrame, name: str, members: Iterable[str], keys: Iterable[str], all_keys: Iterable[str],
    none_keys: Iterable[str], crit: Criterion, objective: Objective, boot: Bootstrap = Bootstrap(),
) -> SetScore:
    """The set's style kept, leakage and text against `all` and `none`, on the cells the three share."""
    rows, ref, base = (table["key"].isin(set(k)) for k in (keys, all_keys, none_keys))
    out = SetScore(name, list(members))
    effect, (out.style_kept, out.style_kept_low, out.style_kept_high), out.n_units = effect_share(
        table, crit.style_metric, rows, ref, base, boot)
    if out.n_units and not effect[1] > 0:
        out.notes.append(f"`{crit.reference}` does not raise {crit.style_metric} over `{crit.baseline}` on these units "
                         f"({effect[0]:+.4f} [{effect[1]:+.4f}, {effect[2]:+.4f}]): no style effect to keep a share of")
    values, design = paired_cells(table, crit.style_metric, [rows, base])
    if len(values):
        out.style_gain = float(np.mean(values[:, 0] - values[:, 1]))
    out.leak, out.leak_low, out.leak_high, _ = paired_difference(table, crit.leak_metric, rows, ref, boot)
    out.text, out.text_low, out.text_high, _ = paired_difference(table, crit.text_metric, rows, ref, boot)
    leak_sign = metric_role(table, crit.leak_metric).sign or -1  # leakage: lower is better unless declared otherwise
    text_sign = metric_role(table, crit.text_metric).sign or 1
    style_sign = metric_role(table, crit.style_metric).sign or 1
    leak_worse = -leak_sign * out.leak if np.isfinite(out.leak) else 0.0  # > 0: leaks more than all
    text_better = text_sign * out.text if np.isfinite(out.text) else 0.0
    if objective.kind == "scalarised":
        out.admissible = True
        out.objective = style_sign * out.style_gain - objective.leak_weight * leak_worse + objective.text_weight * text_better
    else:
        out.admissible = bool(leak_worse <= objective.max_leak_rise + 1e-12)
        out.objective = out.style_kept
    return out


def style_effect(table: pd.DataFrame, all_keys: Iterable[str], none_keys: Iterable[str], crit: Criterion,
                 boot: Bootstrap = Bootstrap()) -> tuple[float, float, float, int]:
    """`all` - `none` on the style metric with its interval and cell count: the effect every share is a share of."""
    values, design = paired_cells(table, crit.style_metric,
                                  [table["key"].isin(set(all_keys)), table["key"].isin(set(none_keys))])
    if not len(values):
        return math.nan, math.nan, math.nan, 0
    return (*bootstrap_ci(values, lambda m: m[:, 0] - m[:, 1], boot, design), len(values))


def best(scores: list[SetScore]) -> tuple[SetScore, bool]:
    """The candidate with the largest objective among the admissible ones (the first in candidate order on a tie), and
    whether it is admissible: when none is, the largest objective of all, so a search can go on and say so."""
    finite = [s for s in scores if np.isfinite(s.objective)] or list(scores)
    pool = [s for s in finite if s.admissible]
    admissible = bool(pool)
    pool = pool or finite
    top = max(range(len(pool)), key=lambda i: (pool[i].objective if np.isfinite(pool[i].objective) else -math.inf, -i))
    return pool[top], admissible
