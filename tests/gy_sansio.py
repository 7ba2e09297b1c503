"""The Gy front-end without sockets or real time: a peer state machine and the Gy application wired as GyProtocol
wires them, over a list of written bytes, with a stub core whose answers the test gives."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chf.core.model import ChargingAnswer, ChargingRequest, Signal
from gy.application import GyApplication
from gy.client import Mscc, ccr_avps
from gy.codec import FLAG_PROXIABLE, FLAG_REQUEST, E, Message, decode_header, encode_message, message_length
from gy.grammar import CMD_CC, CMD_CE
from gy.peer import AnswerReceived, LocalIdentity, PeerConnection, PeerOpened, PeerPolicy, RequestReceived

HOST, REALM = "pgw.test", "test"
LOCAL = LocalIdentity(origin_host="chf.test", origin_realm="test", product_name="chf", origin_state_id=7)

Done = Callable[[ChargingAnswer | BaseException], None]
_END_TO_END = itertools.count(0x1000)  # distinct End-to-End ids across pipes unless a test gives one


@dataclass
class StubCore:
    """A ChargingPort whose charges wait in `calls` until the test answers them."""

    store_id: str = "test"
    calls: list[tuple[ChargingRequest, Done]] = field(default_factory=list)
    handlers: dict[str, Callable[[Signal], None]] = field(default_factory=dict)
    refuse: BaseException | None = None  # raised by charge_then itself (the core cannot take the request)

    def charge_then(self, request: ChargingRequest, done: Done) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append((request, done))

    def subscribe(self, protocol: str, handler: Callable[[Signal], None]) -> None:
        self.handlers[protocol] = handler

    def answer_all(self, make: Callable[[ChargingRequest], ChargingAnswer | BaseException]) -> None:
        calls, self.calls = self.calls, []
        for request, done in calls:
            done(make(request))


def success(request: ChargingRequest) -> ChargingAnswer:
    return ChargingAnswer("success", request.session, request.number, [])


class Pipe:
    """One peer connection: the `Link` the application answers through, and the stream it wrote."""

    def __init__(self, app: GyApplication, now: float = 0.0, *, policy: PeerPolicy | None = None) -> None:
        self.app = app
        self.peer = PeerConnection(LOCAL, policy or PeerPolicy({HOST: REALM}), now, rng=lambda lo, hi: 0.0)
        self.inflight = 0
        self.connected = True
        self.written = bytearray()
        self._hbh = 0

    # -- Link -------------------------------------------------------------------------------------------------------
    def write_answer(self, data: bytes) -> None:
        self.written += data

    def flush(self) -> None:
        self.written += self.peer.data_to_send()

    # -- driving it -------------------------------------------------------------------------------------------------
    def receive(self, data: bytes, now: float = 1.0) -> None:
        """Bytes from the peer, dispatched as GyProtocol dispatches them."""
        for event in self.peer.receive(data, now):
            if type(event) is RequestReceived:
                self.app.request(self, event.message)
            elif type(event) is AnswerReceived:
                self.app.answer(event.message)
            elif type(event) is PeerOpened:
                self.app.peer_opened(self, event.origin_host)
        self.flush()

    def lose(self) -> None:
        self.connected = False
        self.app.peer_closed(self)

    def messages(self) -> list[Message]:
        """What was written since the last call, message by message."""
        data, out = bytes(self.written), []
        self.written.clear()
        while data:
            length = message_length(data)
            out.append(decode_header(data[:length]))
            data = data[length:]
        return out

    def request(
        self,
        code: int,
        app: int,
        avps: list[bytes],
        *,
        flags: int = FLAG_REQUEST | FLAG_PROXIABLE,
        e2e: int | None = None,
        hbh: int | None = None,
    ) -> bytes:
        self._hbh += 1
        hbh = self._hbh if hbh is None else hbh
        return encode_message(code, flags, app, hbh, next(_END_TO_END) if e2e is None else e2e, avps)

    def open(self, host: str = HOST, realm: str = REALM, now: float = 0.5) -> Message:
        """The capabilities exchange; returns the CEA."""
        cer = [
            E("Origin-Host").octets(host.encode()),
            E("Origin-Realm").octets(realm.encode()),
            E("Host-IP-Address").address("127.0.0.1"),
            E("Vendor-Id").u32(0),
            E("Product-Name").text("test"),
            E("Auth-Application-Id").u32(4),
        ]
        self.receive(self.request(CMD_CE, 0, cer, flags=FLAG_REQUEST), now)
        (cea,) = self.messages()
        return cea


def make_app(core: StubCore | None = None, **limits: Any) -> GyApplication:
    settings: dict[str, Any] = {
        "ccfh": 2,
        "session_failover": 0,
        "max_inflight_per_peer": 100,
        "max_inflight": 1000,
        "duplicate_cache": 1000,
    }
    settings.update(limits)
    identity = PeerConnection(LOCAL, PeerPolicy(), 0.0).identity_avps
    return GyApplication(core or StubCore(), identity, **settings)


def ccr(session: str = "s;1", rtype: int = 1, number: int = 0, **kw: Any) -> list[bytes]:
    kw.setdefault("mscc", [Mscc(10, {})])
    return ccr_avps(session, rtype, number, origin_host=HOST, origin_realm=REALM, **kw)


def ccr_bytes(
    pipe: Pipe, *args: Any, e2e: int | None = None, flags: int = FLAG_REQUEST | FLAG_PROXIABLE, **kw: Any
) -> bytes:
    return pipe.request(CMD_CC, 4, ccr(*args, **kw), e2e=e2e, flags=flags)
