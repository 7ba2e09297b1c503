"""A small asyncio Diameter client over our codec: the tests' and the load generator's PGW.

It performs the capabilities exchange, sends requests and matches answers by Hop-by-Hop id, answers the
server's DWR, DPR, RAR and ASR (recording the last two), and builds CCRs from plain Python values.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

from gy.codec import (
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    E,
    Message,
    decode_header,
    encode_message,
    end_to_end_ids,
    message_length,
)
from gy.codes import DIAMETER_SUCCESS, SESSION_ID
from gy.grammar import APP_BASE, APP_CREDIT_CONTROL, CMD_AS, CMD_CC, CMD_CE, CMD_DP, CMD_DW, CMD_RA


@dataclass(slots=True)
class Mscc:
    rating_group: int | None = None
    requested: dict[str, int] | None = None  # {} = an empty RSU
    used: list[dict[str, int]] = field(default_factory=list)  # each dict one USU; key "reason" = 3GPP code
    reason: int | None = None
    service_id: int | None = None


def units_avps(units: dict[str, int]) -> list[bytes]:
    out = []
    for key, value in units.items():
        if key == "bytes":
            out.append(E("CC-Total-Octets").u64(value))
        elif key == "bytes_in":
            out.append(E("CC-Input-Octets").u64(value))
        elif key == "bytes_out":
            out.append(E("CC-Output-Octets").u64(value))
        elif key == "seconds":
            out.append(E("CC-Time").u32(value))
        elif key == "events":
            out.append(E("CC-Service-Specific-Units").u64(value))
        elif key == "money":  # micro-units, in the ISO 4217 numeric currency of key "currency" if given
            money = [E("Unit-Value").grouped([E("Value-Digits").i64(value), E("Exponent").i32(-6)])]
            if "currency" in units:
                money.append(E("Currency-Code").u32(units["currency"]))
            out.append(E("CC-Money").grouped(money))
        elif key == "reason":
            out.append(E("3GPP-Reporting-Reason").i32(value))
        elif key == "tariff_change":
            out.append(E("Tariff-Change-Usage").i32(value))
    return out


def mscc_avp(m: Mscc) -> bytes:
    parts = []
    if m.rating_group is not None:
        parts.append(E("Rating-Group").u32(m.rating_group))
    if m.service_id is not None:
        parts.append(E("Service-Identifier").u32(m.service_id))
    if m.requested is not None:
        parts.append(E("Requested-Service-Unit").grouped(units_avps(m.requested)))
    for used in m.used:
        parts.append(E("Used-Service-Unit").grouped(units_avps(used)))
    if m.reason is not None:
        parts.append(E("3GPP-Reporting-Reason").i32(m.reason))
    return E("Multiple-Services-Credit-Control").grouped(parts)


def ccr_avps(
    session_id: str,
    request_type: int,
    number: int,
    *,
    origin_host: str,
    origin_realm: str,
    imsi: str | None = None,
    msisdn: str | None = None,
    mscc: Iterable[Mscc] = (),
    context: str = "32251@3gpp.org",
    destination_realm: str = "localdomain",
    mcc_mnc: str | None = None,
    requested_action: int | None = None,
    extra: Iterable[bytes] = (),
) -> list[bytes]:
    avps = [
        E("Session-Id").text(session_id),
        E("Origin-Host").octets(origin_host.encode()),
        E("Origin-Realm").octets(origin_realm.encode()),
        E("Destination-Realm").octets(destination_realm.encode()),
        E("Auth-Application-Id").u32(APP_CREDIT_CONTROL),
        E("Service-Context-Id").text(context),
        E("CC-Request-Type").i32(request_type),
        E("CC-Request-Number").u32(number),
    ]
    if msisdn is not None:
        avps.append(
            E("Subscription-Id").grouped([E("Subscription-Id-Type").i32(0), E("Subscription-Id-Data").text(msisdn)])
        )
    if imsi is not None:
        avps.append(
            E("Subscription-Id").grouped([E("Subscription-Id-Type").i32(1), E("Subscription-Id-Data").text(imsi)])
        )
    if requested_action is not None:
        avps.append(E("Requested-Action").i32(requested_action))
    avps.extend(mscc_avp(m) for m in mscc)
    if mcc_mnc is not None:
        ps = E("PS-Information").grouped([E("3GPP-SGSN-MCC-MNC").text(mcc_mnc)])
        avps.append(E("Service-Information").grouped([ps]))
    avps.extend(extra)
    return avps


class DiameterClient(asyncio.Protocol):
    def __init__(self, origin_host: str, origin_realm: str, *, answer_server_requests: int = DIAMETER_SUCCESS) -> None:
        self.origin_host = origin_host
        self.origin_realm = origin_realm
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._hbh = itertools.count(1)
        self._e2e = end_to_end_ids()  # RFC 6733 3: not restarting at the same value on every connection
        self.server_requests: asyncio.Queue[Message] = asyncio.Queue()
        self.answer_server_requests = answer_server_requests
        self.answer_watchdog = True
        self.received: dict[int, int] = {}  # server-initiated requests by command code
        self.closed = asyncio.get_event_loop().create_future()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        origin_host: str = "pgw.localdomain",
        origin_realm: str = "localdomain",
        *,
        cer: bool = True,
        apps: Iterable[int] = (APP_CREDIT_CONTROL,),
    ) -> tuple[Self, Message | None]:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(origin_host, origin_realm), host, port)
        cea = await client.capabilities(apps) if cer else None
        return client, cea

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= 4:
            length = message_length(buf)
            if len(buf) < length or length < 20:
                break
            msg = decode_header(bytes(buf[:length]))
            del buf[:length]
            if msg.is_request:
                self._server_request(msg)
            else:
                fut = self._pending.pop(msg.hbh, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    def _server_request(self, msg: Message) -> None:
        self.received[msg.code] = self.received.get(msg.code, 0) + 1
        if msg.code == CMD_DW and not self.answer_watchdog:
            return
        ident = [
            E("Origin-Host").octets(self.origin_host.encode()),
            E("Origin-Realm").octets(self.origin_realm.encode()),
        ]
        avps = [
            E("Result-Code").u32(DIAMETER_SUCCESS if msg.code in (CMD_DW, CMD_DP) else self.answer_server_requests),
            *ident,
        ]
        session = msg.find(SESSION_ID)
        if session is not None:
            avps.insert(0, E("Session-Id").octets(session.data))
        if self.transport is not None:
            self.transport.write(encode_message(msg.code, msg.flags & FLAG_PROXIABLE, msg.app, msg.hbh, msg.e2e, avps))
        if msg.code in (CMD_RA, CMD_AS):
            self.server_requests.put_nowait(msg)

    def send_raw(self, data: bytes) -> None:
        if self.transport is None:  # the peer closed the connection (a server killed between two requests)
            raise ConnectionResetError("the connection to the Diameter server is closed")
        self.transport.write(data)

    def request_bytes(
        self,
        code: int,
        app: int,
        avps: list[bytes],
        *,
        flags: int = FLAG_REQUEST | FLAG_PROXIABLE,
        e2e: int | None = None,
    ) -> tuple[int, bytes]:
        hbh = next(self._hbh)
        return hbh, encode_message(code, flags, app, hbh, next(self._e2e) if e2e is None else e2e, avps)

    def expect(self, hbh: int) -> asyncio.Future[Message]:
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[hbh] = fut
        return fut

    async def request(self, code: int, app: int, avps: list[bytes], *, timeout: float = 10.0, **kw: int) -> Message:
        hbh, data = self.request_bytes(code, app, avps, **kw)
        fut = self.expect(hbh)
        self.send_raw(data)
        return await asyncio.wait_for(fut, timeout)

    async def capabilities(self, apps: Iterable[int] = (APP_CREDIT_CONTROL,)) -> Message:
        avps = [
            E("Origin-Host").octets(self.origin_host.encode()),
            E("Origin-Realm").octets(self.origin_realm.encode()),
            E("Host-IP-Address").address("127.0.0.1"),
            E("Vendor-Id").u32(10415),
            E("Product-Name").text("chf-test-client"),
            *[E("Auth-Application-Id").u32(a) for a in apps],
        ]
        return await self.request(CMD_CE, APP_BASE, avps, flags=FLAG_REQUEST)

    async def ccr(self, avps: list[bytes], **kw: int) -> Message:
        return await self.request(CMD_CC, APP_CREDIT_CONTROL, avps, **kw)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
