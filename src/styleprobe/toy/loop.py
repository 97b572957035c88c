"""The step every toy training stage shares: backward, optimizer and schedule step, the loss kept and logged."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("styleprobe")


def optimise(optimizer: Any, schedule: Any, loss: Any, losses: list[float], step: int, steps: int, name: str,
             log_every: int) -> None:
    """One update from `loss`; appends it to `losses` and logs the mean of the last `log_every` every so often."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
    if step % log_every == 0:
        log.info("%s step %d/%d: loss %.4f", name, step, steps, np.mean(losses[-log_every:]))
