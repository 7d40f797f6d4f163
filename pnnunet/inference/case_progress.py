"""Progress of a long prediction of many cases (a fold's final validation on a CPU): one log line per
case with its tiles, mirrorings and time, and the remaining time estimated from the forward passes
still to do (tiles × mirrorings of the remaining cases) at the rate measured so far."""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class CaseProgress:
    """Per-case progress lines for ``tiles[i]`` tiles per case, each predicted ``mirrorings`` times."""

    def __init__(self, tiles: Sequence[int], mirrorings: int):
        self.tiles = [int(t) for t in tiles]
        self.mirrorings = max(1, int(mirrorings))
        self.seconds = 0.0
        self.passes_done = 0

    def estimate_remaining(self, done: int) -> float:
        """Seconds for the cases after the first ``done`` ones, at the rate measured so far."""
        remaining = sum(self.tiles[done:]) * self.mirrorings
        return self.seconds / self.passes_done * remaining if self.passes_done else float("nan")

    def case_done(self, index: int, case: str, seconds: float) -> str:
        """Record case ``index`` (0-based) as done in ``seconds``; log and return its line."""
        self.seconds += seconds
        self.passes_done += self.tiles[index] * self.mirrorings
        n, t = len(self.tiles), self.tiles[index]
        work = f"{t} tile{'s' if t != 1 else ''}" + (f" × {self.mirrorings} mirrorings" if self.mirrorings > 1
                                                     else ", no mirroring")
        line = f"case {index + 1}/{n} {case}: {work} in {seconds:.1f} s"
        if index + 1 < n:
            line += f"; estimated remaining {format_duration(self.estimate_remaining(index + 1))}"
        log.info(line)
        return line
