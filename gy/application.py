"""The Gy application, without sockets: what to do with the requests and answers of open peers, and with the core's
signals (like an OTP diameter callback module, one per application).

The asyncio layer (gy/server.py) feeds it: `request` for every application request of an open peer, `answer` for
answers to our requests, `peer_opened` / `peer_closed`, `signal` for the core's re-auth and abort signals. It
answers through the `Link` of the request's connection (`write_answer`), and queues RAR/ASR on a peer's state
machine (`send_request`, then `Link.flush`). It holds:
- the in-flight bounds: per peer, by count; in all, by time (chf.runtime.admission: a request is taken only if those in
  flight are expected to be answered within [gy] latency_budget_ms, at the measured answer rate) and by count.
  Beyond them 3004 DIAMETER_TOO_BUSY, decided before the CCR is decoded: under overload most requests are refused,
  and each refusal must cost a small fraction of a served request. Refusals are counted (metrics, and one summary
  line per interval: `event=gy_refusals`), never logged one by one;
- the duplicate cache (RFC 6733 section 6.1.4), see `DuplicateCache`,
- RAR/ASR building, and the matching of their answers.

Retransmissions. A request is a duplicate of an earlier one when it has the same Origin-Host (the request's AVP:
the originating PGW, not the peer that sent it, which may be a relay serving several) and End-to-End-Id, within
the duplicate window, *and* the same Session-Id, CC-Request-Number and command: anything else that reuses an
id is a new request, and no answer ever carries another request's Session-Id. A duplicate gets the first answer
again, without reaching the core (or waits for it while the first copy is being charged). Only answers the core
decided are kept: refusals (3004 when the core is busy or out of reach, 5012) are not, so a retransmission gets
the core's answer once it can give one.

The T flag (RFC 6733 section 3, a retransmission after a failover) takes no path of its own: every request, T or
not, is looked up here first. One that misses (its first copy went to another worker or to this process before a
restart, or it is older than the window) goes to the core, whose stored answers per Session-Id and
CC-Request-Number (kept in the store, across restarts) answer it again without charging it twice.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from chf.core.currency import CURRENCY_FIELD
from chf.core.engine import USAGE_BOUND_FIELD
from chf.core.model import ChargingAnswer, RequestError, Signal
from chf.runtime import metrics
from chf.runtime.admission import Admission
from chf.runtime.port import ChargingPort, refusal
from chf.runtime.ratelog import RateLog
from gy.cca import RESULT_CODES, AnswerEncoder, used_unit_failed_avp
from gy.ccr import ParsedCCR
from gy.ccr_fast import parse_ccr
from gy.codec import DecodeError, E, Message, find
from gy.codes import (
    DIAMETER_APPLICATION_UNSUPPORTED,
    DIAMETER_COMMAND_UNSUPPORTED,
    DIAMETER_INVALID_AVP_VALUE,
    DIAMETER_LIMITED_SUCCESS,
    DIAMETER_RATING_FAILED,
    DIAMETER_SUCCESS,
    DIAMETER_TOO_BUSY,
    RESULT_CODE,
    SESSION_ID,
    is_protocol_error,
)
from gy.grammar import APP_CREDIT_CONTROL, CMD_AS, CMD_CC, CMD_RA
from gy.peer import PeerConnection

log = logging.getLogger("gy.server")

OPERATIONS = {1: "CCR-I", 2: "CCR-U", 3: "CCR-T", 4: "CCR-E"}
DUPLICATE_WINDOW = 240.0  # seconds; RFC 6733 6.1.4: what originators guarantee (4 minutes without an id reused)
RE_AUTH_AUTHORIZE_ONLY = 0  # RFC 6733 8.12 Re-Auth-Request-Type
MAX_PENDING_SIGNALS = 65536  # RAR/ASR awaiting their answer; the oldest is forgotten beyond

# Labelled metric children of the per-request path, looked up once (`.labels()` showed in profiles).
_requests = metrics.labelled(metrics.REQUESTS)
_latency = metrics.labelled(metrics.REQUEST_LATENCY)
_duplicates = metrics.DUPLICATES.labels("gy")
_overload = metrics.OVERLOAD.labels("gy")
_TOO_BUSY = str(DIAMETER_TOO_BUSY)
_too_busy = metrics.PROTOCOL_ERRORS.labels("gy", _TOO_BUSY)
_protocol_error_children: dict[str, object] = {}


def _protocol_errors(code: str) -> Any:
    child = _protocol_error_children.get(code)
    if child is None:
        child = _protocol_error_children[code] = metrics.PROTOCOL_ERRORS.labels("gy", code)
    return child


class Link(Protocol):
    """One peer connection as the application sees it (gy/server.py's GyProtocol; a list in the unit tests)."""

    peer: PeerConnection
    inflight: int  # requests of this connection in the core
    connected: bool  # False once the connection is lost: its answers are dropped

    def write_answer(self, data: bytes) -> None:
        """Send an answer (the asyncio layer batches those of one loop iteration)."""
        ...

    def flush(self) -> None:
        """Send what the peer state machine queued (RAR, ASR)."""
        ...


DuplicateKey = tuple[str, int]  # (Origin-Host, End-to-End-Id)
Waiting = list[tuple[Link, Message]]  # retransmissions waiting for the answer to the request they repeat
_NOT_WAITING: tuple[()] = ()


class DuplicateCache:
    """The answers to recent requests by (Origin-Host, End-to-End-Id), each kept `window` seconds at most and
    `size` answers in all (the oldest forgotten first), and the requests being charged with the retransmissions
    waiting for them. The requests in flight are not in `answers` (they are bounded by the in-flight limits): the
    bound on answers holds whatever is in flight, with any size, 0 included (nothing kept).

    A request is told apart by (Session-Id, CC-Request-Number, command code). Entries are flat tuples and a list
    of waiting retransmissions exists only for a request that has some: a few objects less per request showed in
    the event-loop benchmark (the garbage collector's share)."""

    def __init__(self, size: int, window: float, clock: Callable[[], float]) -> None:
        self.size = size
        self.window = window
        self.clock = clock
        # key -> (Session-Id, CC-Request-Number, command code, answered at, answer bytes), oldest first
        self.answers: OrderedDict[DuplicateKey, tuple[str, int, int, float, bytes]] = OrderedDict()
        self.in_flight: dict[DuplicateKey, tuple[str, int, int]] = {}  # key -> the request being charged
        self.waiting: dict[DuplicateKey, Waiting] = {}
        # No answer expires before this time (the oldest's, or earlier when the count bound dropped it since).
        self._prune_at = 0.0

    def lookup(self, key: DuplicateKey, session: str, number: int, code: int) -> bytes | Waiting | None:
        """For a retransmission of this very request (not another request that reused the id, not one past the
        window): its answer, or the list of retransmissions waiting for it while it is charged. None otherwise."""
        kept = self.answers.get(key)
        if (
            kept is not None
            and kept[0] == session
            and kept[1] == number
            and kept[2] == code
            and self.clock() - kept[3] <= self.window
        ):
            return kept[4]
        if self.in_flight.get(key) == (session, number, code):
            return self.waiting.setdefault(key, [])
        return None

    def start(self, key: DuplicateKey, session: str, number: int, code: int) -> bool:
        """Note a request as being charged; False when another request with the same key already is (then this
        one is charged without duplicate detection: its key is taken)."""
        if key in self.in_flight:
            return False
        self.in_flight[key] = (session, number, code)
        return True

    def answered(self, key: DuplicateKey, data: bytes | None) -> Waiting | tuple[()]:
        """The request noted by `start` is answered: keep its answer (None: nothing to keep) and return the
        retransmissions that waited for it."""
        session, number, code = self.in_flight.pop(key)
        waiting = self.waiting.pop(key, _NOT_WAITING) if self.waiting else _NOT_WAITING
        if data is not None:
            now = self.clock()
            answers = self.answers
            if key in answers:
                del answers[key]  # re-inserted last: the order is that of the answers' times
            answers[key] = (session, number, code, now, data)
            if len(answers) > self.size:
                answers.popitem(last=False)
                while len(answers) > self.size:
                    answers.popitem(last=False)
            elif now > self._prune_at:
                self._prune(now)
        return waiting

    def _prune(self, now: float) -> None:
        """Forget the answers past the window (they are never served: `lookup` checks), the oldest first, and
        note when the next one expires; until then no insertion looks."""
        answers = self.answers
        while answers:
            at = next(iter(answers.values()))[3]
            if now - at <= self.window:
                self._prune_at = at + self.window
                return
            answers.popitem(last=False)
        self._prune_at = now + self.window


class GyApplication:
    def __init__(
        self,
        port: ChargingPort,
        identity: list[bytes],
        *,
        ccfh: int | None,
        session_failover: int | None,
        max_inflight_per_peer: int,
        max_inflight: int,
        duplicate_cache: int,
        duplicate_window: float = DUPLICATE_WINDOW,
        latency_budget: float = 0.0,
        shared_port: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`identity`: our Origin-Host and Origin-Realm, encoded. `duplicate_cache`, `duplicate_window`: the
        answers kept for retransmissions, and for how long (seconds). `latency_budget`: seconds a request may
        expect to wait for its answer (0: the counts alone). `shared_port`: see `signal`."""
        self.port = port
        self.encoder = AnswerEncoder(identity, ccfh, session_failover)
        self.max_inflight_per_peer = max_inflight_per_peer
        self.admission = Admission(latency_budget, max_inflight)
        self.duplicates = DuplicateCache(duplicate_cache, duplicate_window, clock)
        self.shared_port = shared_port
        # Refusals of every kind (3004, protocol errors, malformed CCRs) by Result-Code: counted, and logged as one
        # summary line per interval. A flood of them must not become a flood of log lines.
        self.refusals = RateLog(log, "gy_refusals")
        self.pending_signals: dict[int, tuple[str, str]] = {}  # hbh of our RAR/ASR -> (kind, session)
        self.by_host: dict[str, Link] = {}

    @property
    def inflight(self) -> int:
        return self.admission.in_flight

    @property
    def max_inflight(self) -> int:
        return self.admission.limit

    # -- peers ------------------------------------------------------------------------------------------------------
    def peer_opened(self, link: Link, origin_host: str) -> None:
        metrics.PEERS_UP.labels("gy").inc()
        self.by_host[origin_host] = link

    def peer_closed(self, link: Link) -> None:
        metrics.PEERS_UP.labels("gy").dec()
        if self.by_host.get(link.peer.peer_host) is link:
            del self.by_host[link.peer.peer_host]

    # -- requests ---------------------------------------------------------------------------------------------------
    def request(self, link: Link, msg: Message) -> None:
        """An application request of an open peer: answered now (an error, a duplicate) or once charged."""
        if msg.app != APP_CREDIT_CONTROL:
            self._protocol_error(link, msg, DIAMETER_APPLICATION_UNSUPPORTED, f"application {msg.app} is not supported")
            return
        if msg.code != CMD_CC:
            self._protocol_error(link, msg, DIAMETER_COMMAND_UNSUPPORTED, f"command {msg.code} is not supported")
            return
        admission = self.admission
        if link.inflight >= self.max_inflight_per_peer or not admission.admit():
            # Before the CCR is decoded: a retransmission is refused too, and sent again later like any 3004.
            _overload.inc()
            answer = self.encoder.too_busy(msg)
            if answer is None:
                self._protocol_error(link, msg, DIAMETER_TOO_BUSY, "too busy")
                return
            _too_busy.inc()
            self.refusals.note(_TOO_BUSY)
            link.write_answer(answer)
            return
        try:
            ccr = parse_ccr(msg)
        except DecodeError as exc:
            self._refuse(link, msg, exc.result_code, exc.failed_avp, str(exc))
            return
        duplicates = self.duplicates
        key = (ccr.origin_host, msg.e2e)
        session, number = ccr.session_id, ccr.request.number
        hit = duplicates.lookup(key, session, number, msg.code)
        if hit is not None:
            _duplicates.inc()
            if isinstance(hit, bytes):
                link.write_answer(answer_for_retransmission(hit, msg))
            else:  # the first copy is still being charged: answer this one when it is
                hit.append((link, msg))
            return
        tracked = duplicates.start(key, session, number, msg.code)
        link.inflight += 1
        started = time.perf_counter()
        admission.started(started)
        done = partial(self._charged, link, msg, ccr, key if tracked else None, started)
        try:
            # A callback, not a Task or future per request: they were a tenth of the loop's work in profiles.
            self.port.charge_then(ccr.request, done)
        except Exception as exc:  # the core cannot take it now (chf/runtime/port.py): answered by `_charged`
            done(exc)

    def _charged(
        self,
        link: Link,
        msg: Message,
        ccr: ParsedCCR,
        key: DuplicateKey | None,
        started: float,
        result: ChargingAnswer | BaseException,
    ) -> None:
        link.inflight -= 1
        now = time.perf_counter()
        self.admission.finished(now)
        operation = OPERATIONS[ccr.request_type]
        kept: bytes | None = None
        if isinstance(result, BaseException):
            data = self._refused_by_core(link, msg, ccr, operation, result)
        else:
            if result.duplicate:
                _duplicates.inc()
            data = self.encoder.encode_cca(msg, ccr, result)
            _requests("gy", operation, result.result).inc()
            if result.result != "success":
                log.info(
                    "event=cca session=%s number=%d result=%s detail=%s",
                    ccr.session_id,
                    ccr.request.number,
                    result.result,
                    result.detail or "-",
                )
            # Only what the core decided is kept: a refusal (an exception above, or 5012 for a result we cannot
            # map) would answer a retransmission with a refusal the core may no longer make.
            if result.result in RESULT_CODES:
                kept = data
        waiting = self.duplicates.answered(key, kept) if key is not None else _NOT_WAITING
        _latency("gy", operation).observe(now - started)
        if link.connected:
            link.write_answer(data)
        for other, other_msg in waiting:
            if other.connected:
                other.write_answer(answer_for_retransmission(data, other_msg))

    def _refused_by_core(self, link: Link, msg: Message, ccr: ParsedCCR, operation: str, exc: BaseException) -> bytes:
        refused = refusal(exc)
        code = refused.result_code
        if refused.transient:  # store queue full, store stopping, core link down: the PGW retries elsewhere
            _overload.inc()
            self.refusals.note(str(code))
            data = link.peer.answer(
                msg, self._error_avps(msg, code, "the charging function is busy"), error=refused.error_bit
            )
        else:
            text = f"{exc.field}: {exc.message}" if isinstance(exc, RequestError) else "internal error"
            if not isinstance(exc, RequestError):
                log.error("event=charge_failed session=%s error=%r", ccr.session_id, exc, exc_info=exc)
            log.warning("event=cca session=%s result=%d error=%s", ccr.session_id, code, text)
            failed = None
            if isinstance(exc, RequestError) and exc.field.startswith(USAGE_BOUND_FIELD + "/"):
                # Implausible usage (over [engine] max_report_*): 5004 naming the Used-Service-Unit (RFC 6733 7.5).
                code = DIAMETER_INVALID_AVP_VALUE
                failed = used_unit_failed_avp(ccr, exc.field)
            elif isinstance(exc, RequestError) and exc.field == CURRENCY_FIELD and ccr.currency_avp is not None:
                # Money in a currency the account is not in: RFC 4006 9.1 5031, "an AVP value that is not ...
                # supported in the rating"; the Failed-AVP MUST be included: the Currency-Code received.
                code = DIAMETER_RATING_FAILED
                failed = ccr.currency_avp
            data = link.peer.answer(msg, self.encoder.failure(msg, code, failed, text))
        metrics.PROTOCOL_ERRORS.labels("gy", str(code)).inc()
        _requests("gy", operation, str(code)).inc()
        return data

    def _error_avps(self, msg: Message, code: int, text: str) -> list[bytes]:
        return self.encoder.failure(msg, code, None, text)

    def _protocol_error(self, link: Link, msg: Message, code: int, text: str) -> None:
        """3xxx: an answer with the E bit (RFC 6733 7.1.3). Counted and summarised, not logged one by one."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event=protocol_error peer=%s command=%d result=%d error=%s", link.peer.peer_host, msg.code, code, text
            )
        _protocol_errors(str(code)).inc()
        self.refusals.note(str(code))
        link.write_answer(link.peer.answer(msg, self._error_avps(msg, code, text), error=True))

    def _refuse(self, link: Link, msg: Message, code: int, failed_avp: bytes | None, text: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            session = _session_text(msg)
            log.debug(
                "event=ccr_refused peer=%s session=%s result=%d error=%s", link.peer.peer_host, session, code, text
            )
        _protocol_errors(str(code)).inc()
        self.refusals.note(str(code))
        answer = self.encoder.failure(msg, code, failed_avp, text)
        link.write_answer(link.peer.answer(msg, answer, error=is_protocol_error(code)))

    # -- server-initiated -------------------------------------------------------------------------------------------
    def signal(self, sig: Signal) -> None:
        """A re-auth or abort from the core: RAR or ASR (RFC 4006 5.5, RFC 6733 8.5) to the client's connection.

        With a shared port (front-end workers behind SO_REUSEPORT, each holding some of the connections) every
        worker gets every signal: only the one holding the peer's connection acts on it and counts it."""
        if not sig.session.startswith("gy:"):
            return
        notify = sig.notify if isinstance(sig.notify, list | tuple) and len(sig.notify) == 2 else None
        link = self.by_host.get(notify[0]) if notify else None
        if link is None or not link.connected:
            if self.shared_port:  # another worker may hold the peer: not ours to count or log
                return
            metrics.SIGNALS.labels("gy", sig.kind, "no_peer").inc()
            log.info("event=signal_undeliverable kind=%s session=%s", sig.kind, sig.session)
            return
        assert notify is not None
        session_id = sig.session[3:]
        avps = [
            E("Session-Id").text(session_id),
            *link.peer.identity_avps,
            E("Destination-Realm").octets(str(notify[1]).encode()),
            E("Destination-Host").octets(str(notify[0]).encode()),
            E("Auth-Application-Id").u32(APP_CREDIT_CONTROL),
        ]
        if sig.kind == "reauth":
            avps.append(E("Re-Auth-Request-Type").i32(RE_AUTH_AUTHORIZE_ONLY))
            if len(sig.rating_groups) == 1:
                avps.append(E("Rating-Group").u32(sig.rating_groups[0]))
            code = CMD_RA
        else:
            code = CMD_AS
        hbh = link.peer.send_request(code, APP_CREDIT_CONTROL, avps)
        self.pending_signals[hbh] = (sig.kind, session_id)
        if len(self.pending_signals) > MAX_PENDING_SIGNALS:
            self.pending_signals.pop(next(iter(self.pending_signals)))
        link.flush()
        metrics.SIGNALS.labels("gy", sig.kind, "sent").inc()
        log.info("event=signal_sent kind=%s session=%s peer=%s", sig.kind, session_id, notify[0])

    def answer(self, msg: Message) -> None:
        """An answer from a peer: to one of our RAR/ASR, matched by Hop-by-Hop id."""
        pending = self.pending_signals.pop(msg.hbh, None)
        if pending is None:
            log.info("event=unexpected_answer command=%d hbh=%#x", msg.code, msg.hbh)
            return
        kind, session = pending
        try:
            rc = find(msg.avps, RESULT_CODE)
            result = rc.u32() if rc is not None else 0
        except DecodeError:
            result = 0
        outcome = "answered" if result in (DIAMETER_SUCCESS, DIAMETER_LIMITED_SUCCESS) else "refused"
        metrics.SIGNALS.labels("gy", kind, outcome).inc()
        log.info("event=signal_answered kind=%s session=%s result=%d", kind, session, result)


def _session_text(msg: Message) -> str:
    try:
        a = find(msg.avps, SESSION_ID)
        return a.data.decode("utf-8", "replace") if a is not None else "-"
    except DecodeError:
        return "-"


def answer_for_retransmission(answer: bytes, request: Message) -> bytes:
    """A stored answer re-addressed to a retransmitted request (its Hop-by-Hop id may differ)."""
    return answer[:12] + request.hbh.to_bytes(4, "big") + answer[16:]
