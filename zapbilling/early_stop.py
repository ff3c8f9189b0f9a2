"""A stop signal (SIGTERM, SIGINT) that arrives while a process is still starting.

Without this, SIGTERM during start-up killed the process with the signal's default action
(exit status -15, nothing logged) and SIGINT raised KeyboardInterrupt wherever start-up was.
`EarlyStop.install()` runs first thing in `serve` and in each worker; the signal is recorded,
start-up finishes what it is doing (a migration is never cut in half), and the process then
stops without serving, with one line (`stopped during start-up (SIGTERM), before serving`)
and exit status 0. Once the event loop runs, graceful.py takes the signals over.

No aiohttp here: the supervisor of workers imports it too.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("zapbilling")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class EarlyStop:
    signal: int | None = None
    """The first stop signal received, if any."""
    signals: tuple[int, ...] = field(default=STOP_SIGNALS)
    """The signals this process stops on (a worker ignores SIGINT: its supervisor decides)."""

    @classmethod
    def install(cls, signals: tuple[int, ...] = STOP_SIGNALS) -> "EarlyStop":
        early = cls(signals=signals)
        for sig in signals:
            signal.signal(sig, early._record)
        return early

    def _record(self, signum: int, _: FrameType | None) -> None:
        self.record(signum)

    def record(self, signum: int) -> None:
        self.signal = self.signal or signum

    def log_stopped(self, label: str = "") -> None:
        """The one line of a process stopped before it served."""
        name = signal.Signals(self.signal).name if self.signal else "a stop signal"
        log.info("stopped during start-up (%s), before serving%s", name, label)
