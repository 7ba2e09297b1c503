"""The Gy server: asyncio transport over the sans-IO peer state machine and the credit-control application.

One `GyProtocol` per TCP connection. Each request is decoded and checked, handed to the charging service
(answered only after the group commit holding it is durable), and the answers of one loop iteration leave
in one `write()` per connection. Retransmissions (same Origin-Host + End-to-End-Id) get the first answer
again without reaching the core; retransmissions by Session-Id + CC-Request-Number are answered by the core
from the stored answer, which also survives a restart.

Re-auth and abort signals of the core become RAR and ASR on the client's own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from chf.core.model import ChargingAnswer, RequestError, Signal
from chf.runtime import metrics
from chf.runtime.peers import DIAMETER_PEERS
from chf.runtime.port import ChargingPort, refusal
from gy.ccapp import APP_CREDIT_CONTROL, CMD_CC, AnswerEncoder, ParsedCCR, parse_ccr
from gy.codec import DecodeError, E, Message, find
from gy.config import GyConfig, GyConfigError
from gy.peer import (
    CMD_AS,
    CMD_RA,
    AnswerReceived,
    LocalIdentity,
    PeerClosed,
    PeerConnection,
    PeerOpened,
    PeerPolicy,
    RequestReceived,
)

log = logging.getLogger("gy.server")

TOO_BUSY = 3004
COMMAND_UNSUPPORTED = 3001
APPLICATION_UNSUPPORTED = 3007
UNABLE_TO_COMPLY = 5012
OPERATIONS = {1: "CCR-I", 2: "CCR-U", 3: "CCR-T", 4: "CCR-E"}
CCFH_VALUES = {"terminate": 0, "continue": 1, "retry_and_terminate": 2}

# Labelled metric children of the per-request path, looked up once (`.labels()` showed in profiles).
_requests = metrics.labelled(metrics.REQUESTS)
_latency = metrics.labelled(metrics.REQUEST_LATENCY)
_duplicates = metrics.DUPLICATES.labels("gy")


class GyProtocol(asyncio.Protocol):
    def __init__(self, server: GyServer) -> None:
        self.server = server
        self.peer = PeerConnection(server.local, server.policy, time.monotonic())
        self.transport: asyncio.Transport | None = None
        self.inflight = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.opened = False
        self.stats = DIAMETER_PEERS.connection()  # counts for the Diameter peer table (chf/runtime/peers.py)

    # -- transport ------------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.stats = DIAMETER_PEERS.connection(transport.get_extra_info("peername"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.stats.closed()
        if self.opened:
            self.opened = False
            metrics.PEERS_UP.labels("gy").dec()
            if self.server.by_host.get(self.peer.peer_host) is self:
                del self.server.by_host[self.peer.peer_host]
            log.info("event=peer_disconnected peer=%s", self.peer.peer_host)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.stats.received(data)
        for event in self.peer.receive(data, time.monotonic()):
            self._event(event)
        self.stats.set_suspect(self.peer.suspect)
        self._pump()

    def _event(self, event: object) -> None:
        if type(event) is RequestReceived:
            self._request(event.message)
        elif type(event) is AnswerReceived:
            self.server.answer_received(event.message)
        elif type(event) is PeerOpened:
            self.opened = True
            metrics.PEERS_UP.labels("gy").inc()
            self.server.by_host[event.origin_host] = self
            self.stats.opened(event.origin_host, event.origin_realm)
            log.info("event=peer_open peer=%s realm=%s", event.origin_host, event.origin_realm)
        elif type(event) is PeerClosed:
            log.info("event=peer_closing peer=%s reason=%s", self.peer.peer_host or "-", event.reason)

    def _pump(self) -> None:
        """Write what the state machine queued; close when it has closed."""
        transport = self.transport
        if transport is None:
            return
        data = self.peer.data_to_send()
        if data:
            self.stats.sent(data)
            transport.write(data)
        if self.peer.close_after_flush and self.inflight == 0:
            transport.close()

    def on_timer(self, now: float) -> None:
        for event in self.peer.on_timer(now):
            self._event(event)
        self.stats.set_suspect(self.peer.suspect)
        self._pump()

    def write_answer(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None:
            data = b"".join(self._out)
            self.stats.sent(data)
            self.transport.write(data)
        self._out.clear()
        if self.peer.close_after_flush and self.inflight == 0 and self.transport is not None:
            self._pump()

    # -- requests -------------------------------------------------------------------------------------------------
    def _request(self, msg: Message) -> None:
        server = self.server
        peer = self.peer
        if msg.app != APP_CREDIT_CONTROL:
            self._protocol_error(msg, APPLICATION_UNSUPPORTED, f"application {msg.app} is not supported")
            return
        if msg.code != CMD_CC:
            self._protocol_error(msg, COMMAND_UNSUPPORTED, f"command {msg.code} is not supported")
            return
        dup_key = (peer.peer_host, msg.e2e)
        cached = server.answers.get(dup_key)
        if cached is not None:
            _duplicates.inc()
            if isinstance(cached, bytes):
                self.write_answer(peer_answer_ids(cached, msg))
            else:  # the first copy is still being charged: answer this one when it is
                cached.append((self, msg))
            return
        if self.inflight >= server.config.max_inflight_per_peer or server.inflight >= server.config.max_inflight:
            metrics.OVERLOAD.labels("gy").inc()
            self._protocol_error(msg, TOO_BUSY, "too many requests in flight")
            return
        try:
            ccr = parse_ccr(msg)
        except DecodeError as exc:
            self._refuse(msg, exc.result_code, exc.failed_avp, str(exc))
            return
        server.answers[dup_key] = []
        self.inflight += 1
        server.inflight += 1
        done = partial(self._charged, msg, ccr, dup_key, time.perf_counter())
        try:
            # A callback, not a Task or future per request: they were a tenth of the loop's work in profiles.
            server.service.charge_then(ccr.request, done)
        except Exception as exc:  # the core cannot take it now (chf/runtime/port.py): answered by `_charged`
            done(exc)

    def _charged(
        self, msg: Message, ccr: ParsedCCR, dup_key: Any, started: float, result: ChargingAnswer | BaseException
    ) -> None:
        server = self.server
        self.inflight -= 1
        server.inflight -= 1
        operation = OPERATIONS[ccr.request_type]
        waiting = server.answers.pop(dup_key, None)
        if not isinstance(result, BaseException):
            answer = result
            if answer.duplicate:
                _duplicates.inc()
            data = server.encoder.encode_cca(msg, ccr, answer)
            _requests("gy", operation, answer.result).inc()
            if answer.result != "success":
                log.info(
                    "event=cca session=%s number=%d result=%s detail=%s",
                    ccr.session_id, ccr.request.number, answer.result, answer.detail or "-",
                )  # fmt: skip
        else:
            exc = result
            refused = refusal(exc)
            code = refused.result_code
            if refused.transient:  # store queue full, store stopping, core link down: the PGW retries elsewhere
                text = "the charging function is busy"
                metrics.OVERLOAD.labels("gy").inc()
                data = self.peer.answer(msg, self._error_avps(msg, code, text), error=refused.error_bit)
            else:
                text = f"{exc.field}: {exc.message}" if isinstance(exc, RequestError) else "internal error"
                if not isinstance(exc, RequestError):
                    log.error("event=charge_failed session=%s error=%r", ccr.session_id, exc, exc_info=exc)
                log.warning("event=cca session=%s result=%d error=%s", ccr.session_id, code, text)
                data = self.peer.answer(msg, server.encoder.failure(msg, code, None, text))
            metrics.PROTOCOL_ERRORS.labels("gy", str(code)).inc()
            _requests("gy", operation, str(code)).inc()
        _latency("gy", operation).observe(time.perf_counter() - started)
        server.remember(dup_key, data)
        if self.transport is not None:
            self.write_answer(data)
        for other, other_msg in waiting or ():
            if other.transport is not None:
                other.write_answer(peer_answer_ids(data, other_msg))

    def _error_avps(self, msg: Message, code: int, text: str) -> list[bytes]:
        return self.server.encoder.failure(msg, code, None, text)

    def _protocol_error(self, msg: Message, code: int, text: str) -> None:
        """3xxx: an answer with the E bit (RFC 6733 7.1.3)."""
        log.warning("event=protocol_error peer=%s command=%d result=%d error=%s", self.peer.peer_host, msg.code,
                    code, text)  # fmt: skip
        metrics.PROTOCOL_ERRORS.labels("gy", str(code)).inc()
        self.write_answer(self.peer.answer(msg, self._error_avps(msg, code, text), error=True))

    def _refuse(self, msg: Message, code: int, failed_avp: bytes | None, text: str) -> None:
        session = _session_text(msg)
        log.warning("event=ccr_refused peer=%s session=%s result=%d error=%s", self.peer.peer_host, session, code,
                    text)  # fmt: skip
        metrics.PROTOCOL_ERRORS.labels("gy", str(code)).inc()
        error = 3000 <= code < 4000
        self.write_answer(self.peer.answer(msg, self.server.encoder.failure(msg, code, failed_avp, text), error=error))


def _session_text(msg: Message) -> str:
    try:
        a = find(msg.avps, 263)
        return a.data.decode("utf-8", "replace") if a is not None else "-"
    except DecodeError:
        return "-"


def peer_answer_ids(answer: bytes, request: Message) -> bytes:
    """A stored answer re-addressed to a retransmitted request (its Hop-by-Hop id may differ)."""
    return answer[:12] + request.hbh.to_bytes(4, "big") + answer[16:]


class GyServer:
    name = "gy"

    def __init__(self, config: GyConfig, service: ChargingPort) -> None:
        self.config = config
        self.service = service
        self.local = LocalIdentity(
            origin_host=config.origin_host,
            origin_realm=config.origin_realm,
            host_ip=config.listen if config.listen not in ("0.0.0.0", "::", "localhost") else "127.0.0.1",
            vendor_id=config.vendor_id,
            product_name=config.product_name,
            origin_state_id=int(time.time()) & 0xFFFFFFFF,
        )
        self.policy = PeerPolicy(dict(config.peers), config.allow_unknown_peers, config.tw)
        probe = PeerConnection(self.local, self.policy, 0.0)
        self.encoder = AnswerEncoder(probe.identity_avps, CCFH_VALUES[config.ccfh], 1 if config.session_failover else 0)
        self.connections: set[GyProtocol] = set()
        self.by_host: dict[str, GyProtocol] = {}
        self.inflight = 0
        # (Origin-Host, End-to-End-Id) -> answer bytes, or the retransmissions waiting for the first answer.
        self.answers: OrderedDict[Any, Any] = OrderedDict()
        self.pending_signals: dict[int, tuple[str, str]] = {}  # hbh of our RAR/ASR -> (kind, session)
        self._server: asyncio.base_events.Server | None = None
        self._timer: asyncio.Task[None] | None = None
        self.port = config.port
        # In a front-end worker (chf serve with [server] frontend_workers): the workers share the port through
        # SO_REUSEPORT (the kernel spreads the connections), and every worker gets every signal, so only the
        # one holding the peer's connection acts on it.
        self.worker = False

    def remember(self, key: Any, data: bytes) -> None:
        answers = self.answers
        answers[key] = data
        while len(answers) > self.config.duplicate_cache:
            oldest_key, oldest = next(iter(answers.items()))
            if isinstance(oldest, list):  # still in flight: keep it, drop the next finished one instead
                answers.move_to_end(oldest_key)
                continue
            answers.popitem(last=False)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GyProtocol(self),
            self.config.listen,
            self.config.port,
            reuse_address=True,
            reuse_port=self.worker or None,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.service.subscribe("gy", self.signal)
        self._timer = asyncio.create_task(self._tick(), name="gy-watchdog")
        log.info("event=gy_listening address=%s port=%d origin_host=%s", self.config.listen, self.port,
                 self.config.origin_host)  # fmt: skip

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.tw / 4))
            now = time.monotonic()
            for conn in list(self.connections):
                try:
                    conn.on_timer(now)
                except Exception:
                    log.exception("event=watchdog_failed peer=%s", conn.peer.peer_host)

    async def stop(self) -> None:
        """Stop accepting, send DPR to every peer, let in-flight requests finish and peers answer, then close."""
        if self._server is not None:
            self._server.close()
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        now = time.monotonic()
        for conn in list(self.connections):
            conn.peer.disconnect(now)
            conn._pump()
        deadline = time.monotonic() + self.config.drain_timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        log.info("event=gy_stopped")

    # -- server-initiated -------------------------------------------------------------------------------------------
    def signal(self, sig: Signal) -> None:
        """A re-auth or abort from the core: RAR or ASR to the client's connection."""
        if not sig.session.startswith("gy:"):
            return
        notify = sig.notify if isinstance(sig.notify, list | tuple) and len(sig.notify) == 2 else None
        conn = self.by_host.get(notify[0]) if notify else None
        if conn is None or conn.transport is None:
            if self.worker:  # another worker may hold the peer: not ours to count or log
                return
            metrics.SIGNALS.labels("gy", sig.kind, "no_peer").inc()
            log.info("event=signal_undeliverable kind=%s session=%s", sig.kind, sig.session)
            return
        assert notify is not None
        session_id = sig.session[3:]
        avps = [
            E("Session-Id").text(session_id),
            *conn.peer.identity_avps,
            E("Destination-Realm").octets(str(notify[1]).encode()),
            E("Destination-Host").octets(str(notify[0]).encode()),
            E("Auth-Application-Id").u32(APP_CREDIT_CONTROL),
        ]
        if sig.kind == "reauth":
            avps.append(E("Re-Auth-Request-Type").i32(0))  # AUTHORIZE_ONLY
            if len(sig.rating_groups) == 1:
                avps.append(E("Rating-Group").u32(sig.rating_groups[0]))
            code = CMD_RA
        else:
            code = CMD_AS
        hbh = conn.peer.send_request(code, APP_CREDIT_CONTROL, avps)
        self.pending_signals[hbh] = (sig.kind, session_id)
        if len(self.pending_signals) > 65536:
            self.pending_signals.pop(next(iter(self.pending_signals)))
        conn._pump()
        metrics.SIGNALS.labels("gy", sig.kind, "sent").inc()
        log.info("event=signal_sent kind=%s session=%s peer=%s", sig.kind, session_id, notify[0])

    def answer_received(self, msg: Message) -> None:
        pending = self.pending_signals.pop(msg.hbh, None)
        if pending is None:
            log.info("event=unexpected_answer command=%d hbh=%#x", msg.code, msg.hbh)
            return
        kind, session = pending
        try:
            rc = find(msg.avps, 268)
            result = rc.u32() if rc is not None else 0
        except DecodeError:
            result = 0
        outcome = "answered" if result in (2001, 2002) else "refused"
        metrics.SIGNALS.labels("gy", kind, outcome).inc()
        log.info("event=signal_answered kind=%s session=%s result=%d", kind, session, result)


def gy_components(config: Any, service: ChargingPort) -> list[Any]:
    """`chf serve` factory: a Gy server when conf/chf.toml has a [gy] section (CHF_GY_PORT overrides the port)."""
    section = config.section("gy")
    if "gy" not in config.raw:
        return []
    section = dict(section)
    if os.environ.get("CHF_GY_PORT"):
        section["port"] = int(os.environ["CHF_GY_PORT"])
    server = GyServer(GyConfig.from_section(section, config.source), service)
    role = getattr(config, "role", "all")
    if role == "core":  # the workers run the Gy server; the core only checks the section at start-up
        if server.config.port == 0:  # each worker would listen on a port of its own
            raise GyConfigError([f"{config.source}: [gy] port: must be a fixed port with [server] frontend_workers"])
        return []
    server.worker = role == "worker"
    return [server]
