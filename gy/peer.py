"""The Diameter peer state machine of one connection (RFC 6733 section 5, RFC 3539 watchdog), sans-IO.

The asyncio layer feeds it received bytes (`receive`), the current time (`on_timer`) and requests the server
wants to send (`send_request`); it returns events and queues bytes to write (`data_to_send`). It answers the
base protocol itself: CER/CEA, DWR/DWA and DPR/DPA. Application requests (CCR, and answers to our RAR/ASR)
come out as events once the capabilities exchange has succeeded; nothing else is processed before CEA.

States (responder side): WAIT_CER -> OPEN -> CLOSING -> CLOSED. In OPEN, the watchdog sends a DWR after Tw
(jittered +-2 s, RFC 3539 3.4.1) without traffic; an unanswered DWR makes the peer SUSPECT after another Tw
and the connection is closed after one more.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from gy.codec import (
    FLAG_ERROR,
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    HEADER_LEN,
    HEADER_RESERVED_BITS,
    MAX_MESSAGE,
    DecodeError,
    E,
    Message,
    decode_header,
    encode_message,
    end_to_end_ids,
    find_all,
)
from gy.codes import (
    ACCT_APPLICATION_ID,
    AUTH_APPLICATION_ID,
    DIAMETER_INVALID_HDR_BITS,
    DIAMETER_MISSING_AVP,
    DIAMETER_NO_COMMON_APPLICATION,
    DIAMETER_SUCCESS,
    DIAMETER_UNKNOWN_PEER,
    DIAMETER_UNSUPPORTED_VERSION,
    ORIGIN_HOST,
    ORIGIN_REALM,
    VENDOR_SPECIFIC_APPLICATION_ID,
    is_protocol_error,
)
from gy.dictionary import VENDOR_3GPP
from gy.grammar import APP_BASE, APP_CREDIT_CONTROL, APP_RELAY, BASE_COMMANDS, CMD_CE, CMD_DP, CMD_DW

log = logging.getLogger("gy.peer")

WAIT_CER = "wait_cer"
OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"

DISCONNECT_REBOOTING = 0
DISCONNECT_BUSY = 1
DISCONNECT_DO_NOT_WANT_TO_TALK = 2


# A request without the E bit or reserved header bits; base-protocol commands the state machine answers itself.
_PLAIN_REQUEST_MASK = FLAG_REQUEST | FLAG_ERROR | HEADER_RESERVED_BITS


@dataclass(slots=True)
class LocalIdentity:
    origin_host: str = "chf.localdomain"
    origin_realm: str = "localdomain"
    host_ip: str = "127.0.0.1"
    vendor_id: int = 0
    product_name: str = "chf"
    origin_state_id: int = 1
    firmware_revision: int = 1


@dataclass(slots=True)
class PeerPolicy:
    """Who may connect: peers by Origin-Host, each with its realm; or anyone when allow_unknown."""

    peers: dict[str, str] = field(default_factory=dict)  # origin host -> realm
    allow_unknown: bool = False
    tw: float = 30.0
    max_message: int = MAX_MESSAGE  # bytes; a longer message closes the connection
    message_timeout: float = 10.0  # seconds for a message begun to arrive whole

    def admits(self, host: str, realm: str) -> bool:
        if host in self.peers:
            return self.peers[host] in ("", realm)
        return self.allow_unknown


# Events handed to the asyncio layer.
@dataclass(slots=True)
class RequestReceived:
    message: Message


@dataclass(slots=True)
class AnswerReceived:
    message: Message


@dataclass(slots=True)
class PeerOpened:
    origin_host: str
    origin_realm: str


@dataclass(slots=True)
class PeerClosed:
    reason: str


class PeerConnection:
    def __init__(
        self,
        local: LocalIdentity,
        policy: PeerPolicy,
        now: float,
        *,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.local = local
        self.policy = policy
        self.state = WAIT_CER
        self.peer_host = ""
        self.peer_realm = ""
        self.suspect = False
        self._buf = bytearray()
        self._partial_since: float | None = None  # when the incomplete message in _buf began to arrive
        self._out: list[bytes] = []
        self._rng = rng
        self._hbh = random.getrandbits(32)
        self._e2e = end_to_end_ids()
        self._last_rx = now
        self._dwr_sent_at: float | None = None
        self._dwr_hbh: int | None = None
        self._dpr_hbh: int | None = None
        self._deadline = now + self._tw()
        self.close_after_flush = False
        self._identity = [
            E("Origin-Host").octets(local.origin_host.encode()),
            E("Origin-Realm").octets(local.origin_realm.encode()),
        ]

    # -- identifiers --------------------------------------------------------------------------------------------
    def next_hbh(self) -> int:
        self._hbh = (self._hbh + 1) & 0xFFFFFFFF
        return self._hbh

    def next_e2e(self) -> int:
        return next(self._e2e)

    def _tw(self) -> float:
        tw = self.policy.tw
        jitter = min(2.0, tw / 4)
        return tw + self._rng(-jitter, jitter)

    # -- output -------------------------------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def send(self, data: bytes) -> None:
        self._out.append(data)

    @property
    def identity_avps(self) -> list[bytes]:
        """Origin-Host and Origin-Realm, encoded once."""
        return self._identity

    def answer(self, req: Message, avps: list[bytes], *, error: bool = False) -> bytes:
        flags = (req.flags & FLAG_PROXIABLE) | (FLAG_ERROR if error else 0)
        return encode_message(req.code, flags, req.app, req.hbh, req.e2e, avps)

    def send_request(self, code: int, app: int, avps: list[bytes], *, proxiable: bool = True) -> int:
        """Queue a request to the peer (RAR, ASR); returns its Hop-by-Hop id to match the answer."""
        hbh = self.next_hbh()
        flags = FLAG_REQUEST | (FLAG_PROXIABLE if proxiable else 0)
        self.send(encode_message(code, flags, app, hbh, self.next_e2e(), avps))
        return hbh

    # -- input --------------------------------------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> list[object]:
        """Bytes from the socket; returns events. Framing errors close the connection."""
        if self.state == CLOSED:
            return []
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
        elif type(data) is not bytes:
            data = bytes(data)
        # Messages are cut from `data` by offset and the remainder kept once: a chunk holds dozens of messages
        # under load, and cutting each from the front of a bytearray moves the rest every time.
        events: list[object] = []
        self._last_rx = now
        self.suspect = False
        pos = 0
        size = len(data)
        max_message = self.policy.max_message
        while size - pos >= 4:
            length = (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
            if length < HEADER_LEN or length > max_message or length & 3:
                # The stream cannot be framed any more: nothing after this point can be trusted.
                buf.clear()
                return events + self._close(f"invalid message length {length}")
            if size - pos < length:
                break
            raw = data[pos : pos + length]
            pos += length
            if raw[0] != 1:
                # RFC 6733 7.1.5 DIAMETER_UNSUPPORTED_VERSION; the length field still frames the stream.
                msg = decode_header(raw)
                if msg.is_request:
                    self.send(self.answer(msg, self._result(DIAMETER_UNSUPPORTED_VERSION)))
                if self.state == WAIT_CER:  # it cannot open a connection: answered once, not again and again
                    events.extend(self._close(f"Diameter version {raw[0]} before capabilities exchange"))
                    break
                continue
            msg = decode_header(raw)
            if self.state == OPEN and msg.flags & _PLAIN_REQUEST_MASK == FLAG_REQUEST and msg.code not in BASE_COMMANDS:
                events.append(RequestReceived(msg))  # the common case, straight through `_message`
                continue
            events.extend(self._message(msg, now))
            if self.state == CLOSED:
                break
        buf[:] = data[pos:] if pos < size and self.state != CLOSED else b""
        if not buf:
            self._partial_since = None
        elif pos or self._partial_since is None:  # a new message began in this read
            self._partial_since = now
        return events

    def _result(self, code: int, *extra: bytes) -> list[bytes]:
        return [E("Result-Code").u32(code), *self._identity, *extra]

    def _message(self, msg: Message, now: float) -> list[object]:
        code = msg.code
        if msg.is_request:
            if msg.flags & FLAG_ERROR or msg.flags & HEADER_RESERVED_BITS:
                # 3008: a request with the E bit (or reserved bits) set. Answered in every state that can answer;
                # before CER, as anything but a CER, it closes the connection.
                self.send(self.answer(msg, self._result(DIAMETER_INVALID_HDR_BITS), error=True))
                return self._close("invalid header bits before capabilities exchange") if self.state == WAIT_CER else []
            if self.state == WAIT_CER:
                if code != CMD_CE:
                    return self._close(f"command {code} before capabilities exchange")
                return self._on_cer(msg)
            if code == CMD_DW:
                self.send(
                    self.answer(
                        msg, self._result(DIAMETER_SUCCESS, E("Origin-State-Id").u32(self.local.origin_state_id))
                    )
                )
                return []
            if code == CMD_DP:
                self.send(self.answer(msg, self._result(DIAMETER_SUCCESS)))
                self.close_after_flush = True
                return self._close("peer sent DPR", clean=True)
            if code == CMD_CE:
                # RFC 6733 5.2: a CER on an open connection is an election loss for the peer; refuse it. 3010 is a
                # protocol error: the E bit (RFC 6733 7.1.3), and the CEA's own AVPs as in every CEA we send.
                self.send(self.answer(msg, self._result(DIAMETER_UNKNOWN_PEER, *self._cea_tail()), error=True))
                return []
            if self.state != OPEN:
                return []
            return [RequestReceived(msg)]
        # Answers.
        if self.state == WAIT_CER:
            return self._close("answer before capabilities exchange")
        if code == CMD_DW and msg.hbh == self._dwr_hbh:
            self._dwr_hbh = None
            self._dwr_sent_at = None
            return []
        if code == CMD_DP and msg.hbh == self._dpr_hbh:
            self.close_after_flush = True
            return self._close("DPA received", clean=True)
        return [AnswerReceived(msg)]

    def _on_cer(self, msg: Message) -> list[object]:
        try:
            host_avp = msg.find(ORIGIN_HOST)
            realm_avp = msg.find(ORIGIN_REALM)
            host = host_avp.data.decode("utf-8", "replace") if host_avp else ""
            realm = realm_avp.data.decode("utf-8", "replace") if realm_avp else ""
            ids = (AUTH_APPLICATION_ID, ACCT_APPLICATION_ID)
            apps = {a.u32() for a in msg.avps if a.code in ids and not a.vendor}
            for vsa in find_all(msg.avps, VENDOR_SPECIFIC_APPLICATION_ID):
                apps |= {a.u32() for a in vsa.children if a.code in ids}
        except DecodeError as exc:
            # The E bit marks protocol errors (3xxx) only, RFC 6733 7.1.3; a malformed AVP is a 5xxx failure.
            code = exc.result_code
            failed = [E("Failed-AVP").grouped([exc.failed_avp])] if exc.failed_avp else []
            self.send(self.answer(msg, self._result(code, *self._cea_tail(), *failed), error=is_protocol_error(code)))
            return self._close(f"malformed CER: {exc}")
        if not host or not realm:
            # RFC 6733 7.5: Failed-AVP holds an example of the missing AVP.
            missing = E("Origin-Host" if not host else "Origin-Realm").octets(b"")
            example = E("Failed-AVP").grouped([missing])
            self.send(self.answer(msg, self._result(DIAMETER_MISSING_AVP, *self._cea_tail(), example)))
            return self._close("CER without Origin-Host or Origin-Realm")
        self.peer_host = host
        self.peer_realm = realm
        if not self.policy.admits(host, realm):
            self.send(self.answer(msg, self._result(DIAMETER_UNKNOWN_PEER, *self._cea_tail()), error=True))
            self.close_after_flush = True
            return self._close(f"unknown peer {host} realm {realm}")
        if APP_CREDIT_CONTROL not in apps and APP_RELAY not in apps:
            self.send(self.answer(msg, self._result(DIAMETER_NO_COMMON_APPLICATION, *self._cea_tail())))
            self.close_after_flush = True
            return self._close(f"no common application with {host} (offered {sorted(apps)})")
        self.send(self.answer(msg, self._result(DIAMETER_SUCCESS, *self._cea_tail())))
        self.state = OPEN
        return [PeerOpened(host, realm)]

    def _cea_tail(self) -> list[bytes]:
        local = self.local
        return [
            E("Host-IP-Address").address(local.host_ip),
            E("Vendor-Id").u32(local.vendor_id),
            E("Product-Name").text(local.product_name),
            E("Origin-State-Id").u32(local.origin_state_id),
            E("Supported-Vendor-Id").u32(VENDOR_3GPP),
            E("Auth-Application-Id").u32(APP_CREDIT_CONTROL),
            E("Firmware-Revision").u32(local.firmware_revision),
        ]

    # -- timers -------------------------------------------------------------------------------------------------
    def on_timer(self, now: float) -> list[object]:
        """Drive the watchdog (and the CER wait, and the time a message may take to arrive) from the clock; returns
        events."""
        if self.state == CLOSED:
            return []
        if self._partial_since is not None and now - self._partial_since > self.policy.message_timeout:
            self._buf.clear()
            return self._close(f"a message did not arrive whole within {self.policy.message_timeout:g} s")
        if now < self._deadline:
            return []
        if self.state == WAIT_CER:
            return self._close("no CER within Tw")
        if self.state == CLOSING:
            return self._close("no DPA within Tw")
        if self._dwr_sent_at is None:
            if now - self._last_rx >= self.policy.tw - 2.5:
                self._dwr_hbh = self.send_request(CMD_DW, APP_BASE, [*self._identity, self._osi()], proxiable=False)
                self._dwr_sent_at = now
            self._deadline = now + self._tw()
            return []
        if not self.suspect:
            self.suspect = True  # RFC 3539: SUSPECT; one more Tw before the connection is declared down
            log.warning("event=peer_suspect peer=%s", self.peer_host)
            self._deadline = now + self._tw()
            return []
        return self._close("watchdog: no answer to DWR")

    def _osi(self) -> bytes:
        return E("Origin-State-Id").u32(self.local.origin_state_id)

    # -- closing ------------------------------------------------------------------------------------------------
    def disconnect(self, now: float, cause: int = DISCONNECT_REBOOTING) -> None:
        """Start a graceful close: send DPR; the connection closes on DPA (or after Tw)."""
        if self.state != OPEN:
            self._close("disconnect before open")
            return
        self._dpr_hbh = self.send_request(
            CMD_DP, APP_BASE, [*self._identity, E("Disconnect-Cause").i32(cause)], proxiable=False
        )
        self.state = CLOSING
        self._deadline = now + self.policy.tw

    def _close(self, reason: str, *, clean: bool = False) -> list[object]:
        if self.state == CLOSED:
            return []
        self.state = CLOSED
        if not clean:
            self.close_after_flush = True
        return [PeerClosed(reason)]
