"""Progress of the long steps (generation, per-reference preparation, scoring): counts, rate and ETA.

On a terminal it is a tqdm bar. Anywhere else (a SLURM log, CI, a file) a bar would write a line per refresh,
so it is log lines with the same counts, rate and ETA: one after the first update (the first batch: the rate and
ETA are known from then on), one each time another `every_percent` of the work is done, and one at least every
`every_seconds` while work goes on (10% of a large sweep on a busy machine can take many minutes):

    generate: 144/288 images (50%), 3.21 images/s, elapsed 00:44, ETA 00:44

`progress.mode` (common config) chooses: auto (bar on a terminal, else log lines), bar, log or off.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from styleprobe.errors import ConfigError

log = logging.getLogger("styleprobe")

MODES = ("auto", "bar", "log", "off")


@dataclass
class ProgressSettings:
    mode: str = "auto"
    every_percent: float = 10.0
    every_seconds: float = 60.0


SETTINGS = ProgressSettings()


def configure(mode: str = "auto", every_percent: float = 10.0, every_seconds: float = 60.0) -> None:
    """Set how every later progress report is shown (the CLI calls this with the `progress` config)."""
    if mode not in MODES:
        raise ConfigError(f"progress.mode={mode!r}; choose one of {', '.join(MODES)}")
    if isinstance(every_percent, bool) or not isinstance(every_percent, (int, float)) or not 0 < every_percent <= 100:
        raise ConfigError(f"progress.every_percent={every_percent!r}; give a number in (0, 100], e.g. 10")
    if isinstance(every_seconds, bool) or not isinstance(every_seconds, (int, float)) or not every_seconds > 0:
        raise ConfigError(f"progress.every_seconds={every_seconds!r}; give a number of seconds > 0, e.g. 60")
    SETTINGS.mode, SETTINGS.every_percent, SETTINGS.every_seconds = mode, float(every_percent), float(every_seconds)


def _on_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Progress:
    """Counts done out of `total`, shown as a bar or as a log line per `every_percent`; use as a context manager."""

    def __init__(self, total: int, desc: str, unit: str = "image", leave: bool = True):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = 0
        self.start = time.perf_counter()
        mode = SETTINGS.mode if SETTINGS.mode != "auto" else ("bar" if _on_terminal() else "log")
        self.logging = mode == "log" and self.total > 0
        self._next_percent = SETTINGS.every_percent
        self._last_line: float | None = None  # when the last log line was written; None: none yet
        self.bar: Any = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True, leave=leave)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """`n` more done; `postfix` (e.g. loss=0.12) is shown beside the counts."""
        self.update_to(self.n + n, **postfix)

    def update_to(self, n: int, **postfix: Any) -> None:
        """`n` done in all."""
        step, self.n = n - self.n, n
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(step)
        elif self.logging and self._due():
            log.info("%s", self.line(postfix))
            self._last_line = time.perf_counter()

    def _due(self) -> bool:
        """Whether a log line is due: the first update, another `every_percent` done, the end, or `every_seconds`
        since the last line."""
        percent = 100.0 * self.n / self.total
        crossed = percent + 1e-9 >= self._next_percent
        while self._next_percent <= percent + 1e-9:
            self._next_percent += SETTINGS.every_percent
        first = self._last_line is None
        late = not first and time.perf_counter() - self._last_line >= SETTINGS.every_seconds
        return first or crossed or late or self.n >= self.total

    def line(self, postfix: dict[str, Any] | None = None) -> str:
        """The counts, rate and ETA as one line."""
        from tqdm import tqdm

        elapsed = time.perf_counter() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else None
        extra = "".join(f", {k} {v}" for k, v in (postfix or {}).items())
        return (
            f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100.0 * self.n / max(1, self.total):.0f}%), "
            f"{rate:.2f} {self.unit}s/s, elapsed {tqdm.format_interval(elapsed)}, "
            f"ETA {tqdm.format_interval(eta) if eta is not None else '?'}{extra}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
