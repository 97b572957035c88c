"""The step every toy training stage shares: backward, optimizer and schedule step, the loss kept and logged."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger("styleprobe")


def optimise(optimizer: Any, schedule: Any, loss: Any, losses: list[float], step: int, steps: int, name: str,
             log_every: int, max_grad_norm: float | None = None) -> None:
    """One update from `loss` (gradients clipped to `max_grad_norm` if given); appends it to `losses` and logs the
    mean of the last `log_every` every so often."""
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm is not None:
        import torch

        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_grad_norm)
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
    if step % log_every == 0:
        log.info("%s step %d/%d: loss %.4f", name, step, steps, np.mean(losses[-log_every:]))
