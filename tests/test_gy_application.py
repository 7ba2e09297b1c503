"""The Gy application without sockets (gy/application.py): duplicates, in-flight bounds, refusals, RAR/ASR and the
matching of their answers, driven through `Pipe` links as GyProtocol drives it."""

from __future__ import annotations

from chf.core.model import ChargingAnswer, Signal
from chf.runtime import metrics
from gy.application import DuplicateCache
from gy.codec import E, Message, decode_header, encode_message, find
from gy.peer import PeerPolicy
from store.lmdbstore import StoreClosed
from tests.gy_sansio import HOST, REALM, Pipe, StubCore, ccr_bytes, make_app, success


def _rc(msg: Message) -> int:
    return find(msg.avps, 268).u32()  # type: ignore[union-attr]


def _no_peer(kind: str) -> float:
    labels = {"protocol": "gy", "kind": kind, "outcome": "no_peer"}
    return metrics.REGISTRY.get_sample_value("chf_signals_total", labels) or 0.0


def test_a_retransmission_waits_for_the_first_answer_then_gets_it_again() -> None:
    core = StubCore()
    app = make_app(core)
    pipe = Pipe(app)
    pipe.open()
    first = ccr_bytes(pipe, "d;1", e2e=77)
    pipe.receive(first)
    again = bytearray(first)
    again[12:16] = (999).to_bytes(4, "big")  # a new Hop-by-Hop id, the same End-to-End id
    pipe.receive(bytes(again))
    assert len(core.calls) == 1 and pipe.messages() == []  # the copy waits for the first
    core.answer_all(success)
    a, b = pipe.messages()
    assert (a.hbh, b.hbh) == (decode_header(first).hbh, 999) and a.buf[16:] == b.buf[16:] and _rc(a) == 2001
    pipe.receive(bytes(again))  # after: the stored answer, the core not asked
    (c,) = pipe.messages()
    assert c.buf == b.buf and core.calls == [] and app.inflight == 0


def test_in_flight_bounds_answer_too_busy() -> None:
    core = StubCore()
    app = make_app(core, max_inflight_per_peer=2, max_inflight=3)
    one, two = Pipe(app), Pipe(app)
    one.open()
    two.open()
    for n in range(3):
        one.receive(ccr_bytes(one, f"b;{n}"))
    (busy,) = one.messages()
    assert _rc(busy) == 3004 and busy.flags & 0x20 and one.inflight == 2
    two.receive(ccr_bytes(two, "b;x"))
    two.receive(ccr_bytes(two, "b;y"))
    (busy,) = two.messages()
    assert _rc(busy) == 3004 and app.inflight == 3
    core.answer_all(success)
    assert app.inflight == one.inflight == two.inflight == 0
    assert [_rc(m) for m in one.messages()] == [2001, 2001]


def test_other_applications_and_commands_are_protocol_errors() -> None:
    pipe = Pipe(make_app())
    pipe.open()
    pipe.receive(pipe.request(272, 16777238, []))
    pipe.receive(pipe.request(271, 4, []))
    assert [(_rc(m), bool(m.flags & 0x20)) for m in pipe.messages()] == [(3007, True), (3001, True)]


def test_a_core_out_of_reach_is_too_busy_and_not_a_duplicate_forever() -> None:
    core = StubCore(refuse=StoreClosed("stopped"))
    app = make_app(core)
    pipe = Pipe(app)
    pipe.open()
    pipe.receive(ccr_bytes(pipe, "c;1", e2e=5))
    (answer,) = pipe.messages()
    assert _rc(answer) == 3004 and answer.flags & 0x20 and app.inflight == 0


def test_answers_to_a_lost_connection_are_dropped_and_waiting_copies_answered() -> None:
    core = StubCore()
    app = make_app(core)
    one, two = Pipe(app), Pipe(app)
    one.open()
    two.open()
    data = ccr_bytes(one, "l;1", e2e=9)
    one.receive(data)
    two.receive(data)  # the same request retransmitted on the other connection (same Origin-Host, same id)
    one.lose()
    core.answer_all(success)
    assert one.messages() == []
    (answer,) = two.messages()
    assert _rc(answer) == 2001


