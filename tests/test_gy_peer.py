"""The peer state machine's timers (RFC 6733 section 5, RFC 3539 watchdog) through `on_timer(now)`: no sockets, no
real time. Tw is 30 s and the jitter is fixed at 0 (the state machine takes the random source as a parameter)."""

from __future__ import annotations

from gy.codec import FLAG_REQUEST, E, Message, decode_header, encode_message, find, message_length
from gy.peer import CLOSED, CLOSING, OPEN, WAIT_CER, LocalIdentity, PeerClosed, PeerConnection, PeerOpened, PeerPolicy

HOST, REALM, TW = "pgw.test", "test", 30.0


def _peer(now: float = 0.0, *, jitter: float = 0.0, **policy: object) -> PeerConnection:
    settings: dict[str, object] = {"peers": {HOST: REALM}, "tw": TW}
    settings.update(policy)
    return PeerConnection(LocalIdentity(), PeerPolicy(**settings), now, rng=lambda lo, hi: jitter)  # type: ignore[arg-type]


def _sent(peer: PeerConnection) -> list[Message]:
    data, out = peer.data_to_send(), []
    while data:
        length = message_length(data)
        out.append(decode_header(data[:length]))
        data = data[length:]
    return out


def _ident(host: str = HOST) -> list[bytes]:
    return [E("Origin-Host").octets(host.encode()), E("Origin-Realm").octets(REALM.encode())]


def _cer(host: str = HOST, apps: tuple[int, ...] = (4,)) -> bytes:
    avps = [
        *_ident(host),
        E("Host-IP-Address").address("127.0.0.1"),
        E("Vendor-Id").u32(0),
        E("Product-Name").text("t"),
    ]
    avps += [E("Auth-Application-Id").u32(app) for app in apps]
    return encode_message(257, FLAG_REQUEST, 0, 1, 1, avps)


def _open(now: float = 0.0) -> PeerConnection:
    peer = _peer(now)
    assert [type(e) for e in peer.receive(_cer(), now)] == [PeerOpened]
    (cea,) = _sent(peer)
    assert find(cea.avps, 268).u32() == 2001  # type: ignore[union-attr]
    return peer


def _answer(request: Message) -> bytes:
    return encode_message(
        request.code, 0, request.app, request.hbh, request.e2e, [E("Result-Code").u32(2001), *_ident()]
    )


def _reason(events: list[object]) -> str:
    (event,) = events
    assert isinstance(event, PeerClosed)
    return event.reason


def test_no_cer_within_tw_closes() -> None:
    peer = _peer()
    assert peer.on_timer(TW - 0.1) == [] and peer.state == WAIT_CER
    assert _reason(peer.on_timer(TW)) == "no CER within Tw"
    assert peer.state == CLOSED and peer.close_after_flush
    assert peer.on_timer(10 * TW) == []  # closed stays closed, quietly


def test_watchdog_dwr_after_tw_idle_then_dwa() -> None:
    peer = _open()
    assert peer.on_timer(TW - 1) == [] and _sent(peer) == []
    assert peer.on_timer(TW) == []
    (dwr,) = _sent(peer)
    assert dwr.code == 280 and dwr.is_request and not dwr.flags & 0x40  # not proxiable (RFC 6733 5.5.1)
    assert find(dwr.avps, 264).data == b"chf.localdomain" and find(dwr.avps, 278) is not None  # type: ignore[union-attr]
    assert peer.receive(_answer(dwr), TW + 1) == []  # the DWA: consumed by the state machine
    assert not peer.suspect and peer.state == OPEN
    # the next DWR at the next deadline, Tw after the first: the DWA came 29 s before it, within the 2.5 s the
    # check allows for jitter of a full Tw
    assert peer.on_timer(2 * TW - 1) == [] and _sent(peer) == []
    assert peer.on_timer(2 * TW) == []
    assert [m.code for m in _sent(peer)] == [280]


def test_traffic_defers_the_dwr() -> None:
    """RFC 3539 3.4: a DWR only when nothing was received for Tw."""
    peer = _open()
    peer.receive(encode_message(280, FLAG_REQUEST, 0, 9, 9, _ident()), TW - 1)  # the peer's own DWR
    assert [m.code for m in _sent(peer)] == [280]  # our DWA
    peer.on_timer(TW)
    assert _sent(peer) == []  # received 1 s ago: no DWR yet
    peer.on_timer(2 * TW)
    assert [m.code for m in _sent(peer)] == [280]


