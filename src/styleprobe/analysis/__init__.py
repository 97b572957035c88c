"""Analysis of styleprobe results: tables with bootstrap CIs, ablation figures and the verdict report.

    from styleprobe.analysis import load_results, aggregate, paired_differences, analyze
    table = load_results("results/toy/layer_probe")
    aggregate(table, "style_csd", by=["injection"])
    analyze("results/toy/layer_probe")          # writes results/toy/layer_probe/analysis/report.md

A method benchmark (several methods at their sources' settings, `experiment=benchmark`) gets its own report, built by
`styleprobe.analysis.benchmark` (contenders, method table, Pareto front, cost, departures from the sources' recipes,
published numbers).
It reads only what the store wrote. `styleprobe analyze results_dir=...` runs `analyze` from the command line.
"""

from styleprobe.analysis.load import UNIT_COLUMNS, load_results, metric_columns, metric_label
from styleprobe.analysis.report import analyze
from styleprobe.analysis.settings import AnalysisSettings, Report, default_settings
from styleprobe.analysis.stats import Bootstrap, aggregate, bootstrap_ci, paired_differences
from styleprobe.analysis.verdict import Criterion, judge, rank_by_style_effect

__all__ = [
    "UNIT_COLUMNS", "load_results", "metric_columns", "metric_label",
    "AnalysisSettings", "Report", "analyze", "default_settings",
    "Bootstrap", "aggregate", "bootstrap_ci", "paired_differences",
    "Criterion", "judge", "rank_by_style_effect",
]
