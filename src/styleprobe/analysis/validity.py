"""How well each metric tells the toy judge's positives from its negatives: the metrics' validity, in the toy world.

The toy world's judge (`metrics/judge.py`) says, per image and nearly without error, whether the output has the
reference's style (`judge_style`), the prompted shape (`judge_shape`) and the reference's shape instead
(`judge_leak`). Against that ground truth each scorer metric of a table gets, per judge column, the area under the
ROC curve of its scores for judge-positive (1) against judge-negative (0) images:

    AUC = U / (n_pos * n_neg),  U = the Mann-Whitney statistic: pairs with the positive image scored higher, ties half.

Each metric is read so that higher means more of what it measures (`metric_role`): a leakage metric as it is
(higher, more leakage) unless it is better higher (a leak-free rate, higher = less leakage), which is flipped;
style, text and reference similarity as they are. So 1 separates perfectly in the expected direction, 0.5 is chance
and below 0.5 is the wrong way round; a leakage metric is expected high on judge_leak = 1 images, a style metric on
judge_style = 1 images, a text metric on judge_shape = 1 images. The pair whose roles match is the metric's validity;
the others say what else it picks up. Images are pooled over every condition of the table (images are not
independent units, so the AUCs describe these images; they carry no interval). Findings about the toy, not SDXL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from styleprobe.analysis.load import metric_columns, metric_role
from styleprobe.metric_roles import DEFAULT_BETTER, MetricRole

#: The start of the judge's model label (`metrics/judge.py`): how its columns are told apart from the scorers'.
JUDGE_LABEL = "toy-world judge"
#: What a judge column's positive (1) means, by its role.
POSITIVE: dict[str, str] = {"style": "the reference's style", "text": "the prompted shape",
                            "leakage": "the reference's shape instead"}
COLUMNS = ("judge_column", "judge_role", "metric", "metric_role", "orientation", "matched", "auc", "n_pos", "n_neg",
           "model")


def judge_columns(table: pd.DataFrame) -> list[str]:
    """The metric columns the toy judge scored (their `<column>_model` names it)."""
    return [c for c in metric_columns(table)
            if table[f"{c}_model"].dropna().astype(str).str.startswith(JUDGE_LABEL).any()]


def auc(positives: Sequence[float] | np.ndarray, negatives: Sequence[float] | np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half: Mann-Whitney U / (n_pos * n_neg); NaN if either is
    empty. Missing values are left out."""
    pos = np.asarray(positives, dtype=float)
    neg = np.asarray(negatives, dtype=float)
    pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = pd.Series(np.concatenate([pos, neg])).rank(method="average").to_numpy()[: len(pos)]
    u = ranks.sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def orientation(role: MetricRole) -> tuple[int, str]:
    """(+1 or -1, words): how a metric is read so that higher means more of what it measures."""
    what = {"style": "style", "text": "text alignment", "leakage": "leakage", "reference": "similarity to the reference",
            "quality": "quality"}.get(role.role, "the score")
    flipped = role.has_direction and DEFAULT_BETTER[role.role] != "none" and role.better != DEFAULT_BETTER[role.role]
    return (-1, f"lower = more {what} (flipped)") if flipped else (1, f"higher = more {what}")


def validity(table: pd.DataFrame) -> pd.DataFrame:
    """One row per judge column x scorer metric: its AUC for judge-positive vs judge-negative images, oriented by the
    metric's role, with the counts of positives and negatives that both have a score. Empty without judge columns."""
    judges = judge_columns(table)
    metrics = [m for m in metric_columns(table) if m not in judges and table[m].notna().any()]
    rows = []
    for j in judges:
        j_role = metric_role(table, j)
        labels = table[j]
        for m in metrics:
            role = metric_role(table, m)
            sign, words = orientation(role)
            scored = labels.notna() & table[m].notna()
            values = sign * table.loc[scored, m].to_numpy(dtype=float)
            positive = labels[scored].to_numpy(dtype=float) == 1
            models = sorted({str(v) for v in table.loc[scored, f"{m}_model"].dropna().unique()})
            rows.append({"judge_column": j, "judge_role": j_role.role, "metric": m, "metric_role": str(role),
                         "orientation": words, "matched": role.role == j_role.role,
                         "auc": auc(values[positive], values[~positive]), "n_pos": int(positive.sum()),
                         "n_neg": int((~positive).sum()), "model": "; ".join(models)})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def report_section(table: pd.DataFrame, report: Any) -> list[str]:
    """The report's "Metric validity (toy judge)" section; writes `tables/metric_validity.csv` into `report.out_dir`
    (listed in `report.tables`). Nothing, and no file, when the table has no judge columns."""
    frame = validity(table)
    if frame.empty:
        return []
    path = report.out_dir / "tables" / "metric_validity.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    report.tables.append(path)
    return markdown(frame)


def markdown(frame: pd.DataFrame) -> list[str]:
    """The validity table as report lines: a metric per row, a judge column per column, the matched cell in bold."""
    judges = list(dict.fromkeys(frame["judge_column"]))
    roles = dict(zip(frame["judge_column"], frame["judge_role"]))
    lines = ["## Metric validity (toy judge)", "",
             "How well each metric separates the images in which the toy world's judge finds "
             + ", ".join(f"{POSITIVE.get(roles[j], 'a positive')} (`{j}` = 1)" for j in judges)
             + " from those in which it does not (= 0): AUC, the chance that a judge-positive image scores higher "
             "than a judge-negative one (Mann-Whitney U / (n+ x n-), ties half), with each metric read so that higher "
             "means more of what it measures (its orientation: a leak-free rate, better higher, is read flipped). "
             "1: separates perfectly, 0.5: chance, below 0.5: the wrong way round. **Bold**: the judge column "
             "that measures what the metric measures (its validity). Every image of the table is pooled; "
             "`n+/n-` count the images with both a judge label and a score. Findings about the toy, not about SDXL.", "",
             "| metric | measures | orientation | " + " | ".join(f"`{j}` AUC (n+/n-)" for j in judges) + " |",
             "|---|---|---|" + "---|" * len(judges)]
    for metric, part in frame.groupby("metric", sort=False):
        cells = []
        for j in judges:
            r = part[part["judge_column"] == j].iloc[0]
            value = "n/a" if pd.isna(r["auc"]) else f"{r['auc']:.3f}"
            value = f"**{value}**" if r["matched"] else value
            cells.append(f"{value} ({r['n_pos']}/{r['n_neg']})")
        first = part.iloc[0]
        lines.append(f"| `{metric}` | {MetricRole.parse(first['metric_role']).describe()} | {first['orientation']} | "
                     + " | ".join(cells) + " |")
    return lines + ["", "Per judge column and metric, with the models: `tables/metric_validity.csv`.", ""]
