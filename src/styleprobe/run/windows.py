"""Denoising windows: when, along the trajectory, a pattern's layers act.

A window `[start, end)` is a pair of fractions of the trajectory, 0 the first step and 1 after the last. With a
sampler of n steps, step i (0-based) lies in the window when start <= i / n < end: the pattern's layers act on those
steps, and the method acts as `none` on the others. The full window `[0, 1]` is every step, today's behaviour:
items with it keep the keys they had before windows existed.

Windows are an axis like patterns (`injection.windows`, or a method entry's own `windows`), crossed with the others:
- `full`: `[0, 1]`;
- an explicit pair `[0.0, 0.3]`;
- `one_hot:window:K`: K equal windows `[k/K, (k+1)/K)`;
- `from_start:K`: `[0, k/K]` for k = 1..K (the last is `full`);
- `to_end:K`: `[k/K, 1]` for k = 0..K-1 (the first is `full`).

diffusers' `IPAdapterScaleCutoffCallback(cutoff_step_index=c)` sets the adapter's scale to 0 after step c, so steps
0..c inject: that is the window `[0, (c + 1) / n]` here (tested on the tiny model).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from styleprobe.errors import ConfigError

SWEEPS = ("one_hot:window", "from_start", "to_end")


@dataclass(frozen=True)
class Window:
    """A denoising window `[start, end)` in fractions of the trajectory, and the sweep it came from."""

    start: float
    end: float
    sweep: str = "explicit"  # full | explicit | one_hot_window | from_start | to_end

    @property
    def name(self) -> str:
        """`0.00-0.30`: how rows and reports name the window."""
        return f"{self.start:.2f}-{self.end:.2f}"

    @property
    def full(self) -> bool:
        return self.start <= 0.0 and self.end >= 1.0

    def steps(self, n: int) -> range:
        """The step indices (0-based) of an n-step trajectory that lie in the window: start <= i / n < end."""
        first = next((i for i in range(n) if i / n >= self.start), n)
        last = next((i for i in range(n - 1, -1, -1) if i / n < self.end), -1)
        return range(first, max(first, last + 1))

    def columns(self, n: int) -> dict[str, Any]:
        """The row's window columns for an n-step sampler (`window_steps`: its first and last step, `0-8`)."""
        return _columns(self, n)


@functools.lru_cache(maxsize=1024)
def _columns(window: Window, n: int) -> dict[str, Any]:
    """Once per window and step count, not once per item (read-only: rows copy it)."""
    steps = window.steps(n)
    return {"window": window.name, "window_start": window.start, "window_end": window.end,
            "window_steps": f"{steps.start}-{steps.stop - 1}" if len(steps) else ""}


FULL = Window(0.0, 1.0, "full")


def expand_windows(specs: Sequence[Any], where: str = "injection.windows") -> tuple[Window, ...]:
    """The windows of a `windows` list, in order, each once; a one-line error naming the fix for a bad entry."""
    if not specs:
        raise ConfigError(f"{where} is an empty list; give at least one window, e.g. [full]")
    out: list[Window] = []
    for spec in specs:
        for window in _expand(spec, where):
            if not any((w.start, w.end) == (window.start, window.end) for w in out):
                out.append(window)
    return tuple(out)


def _expand(spec: Any, where: str) -> list[Window]:
    if isinstance(spec, str):
        text = spec.strip()
        if text == "full":
            return [FULL]
        match = re.fullmatch(r"(one_hot:window|from_start|to_end):(-?\d+)", text)
        if not match:
            raise ConfigError(f"{where}: unknown window {spec!r}; give full, a pair [start, end] such as [0.0, 0.3], "
                              f"or a sweep {', '.join(s + ':K' for s in SWEEPS)}")
        kind, k = match[1], int(match[2])
        if k < 1:
            raise ConfigError(f"{where}: {spec!r} asks for {k} windows; give K >= 1, e.g. {kind}:5")
        if kind == "one_hot:window":
            return [_window(i / k, (i + 1) / k, "one_hot_window") for i in range(k)]
        if kind == "from_start":
            return [_window(0.0, i / k, "from_start") for i in range(1, k + 1)]
        return [_window(i / k, 1.0, "to_end") for i in range(k)]
    if isinstance(spec, Sequence) and len(spec) == 2 and all(_is_number(v) for v in spec):
        start, end = float(spec[0]), float(spec[1])
        if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
            raise ConfigError(f"{where}: window [{start:g}, {end:g}] lies outside [0, 1]; give fractions of the "
                              f"trajectory, 0 the first step and 1 after the last, e.g. [0.0, 0.3]")
        if start >= end:
            fix = [end, start] if start != end else ([start, 1.0] if start < 1 else [0.0, start])
            raise ConfigError(f"{where}: window [{start:g}, {end:g}] is empty or reversed; give start < end, "
                              f"e.g. [{fix[0]:g}, {fix[1]:g}]")
        return [FULL if (start, end) == (0.0, 1.0) else Window(start, end)]
    raise ConfigError(f"{where}: window {spec!r} is neither full, a pair [start, end] nor a sweep "
                      f"({', '.join(s + ':K' for s in SWEEPS)})")


def _window(start: float, end: float, sweep: str) -> Window:
    return FULL if (start, end) == (0.0, 1.0) else Window(start, end, sweep)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_steps(windows: Sequence[Window], steps: int, where: str) -> None:
    """Every window holds at least one step of an n-step sampler, else a one-line error naming the fix."""
    for window in windows:
        if not len(window.steps(steps)):
            first = min(math.ceil(window.start * steps), steps - 1)
            raise ConfigError(
                f"{where}: window {window.name} holds no step of the sampler's {steps} (step i lies in [start, end) "
                f"when start <= i/{steps} < end); widen it, e.g. [{first / steps:.2f}, {min(1.0, (first + 1) / steps):.2f}], "
                f"or raise sampler.steps"
            )
