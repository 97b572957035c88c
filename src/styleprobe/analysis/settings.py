"""What an analysis is asked (the `analysis` config group as typed settings) and what it answers (`Report`): one
module both report writers, the probe's and the benchmark's, import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from styleprobe.analysis import figures
from styleprobe.analysis.benchmark import BenchmarkSettings, is_benchmark
from styleprobe.analysis.stats import Bootstrap
from styleprobe.analysis.verdict import CandidateVerdict, Criterion
from styleprobe.config import CONFIG_DIR
from styleprobe.errors import AnalysisError


@dataclass(frozen=True)
class AnalysisSettings:
    """The `analysis` config group as typed settings."""

    bootstrap: Bootstrap = Bootstrap()
    criterion: Criterion = Criterion()
    grid_rows: tuple[str, ...] = ("none", "all", "style", "style_layout")
    grid_columns: int = 6
    formats: tuple[str, ...] = figures.FORMATS
    kind: str = "auto"  # probe | benchmark | auto (see experiments/analysis/default.yaml)
    benchmark: BenchmarkSettings = BenchmarkSettings()
    grid_top: int = 3  # top-ranked targets of each generated sweep shown as grid rows and labelled in the trade-offs

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric columns this analysis needs: the verdict's, the benchmark's, or both when the kind is decided later."""
        probe, bench = self.criterion.metrics, (self.benchmark.style_metric, self.benchmark.leak_metric, self.benchmark.text_metric)
        return {"probe": probe, "benchmark": bench}.get(self.kind, tuple(dict.fromkeys((*probe, *bench))))

    def kind_for(self, table: pd.DataFrame) -> str:
        """probe or benchmark: as set, or for `auto` by what the table holds."""
        return self.kind if self.kind != "auto" else ("benchmark" if is_benchmark(table) else "probe")

    @classmethod
    def from_config(cls, cfg: Any) -> "AnalysisSettings":
        data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        boot = data.get("bootstrap", {})
        unknown = sorted(set(boot) - set(Bootstrap.__dataclass_fields__))
        if unknown:
            raise AnalysisError(f"unknown analysis.bootstrap setting {', '.join(unknown)}; known: "
                                f"{', '.join(Bootstrap.__dataclass_fields__)}")
        try:
            bootstrap = Bootstrap(int(boot.get("n_boot", 2000)), float(boot.get("level", 0.95)), int(boot.get("seed", 0)),
                                  str(boot.get("scheme", "two_way")), bool(boot.get("expanded", True)))
        except (TypeError, ValueError) as err:
            raise AnalysisError(f"analysis.bootstrap has a value that is not a number ({err}); e.g. n_boot=2000 level=0.95") from None
        grid = data.get("grid", {})
        formats = tuple(data.get("formats", figures.FORMATS))
        bad = [f for f in formats if f not in ("png", "pdf", "svg")]
        if bad or not formats:
            raise AnalysisError(f"analysis.formats={list(formats)}; choose from png, pdf, svg")
        kind = str(data.get("kind", "auto"))
        if kind not in ("auto", "probe", "benchmark"):
            raise AnalysisError(f"analysis.kind={kind!r}; choose auto, probe or benchmark")
        return cls(bootstrap, Criterion.from_mapping(data.get("verdict", {})), tuple(grid.get("rows", cls.grid_rows)),
                   int(grid.get("max_columns", 6)), formats, kind,
                   BenchmarkSettings.from_mapping(data["benchmark"]) if data.get("benchmark") else BenchmarkSettings(),
                   _count(grid.get("top_targets", cls.grid_top), "analysis.grid.top_targets"))


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AnalysisError(f"{name}={value!r}; give a whole number >= 0, e.g. 3")
    return value


def default_settings(**overrides: Any) -> AnalysisSettings:
    """The settings in experiments/analysis/default.yaml, e.g. for a notebook.

    Overrides use dotted keys, `default_settings(**{"verdict.style_fraction": 0.9})`, or `verdict__style_fraction=0.9`.
    """
    cfg = OmegaConf.load(CONFIG_DIR / "analysis" / "default.yaml")
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return AnalysisSettings.from_config(cfg)


@dataclass
class Report:
    """What one analysis wrote and concluded."""

    out_dir: Path
    verdicts: list[CandidateVerdict]
    kind: str = "probe"
    baselines: list[CandidateVerdict] = field(default_factory=list)  # `none` measured as a candidate is, not judged  # which report was written: probe or benchmark
    headline: list[str] = field(default_factory=list)  # the benchmark's summary lines for the log
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # section -> why
    missing: dict[str, str] = field(default_factory=dict)  # section -> the conditions to add to get it ("add `none` ...")
    captions: dict[str, list[str]] = field(default_factory=dict)  # figure name -> what the report says beside it
    unscored: list[str] = field(default_factory=list)  # metric columns no row has a score for
    seconds: float = 0.0

    @property
    def path(self) -> Path:
        return self.out_dir / "report.md"
