"""Counted events logged as a summary: at most one line per interval, with the counts by reason since the last.

Refusals under overload or abuse come by the thousand per second; a log line each would cost more than the
refusal itself and fill the disk (78 MB in 20 s, measured). The counts stay exact (`totals`); the log shows them
in one line per interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLog:
    def __init__(
        self,
        logger: logging.Logger,
        event: str,
        *,
        interval: float = 10.0,
        level: int = logging.WARNING,
        quiet: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`event`: the event= of the summary line. `quiet`: reasons that are routine, not trouble: a summary of
        only those is logged at INFO instead of `level`."""
        self.logger = logger
        self.event = event
        self.interval = interval
        self.level = level
        self.quiet = quiet
        self.clock = clock
        self.totals: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.logged = -interval  # when the last line was logged: the first event is logged at once
        self.since = clock()  # the start of the counts in `pending`

    def note(self, reason: str) -> None:
        self.totals[reason] = self.totals.get(reason, 0) + 1
        self.pending[reason] = self.pending.get(reason, 0) + 1
        now = self.clock()
        if now - self.logged >= self.interval:
            self.flush(now)

    def flush_due(self) -> None:
        """Log the counts if the interval has passed: for a periodic caller, so that the last counts of a burst
        do not wait for the next event."""
        now = self.clock()
        if self.pending and now - self.logged >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log what was counted since the last line (nothing when nothing was)."""
        if not self.pending:
            return
        now = self.clock() if now is None else now
        level = logging.INFO if self.quiet.issuperset(self.pending) else self.level
        counts = ",".join(f"{reason}:{n}" for reason, n in sorted(self.pending.items()))
        self.logger.log(level, "event=%s counts=%s seconds=%.1f", self.event, counts, now - self.since)
        self.pending.clear()
        self.logged = self.since = now