def test_signals_become_rar_and_asr_and_their_answers_are_matched() -> None:
    app = make_app()
    pipe = Pipe(app)
    pipe.open()
    app.signal(Signal("reauth", "gy:s;1", "gy", [HOST, REALM], (10,)))
    app.signal(Signal("abort", "gy:s;1", "gy", [HOST, REALM], ()))
    rar, asr = pipe.messages()
    assert (rar.code, asr.code) == (258, 274) and rar.is_request and asr.is_request
    assert find(rar.avps, 285).i32() == 0 and find(rar.avps, 432).u32() == 10  # type: ignore[union-attr]
    assert find(asr.avps, 293).data == HOST.encode() and find(asr.avps, 283).data == REALM.encode()  # type: ignore[union-attr]
    assert set(app.pending_signals) == {rar.hbh, asr.hbh}
    for request in (rar, asr):
        answer = [E("Session-Id").text("s;1"), E("Result-Code").u32(2001), *pipe.peer.identity_avps]
        pipe.receive(encode_message(request.code, 0x40, 4, request.hbh, request.e2e, answer))
    assert app.pending_signals == {}
    app.signal(Signal("reauth", "nchf:x", "nchf", [HOST, REALM], ()))  # not a Gy session: ignored
    assert pipe.messages() == []


def test_undeliverable_signals_are_counted_unless_the_port_is_shared() -> None:
    sig = Signal("reauth", "gy:s;9", "gy", ["elsewhere.test", REALM], ())
    before = _no_peer("reauth")
    make_app().signal(sig)
    assert _no_peer("reauth") == before + 1
    make_app(shared_port=True).signal(sig)  # another worker may hold the peer: not counted here
    assert _no_peer("reauth") == before + 1


def test_a_reconnected_peer_keeps_its_signals() -> None:
    app = make_app()
    old, new = Pipe(app, policy=PeerPolicy({HOST: REALM})), Pipe(app)
    old.open()
    new.open()  # the same Origin-Host connects again before the old connection is seen lost
    old.lose()
    assert app.by_host[HOST] is new
    app.signal(Signal("abort", "gy:s;1", "gy", [HOST, REALM], ()))
    assert [m.code for m in new.messages()] == [274]


def test_the_duplicate_cache_is_bounded() -> None:
    core = StubCore()
    app = make_app(core, duplicate_cache=3)
    pipe = Pipe(app)
    pipe.open()
    for n in range(10):
        pipe.receive(ccr_bytes(pipe, f"m;{n}", e2e=100 + n))
        core.answer_all(lambda request: ChargingAnswer("success", request.session, request.number, []))
    assert len(app.duplicates.answers) == 3


def _keep(cache: DuplicateCache, key: tuple[str, int], request: tuple[str, int, int], data: bytes) -> None:
    assert cache.start(key, *request)
    assert cache.answered(key, data) == ()


def test_duplicate_cache_window_size_and_identity() -> None:
    now = [0.0]
    cache = DuplicateCache(size=2, window=240.0, clock=lambda: now[0])
    request = ("s;1", 0, 272)
    _keep(cache, ("pgw", 1), request, b"one")
    assert cache.lookup(("pgw", 1), *request) == b"one"
    assert cache.lookup(("pgw", 1), "s;2", 0, 272) is None  # another session reusing the id
    assert cache.lookup(("pgw", 1), "s;1", 1, 272) is None  # another request number
    assert cache.lookup(("pgw", 1), "s;1", 0, 258) is None  # another command
    assert cache.lookup(("other", 1), *request) is None  # another originator
    now[0] = 240.0
    assert cache.lookup(("pgw", 1), *request) == b"one"
    now[0] = 240.5
    assert cache.lookup(("pgw", 1), *request) is None  # past the window
    _keep(cache, ("pgw", 2), ("s;1", 1, 272), b"two")
    assert list(cache.answers) == [("pgw", 2)]  # the expired answer went on the next insertion
    _keep(cache, ("pgw", 3), ("s;1", 2, 272), b"three")
    _keep(cache, ("pgw", 4), ("s;1", 3, 272), b"four")
    assert list(cache.answers) == [("pgw", 3), ("pgw", 4)]  # at most `size`, the oldest dropped
    # a request in flight: its retransmissions wait; another request with its key is not tracked
    assert cache.start(("pgw", 5), "s;1", 4, 272)
    waiting = cache.lookup(("pgw", 5), "s;1", 4, 272)
    assert waiting == [] and cache.lookup(("pgw", 5), "s;9", 0, 272) is None
    assert not cache.start(("pgw", 5), "s;9", 0, 272)
    assert cache.answered(("pgw", 5), None) is waiting  # a refusal: nothing kept
    assert ("pgw", 5) not in cache.answers and cache.in_flight == {} and cache.waiting == {}


def test_duplicate_cache_of_size_zero_keeps_nothing_whatever_is_in_flight() -> None:
    cache = DuplicateCache(size=0, window=240.0, clock=lambda: 0.0)
    for n in range(5):
        assert cache.start(("pgw", n), "s", n, 272)
    assert cache.answered(("pgw", 0), b"x") == ()
    assert cache.answers == {} and len(cache.in_flight) == 4
