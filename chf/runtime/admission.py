"""Admission by latency budget: a front-end takes a request only if the requests already in flight would be answered
within the budget; otherwise it refuses at once (Gy 3004 DIAMETER_TOO_BUSY, Nchf 503 with Retry-After).

A bound by count (16,384 Gy requests in flight, 8,192 Nchf) says nothing about time: at 3x capacity the queue
filled to the count, accepted requests waited 8.6 s (p99 33 s) and the refusals came back after 10 s, when every
client had given up (issue 12). What a client can wait is a time, so the bound is a time:

    expected wait = requests in flight / the rate at which they are answered  >  budget  ->  refuse

The answer rate is measured, not configured: answers are counted in windows of about WINDOW seconds, over the
time at least one request was in flight. In a window where more than `floor` were in flight (a queue stood) the
rate is the front-end's throughput, and an average of such windows' rates, each weighted by that time, follows the
machine (fsync or not, a neighbour's load, the engine's work per request). In a window without a queue the server
kept up, so what it answered is still a measurement of at least that rate: it gives the first estimate (a warm-up
that never had more than `floor` in flight left the rate at 0 before, and then nothing was refused: issue 12's
flaky Gy overload test), but does not move it after (a trickle must not make a quiet server refuse a burst, and
the answers of one read, charged within one turn of the loop, measure tens of thousands a second). Up to `floor`
requests in flight, and until a rate was measured, everything is admitted (a cold start, a trickle); `limit`
stays the hard bound by count, for memory.

Sans-IO: the caller passes the time (a monotonic clock in seconds). Cost per request: a few attribute reads and
one comparison; a division only once `floor` requests are in flight.
"""

from __future__ import annotations

WINDOW = 0.05  # seconds per rate sample
WEIGHT = 0.25  # of the newest window in the average


class Admission:
    __slots__ = (
        "budget",
        "busy_since",
        "busy_time",
        "completed",
        "floor",
        "in_flight",
        "limit",
        "queued",
        "rate",
        "window_start",
    )

    def __init__(self, budget: float, limit: int, floor: int = 64) -> None:
        """`budget`: seconds a request may expect to wait for its answer (0: no budget, the count alone)."""
        self.budget = budget
        self.limit = limit
        self.floor = floor
        self.in_flight = 0
        self.rate = 0.0  # answers per second (see the module's docstring); 0 until measured
        self.completed = 0  # answers of the current window
        self.busy_time = 0.0  # seconds of the current window with requests in flight, up to busy_since
        self.busy_since = 0.0  # start of the current such stretch (or of the window)
        self.queued = False  # more than `floor` were in flight during the current window
        self.window_start = 0.0

    def admit(self) -> bool:
        """Whether a new request may be taken now (the caller then calls started())."""
        n = self.in_flight
        if n >= self.limit:
            return False
        if n < self.floor or not self.budget or not self.rate:
            return True
        return n < self.budget * self.rate

    def expected_wait(self) -> float:
        """Seconds the requests in flight are expected to take (0 while unmeasured): for metrics and tests."""
        return self.in_flight / self.rate if self.rate else 0.0

    def started(self, now: float) -> None:
        n = self.in_flight = self.in_flight + 1
        if n == 1:
            self.busy_since = now
        elif n > self.floor:
            self.queued = True

    def finished(self, now: float) -> None:
        self.completed += 1
        if self.in_flight == 1:
            self.busy_time += now - self.busy_since
        self.in_flight -= 1
        if now - self.window_start >= WINDOW:
            self._roll(now)

    def _roll(self, now: float) -> None:
        busy = self.busy_time + (now - self.busy_since if self.in_flight else 0.0)
        if self.completed and busy > 0:
            measured = self.completed / busy
            if not self.rate:
                self.rate = measured  # a first measurement, if need be one where the server kept up
            elif not self.queued:
                pass  # the server kept up: a lower bound only, and from one turn of the loop an outlier
            else:
                self.rate += min(1.0, WEIGHT * busy / WINDOW) * (measured - self.rate)
        self.completed = 0
        self.busy_time = 0.0
        self.queued = self.in_flight > self.floor
        self.busy_since = self.window_start = now
