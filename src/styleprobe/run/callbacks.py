"""Hydra callbacks of the sweep command.

A multirun hands its jobs to a launcher (SLURM, submitit's local executor, joblib); a config error found inside the
jobs would fail every one of them, after queueing. `CheckBeforeLaunch` validates the sweep once, in the submitting
process, before any job is launched, and stops with the same one-line error a single run gives.
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
            prepare(config)
        except StyleprobeError as err:
            print(f"styleprobe: error: {err} (nothing was launched)", file=sys.stderr, flush=True)
            sys.exit(2)
