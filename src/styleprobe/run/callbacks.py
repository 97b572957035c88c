"""Hydra callbacks of the sweep command.

A multirun hands its jobs to a launcher (SLURM, submitit's local executor, joblib); a config error found inside the
jobs would fail every one of them, after queueing. `CheckBeforeLaunch` validates the sweep once, in the submitting
process, before any job is launched, and stops with the same one-line error a single run gives. `AnalyzeAfterMultirun`
writes the report once after a multirun whose jobs do not (the Optuna sweeper's layer-mask trials).
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckBeforeLaunch(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Plan the sweep with the overrides every job shares (no weights are read); a bad input exits with code 2."""
        from styleprobe.errors import StyleprobeError
        from styleprobe.run.sweep import prepare

        try:
            if config.get("search") and config.search.get("kind", "none") != "none":
                from styleprobe.run.search import check

                check(config)  # a search's own settings and unit split too
            else:
                prepare(config)
        except StyleprobeError as err:
            print(f"styleprobe: error: {err} (nothing was launched)", file=sys.stderr, flush=True)
            sys.exit(2)


class AnalyzeAfterMultirun(Callback):
    """Write the results folder's report once, after the last job of a multirun whose jobs skip it (the Optuna
    sweeper's mask trials, `experiment=layer_masks`): the Pareto front of every mask is drawn from it."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("analyze", False):
            return
        from styleprobe.analysis.report import analyze, log_report
        from styleprobe.analysis.settings import AnalysisSettings
        from styleprobe.errors import StyleprobeError

        try:
            settings = AnalysisSettings.from_config(config.analysis)
            log_report(analyze(str(config.results_dir), settings), settings)
        except StyleprobeError as err:
            print(f"styleprobe: error: {err} (the trials' results are stored; run styleprobe analyze later)",
                  file=sys.stderr, flush=True)