def test_unanswered_dwr_makes_the_peer_suspect_then_closes() -> None:
    peer = _open()
    peer.on_timer(TW)
    assert [m.code for m in _sent(peer)] == [280]
    assert peer.on_timer(2 * TW - 1) == [] and not peer.suspect
    assert peer.on_timer(2 * TW) == [] and peer.suspect and peer.state == OPEN  # SUSPECT: one more Tw
    assert _sent(peer) == []  # no second DWR while one is outstanding
    assert peer.on_timer(3 * TW - 1) == []
    assert _reason(peer.on_timer(3 * TW)) == "watchdog: no answer to DWR"
    assert peer.state == CLOSED and peer.close_after_flush


def test_traffic_while_suspect_clears_it() -> None:
    peer = _open()
    peer.on_timer(TW)
    (dwr,) = _sent(peer)
    peer.on_timer(2 * TW)
    assert peer.suspect
    peer.receive(_answer(dwr), 2 * TW + 1)  # a late DWA
    assert not peer.suspect
    assert peer.on_timer(3 * TW) == [] and peer.state == OPEN


def test_jitter_moves_the_deadline() -> None:
    """RFC 3539 3.4.1: Tw jittered by up to 2 s either way."""
    early = _peer(jitter=-2.0)
    assert _reason(early.on_timer(TW - 2)) == "no CER within Tw"
    late = _peer(jitter=2.0)
    assert late.on_timer(TW + 1.9) == [] and late.state == WAIT_CER


def test_disconnect_sends_dpr_and_closes_on_dpa() -> None:
    peer = _open()
    peer.disconnect(5.0)
    (dpr,) = _sent(peer)
    assert dpr.code == 282 and dpr.is_request and find(dpr.avps, 273).i32() == 0  # type: ignore[union-attr]
    assert peer.state == CLOSING
    assert _reason(peer.receive(_answer(dpr), 6.0)) == "DPA received"
    assert peer.state == CLOSED and peer.close_after_flush


def test_disconnect_without_dpa_closes_after_tw() -> None:
    peer = _open()
    peer.disconnect(5.0)
    _sent(peer)
    assert peer.on_timer(5.0 + TW - 0.1) == [] and peer.state == CLOSING
    assert _reason(peer.on_timer(5.0 + TW)) == "no DPA within Tw"
    assert peer.state == CLOSED


def test_disconnect_before_open_just_closes() -> None:
    peer = _peer()
    peer.disconnect(1.0)
    assert peer.state == CLOSED and _sent(peer) == []


def test_peer_dpr_is_answered_and_closes_cleanly() -> None:
    peer = _open()
    events = peer.receive(encode_message(282, FLAG_REQUEST, 0, 5, 5, [*_ident(), E("Disconnect-Cause").i32(2)]), 1.0)
    assert _reason(events) == "peer sent DPR"
    (dpa,) = _sent(peer)
    assert dpa.code == 282 and not dpa.is_request and find(dpa.avps, 268).u32() == 2001  # type: ignore[union-attr]
    assert peer.state == CLOSED and peer.close_after_flush
    assert peer.on_timer(100.0) == []


def test_cer_refusals_close_after_the_cea() -> None:
    for host, apps, code, reason in (
        ("evil.test", (4,), 3010, "unknown peer evil.test realm test"),
        (HOST, (16777238,), 5010, "no common application"),
    ):
        peer = _peer()
        assert reason in _reason(peer.receive(_cer(host, apps), 1.0))
        (cea,) = _sent(peer)
        assert find(cea.avps, 268).u32() == code  # type: ignore[union-attr]
        assert bool(cea.flags & 0x20) == (code == 3010)  # E bit on the protocol error only
        assert peer.state == CLOSED and peer.close_after_flush
        assert peer.on_timer(100.0) == []


def test_relay_application_is_common() -> None:
    peer = _peer()
    assert [type(e) for e in peer.receive(_cer(apps=(0xFFFFFFFF,)), 1.0)] == [PeerOpened]


def test_unknown_peers_allowed_by_policy() -> None:
    peer = _peer(peers={}, allow_unknown=True)
    assert [type(e) for e in peer.receive(_cer("anyone.test"), 1.0)] == [PeerOpened]
    assert peer.peer_host == "anyone.test"


def test_request_before_cer_closes_unanswered() -> None:
    peer = _peer()
    assert "before capabilities exchange" in _reason(peer.receive(encode_message(272, 0xC0, 4, 1, 1, _ident()), 1.0))
    assert _sent(peer) == [] and peer.state == CLOSED
