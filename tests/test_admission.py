"""chf.runtime.admission without sockets: a request is admitted while those in flight are expected to be answered
within the budget, at the answer rate measured while busy."""

from __future__ import annotations

from chf.runtime.admission import WINDOW, Admission


def serve(adm: Admission, rate: float, seconds: float, offered: float, now: float = 0.0) -> tuple[int, int, float]:
    """A server answering `rate` requests per second in FIFO order, offered `offered` per second: (admitted,
    refused, now). Steps of 1 ms."""
    admitted = refused = 0
    credit_in = credit_out = 0.0
    step = 0.001
    for _ in range(int(seconds / step)):
        now += step
        credit_in += offered * step
        while credit_in >= 1:
            credit_in -= 1
            if adm.admit():
                adm.started(now)
                admitted += 1
            else:
                refused += 1
        credit_out += rate * step
        while credit_out >= 1 and adm.in_flight:
            credit_out -= 1
            adm.finished(now)
        if not adm.in_flight:
            credit_out = 0.0
    return admitted, refused, now


def test_everything_is_admitted_below_capacity() -> None:
    adm = Admission(0.25, 100_000)
    admitted, refused, _ = serve(adm, rate=2000, seconds=2, offered=1000)
    assert refused == 0 and admitted == 2000


def test_at_three_times_capacity_the_wait_stays_within_the_budget() -> None:
    adm = Admission(0.25, 100_000)
    admitted, refused, _ = serve(adm, rate=2000, seconds=5, offered=6000)
    # The queue never holds more than the budget's worth (plus the measuring error), and the server stays busy.
    assert adm.in_flight <= 0.25 * 2000 * 1.3
    assert admitted >= 0.95 * 2000 * 5 and refused > 0
    assert 1500 < adm.rate < 2500


def test_the_estimate_follows_a_slower_machine() -> None:
    adm = Admission(0.1, 100_000)
    _, _, now = serve(adm, rate=4000, seconds=2, offered=8000)
    fast = adm.rate
    serve(adm, rate=1000, seconds=3, offered=8000, now=now)
    assert fast > 3000 and adm.rate < 1300
    assert adm.in_flight <= 0.1 * 1000 * 1.5


def test_idle_windows_only_raise_the_estimate() -> None:
    adm = Admission(0.25, 100_000)
    _, _, now = serve(adm, rate=2000, seconds=1, offered=4000)
    measured = adm.rate
    serve(adm, rate=2000, seconds=2, offered=50, now=now)  # a trickle: windows go idle
    assert adm.rate >= measured * 0.99


def test_the_count_and_the_floor() -> None:
    adm = Admission(0.25, 3, floor=2)
    for _ in range(3):
        assert adm.admit()
        adm.started(0.0)
    assert not adm.admit()  # the count bound, whatever the rate
    cold = Admission(0.0001, 1000, floor=64)
    for _ in range(500):  # nothing measured yet: admitted up to the count
        assert cold.admit()
        cold.started(0.0)
    assert cold.expected_wait() == 0.0
    cold.finished(WINDOW * 2)
    assert cold.rate == 0.0 or cold.expected_wait() > 0


def test_a_server_that_keeps_up_still_measures_a_rate_and_a_burst_past_the_budget_is_refused() -> None:
    """A warm-up that never had more than `floor` in flight left the rate at 0, and then nothing was refused (issue
    12's flaky Gy overload test): a window without a queue measures at least the rate the server kept up with."""
    adm = Admission(0.02, 100_000, floor=64)
    now = 0.0
    for _ in range(50):  # 40 requests every 10 ms, each answered 10 ms later: never more than 40 in flight
        for _ in range(40):
            assert adm.admit()
            adm.started(now)
        now += 0.01
        for _ in range(40):
            adm.finished(now)
    assert adm.rate >= 3000  # 40 answers per 10 ms busy: 4,000/s
    kept_up = adm.rate
    admitted = refused = 0
    for _ in range(3000):  # a burst, all at once
        if adm.admit():
            adm.started(now)
            admitted += 1
        else:
            refused += 1
    assert refused and admitted <= max(64, 0.02 * kept_up) + 1
