"""Progress for output that is not a terminal: log lines with the elapsed time and an ETA, at most one per
``every`` seconds unless forced. Lines go to the ``dgm_pyro.*`` loggers at level INFO (the CLI prints them
on stderr; ``--quiet`` silences them); on a terminal the commands show tqdm bars instead."""

from __future__ import annotations

import logging
import time

__all__ = ["Heartbeat", "duration"]


def duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Heartbeat:
    """Times one task of ``total`` units and logs progress lines on ``logger``.

    ``beat(done, message)`` logs ``message; <elapsed> elapsed, ETA <left>`` when ``every`` seconds have passed
    since the last line (or always with ``force``); the ETA extrapolates the rate since ``start`` units and
    is followed by ``eta_note`` (for example, that early stopping may end sooner).
    """

    def __init__(self, logger: logging.Logger, total: float, start: float = 0.0, every: float = 30.0,
                 eta_note: str = ""):
        self.logger, self.total, self.start_units, self.every = logger, total, start, every
        self.eta_note = eta_note
        self.start = self.last = time.perf_counter()

    def eta(self, done: float) -> str:
        elapsed = time.perf_counter() - self.start
        if done <= self.start_units:
            return f"{duration(elapsed)} elapsed"
        left = max(self.total - done, 0) * elapsed / (done - self.start_units)
        return f"{duration(elapsed)} elapsed, ETA {duration(left)}{self.eta_note}"

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.every

    def beat(self, done: float, message: str, force: bool = False) -> None:
        if force or self.due():
            self.last = time.perf_counter()
            self.logger.info("%s; %s", message, self.eta(done))
