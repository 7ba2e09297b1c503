"""AgentX (RFC 2741) PDUs: encoding and decoding, without I/O.

`encode(pdu)` gives the bytes of one PDU; `Decoder.feed(data)` takes bytes as they arrive from the master agent
and returns the whole PDUs among them. Both follow RFC 2741 section 6: a 20-byte header (version 1, type, flags,
session, transaction and packet ids, payload length), then the payload of the type. We send in network byte order
(the NETWORK_BYTE_ORDER flag set) and read either order, as the flag of each PDU says.

Values (RFC 2741 5.4) are `(type, value)`: INTEGER a Python int (signed 32 bits), OCTET STRING / Opaque / IpAddress
bytes, OBJECT IDENTIFIER a tuple of ints, Counter32 / Gauge32 / TimeTicks / Counter64 unsigned ints, Null and the
three exceptions (noSuchObject, noSuchInstance, endOfMibView) None.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
HEADER_LEN = 20
MAX_PAYLOAD = 1 << 20  # a PDU announcing more is not AgentX from a sane master: the stream is dropped

# PDU types (RFC 2741 6.1)
OPEN = 1
CLOSE = 2
REGISTER = 3
UNREGISTER = 4
GET = 5
GET_NEXT = 6
GET_BULK = 7
TEST_SET = 8
COMMIT_SET = 9
UNDO_SET = 10
CLEANUP_SET = 11
NOTIFY = 12
PING = 13
INDEX_ALLOCATE = 14
INDEX_DEALLOCATE = 15
ADD_AGENT_CAPS = 16
REMOVE_AGENT_CAPS = 17
RESPONSE = 18

# Header flags
INSTANCE_REGISTRATION = 0x01
NEW_INDEX = 0x02
ANY_INDEX = 0x04
NON_DEFAULT_CONTEXT = 0x08
NETWORK_BYTE_ORDER = 0x10

# Value types (RFC 2741 5.4)
INTEGER = 2
OCTET_STRING = 4
NULL = 5
OBJECT_IDENTIFIER = 6
IP_ADDRESS = 64
COUNTER32 = 65
GAUGE32 = 66
TIME_TICKS = 67
OPAQUE = 68
COUNTER64 = 70
NO_SUCH_OBJECT = 128
NO_SUCH_INSTANCE = 129
END_OF_MIB_VIEW = 130

# Close reasons (RFC 2741 6.2.2)
REASON_OTHER = 1
REASON_PARSE_ERROR = 2
REASON_PROTOCOL_ERROR = 3
REASON_TIMEOUTS = 4
REASON_SHUTDOWN = 5
REASON_BY_MANAGER = 6

# Response errors (RFC 2741 6.2.16, and the SNMP errors a subagent may return)
NO_ERROR = 0
GEN_ERR = 5
NOT_WRITABLE = 17
OPEN_FAILED = 256
NOT_OPEN = 257
INDEX_WRONG_TYPE = 258
INDEX_ALREADY_ALLOCATED = 259
INDEX_NONE_AVAILABLE = 260
INDEX_NOT_ALLOCATED = 261
UNSUPPORTED_CONTEXT = 262
DUPLICATE_REGISTRATION = 263
UNKNOWN_REGISTRATION = 264
UNKNOWN_AGENT_CAPS = 265
PARSE_ERROR = 266
REQUEST_DENIED = 267
PROCESSING_ERROR = 268

INTERNET = (1, 3, 6, 1)
_UINT32 = 0xFFFFFFFF
_UINT64 = 0xFFFFFFFFFFFFFFFF
_INT_TYPES = frozenset((COUNTER32, GAUGE32, TIME_TICKS))
_BYTES_TYPES = frozenset((OCTET_STRING, IP_ADDRESS, OPAQUE))
_EMPTY_TYPES = frozenset((NULL, NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW))
# PDUs that carry a context when NON_DEFAULT_CONTEXT is set (RFC 2741 6.1.1)
_CONTEXT_TYPES = frozenset(
    (REGISTER, UNREGISTER, GET, GET_NEXT, GET_BULK, TEST_SET, NOTIFY, PING, INDEX_ALLOCATE, INDEX_DEALLOCATE)
) | frozenset((ADD_AGENT_CAPS, REMOVE_AGENT_CAPS))

Oid = tuple[int, ...]


class ParseError(ValueError):
    """Bytes that are not a valid AgentX PDU: the session cannot go on (RFC 2741 7.1.1: close with parseError)."""


@dataclass(slots=True)
class VarBind:
    type: int
    name: Oid
    value: Any = None


@dataclass(slots=True)
class SearchRange:
    start: Oid
    end: Oid = ()
    include: bool = False


@dataclass(slots=True)
class Pdu:
    """One PDU; the fields past the header are those of its type (the others keep their defaults)."""

    type: int
    session_id: int = 0
    transaction_id: int = 0
    packet_id: int = 0
    flags: int = NETWORK_BYTE_ORDER
    context: bytes | None = None  # with NON_DEFAULT_CONTEXT
    # Open (id, descr), Register / Unregister (subtree), AddAgentCaps (id, descr), RemoveAgentCaps (id)
    timeout: int = 0
    oid: Oid = ()
    descr: bytes = b""
    priority: int = 127
    range_subid: int = 0
    upper_bound: int = 0
    reason: int = 0  # Close
    ranges: list[SearchRange] = field(default_factory=list)  # Get, GetNext, GetBulk
    non_repeaters: int = 0  # GetBulk
    max_repetitions: int = 0
    varbinds: list[VarBind] = field(default_factory=list)  # Response, Notify, TestSet, IndexAllocate...
    sys_uptime: int = 0  # Response
    error: int = 0
    index: int = 0


# ----------------------------------------------------------------------------------------------------------------------
# encoding (always network byte order)
# ----------------------------------------------------------------------------------------------------------------------
def encode_oid(oid: Oid, include: bool = False) -> bytes:
    prefix = 0
    subids = oid
    if len(oid) >= 5 and oid[:4] == INTERNET and 0 < oid[4] <= 255:
        prefix = oid[4]
        subids = oid[5:]
    if len(subids) > 128:
        raise ValueError(f"an OID of {len(oid)} sub-identifiers is longer than AgentX allows (128)")
    for subid in subids:
        if not 0 <= subid <= _UINT32:
            raise ValueError(f"sub-identifier {subid} is out of range")
    return struct.pack(f">BBBx{len(subids)}I", len(subids), prefix, 1 if include else 0, *subids)


def encode_octets(data: bytes) -> bytes:
    pad = -len(data) % 4
    return struct.pack(">I", len(data)) + data + b"\0" * pad


def encode_value(type_: int, value: Any) -> bytes:
    if type_ == INTEGER:
        return struct.pack(">i", value)
    if type_ in _INT_TYPES:
        return struct.pack(">I", min(max(int(value), 0), _UINT32))
    if type_ == COUNTER64:
        return struct.pack(">Q", int(value) & _UINT64)
    if type_ in _BYTES_TYPES:
        return encode_octets(value)
    if type_ == OBJECT_IDENTIFIER:
        return encode_oid(value)
    if type_ in _EMPTY_TYPES:
        return b""
    raise ValueError(f"unknown AgentX value type {type_}")


def encode_varbind(vb: VarBind) -> bytes:
    return struct.pack(">Hxx", vb.type) + encode_oid(vb.name) + encode_value(vb.type, vb.value)


def _payload(pdu: Pdu) -> bytes:
    t = pdu.type
    if t == OPEN:
        return struct.pack(">Bxxx", pdu.timeout) + encode_oid(pdu.oid) + encode_octets(pdu.descr)
    if t == CLOSE:
        return struct.pack(">Bxxx", pdu.reason)
    if t in (REGISTER, UNREGISTER):
        timeout = pdu.timeout if t == REGISTER else 0
        out = struct.pack(">BBBx", timeout, pdu.priority, pdu.range_subid) + encode_oid(pdu.oid)
        return out + (struct.pack(">I", pdu.upper_bound) if pdu.range_subid else b"")
    if t in (GET, GET_NEXT, GET_BULK):
        head = struct.pack(">HH", pdu.non_repeaters, pdu.max_repetitions) if t == GET_BULK else b""
        return head + b"".join(encode_oid(r.start, r.include) + encode_oid(r.end) for r in pdu.ranges)
    if t == RESPONSE:
        head = struct.pack(">IHH", pdu.sys_uptime, pdu.error, pdu.index)
        return head + b"".join(encode_varbind(vb) for vb in pdu.varbinds)
    if t in (TEST_SET, NOTIFY, INDEX_ALLOCATE, INDEX_DEALLOCATE):
        return b"".join(encode_varbind(vb) for vb in pdu.varbinds)
    if t == ADD_AGENT_CAPS:
        return encode_oid(pdu.oid) + encode_octets(pdu.descr)
    if t == REMOVE_AGENT_CAPS:
        return encode_oid(pdu.oid)
    if t in (COMMIT_SET, UNDO_SET, CLEANUP_SET, PING):
        return b""
    raise ValueError(f"unknown AgentX PDU type {t}")


def encode(pdu: Pdu) -> bytes:
    """The bytes of `pdu`, in network byte order."""
    flags = pdu.flags | NETWORK_BYTE_ORDER
    context = b""
    if pdu.context is not None and pdu.type in _CONTEXT_TYPES:
        flags |= NON_DEFAULT_CONTEXT
        context = encode_octets(pdu.context)
    else:
        flags &= ~NON_DEFAULT_CONTEXT
    payload = context + _payload(pdu)
    header = struct.pack(
        ">BBBxIIII", VERSION, pdu.type, flags, pdu.session_id, pdu.transaction_id, pdu.packet_id, len(payload)
    )
    return header + payload


# ----------------------------------------------------------------------------------------------------------------------
# decoding (either byte order)
# ----------------------------------------------------------------------------------------------------------------------
class _Reader:
    __slots__ = ("data", "end", "order", "pos")

    def __init__(self, data: bytes, order: str) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.order = order

    def take(self, n: int) -> bytes:
        if self.end - self.pos < n:
            raise ParseError(f"payload cut short: {n} bytes wanted at offset {self.pos} of {self.end}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(self.order + fmt, self.take(struct.calcsize(self.order + fmt)))

    def u32(self) -> int:
        return int(self.unpack("I")[0])

    def oid(self) -> tuple[Oid, bool]:
        n_subid, prefix, include, _ = self.unpack("BBBB")
        subids = self.unpack(f"{n_subid}I") if n_subid else ()
        if prefix:
            return (*INTERNET, prefix, *subids), bool(include)
        return tuple(subids), bool(include)

    def octets(self) -> bytes:
        n = self.u32()
        data = self.take(n)
        self.take(-n % 4)
        return data

    def value(self, type_: int) -> Any:
        if type_ == INTEGER:
            return self.unpack("i")[0]
        if type_ in _INT_TYPES:
            return self.u32()
        if type_ == COUNTER64:
            return self.unpack("Q")[0]
        if type_ in _BYTES_TYPES:
            return self.octets()
        if type_ == OBJECT_IDENTIFIER:
            return self.oid()[0]
        if type_ in _EMPTY_TYPES:
            return None
        raise ParseError(f"unknown value type {type_}")

    def varbinds(self) -> list[VarBind]:
        out = []
        while self.pos < self.end:
            type_ = self.unpack("Hxx")[0]
            name = self.oid()[0]
            out.append(VarBind(type_, name, self.value(type_)))
        return out

    def ranges(self) -> list[SearchRange]:
        out = []
        while self.pos < self.end:
            start, include = self.oid()
            end = self.oid()[0]
            out.append(SearchRange(start, end, include))
        return out


def _decode_payload(pdu: Pdu, r: _Reader) -> None:
    t = pdu.type
    if t == OPEN:
        pdu.timeout = r.unpack("Bxxx")[0]
        pdu.oid = r.oid()[0]
        pdu.descr = r.octets()
    elif t == CLOSE:
        pdu.reason = r.unpack("Bxxx")[0]
    elif t in (REGISTER, UNREGISTER):
        pdu.timeout, pdu.priority, pdu.range_subid = r.unpack("BBBx")
        pdu.oid = r.oid()[0]
        if pdu.range_subid:
            pdu.upper_bound = r.u32()
    elif t in (GET, GET_NEXT, GET_BULK):
        if t == GET_BULK:
            pdu.non_repeaters, pdu.max_repetitions = r.unpack("HH")
        pdu.ranges = r.ranges()
    elif t == RESPONSE:
        pdu.sys_uptime, pdu.error, pdu.index = r.unpack("IHH")
        pdu.varbinds = r.varbinds()
    elif t in (TEST_SET, NOTIFY, INDEX_ALLOCATE, INDEX_DEALLOCATE):
        pdu.varbinds = r.varbinds()
    elif t in (ADD_AGENT_CAPS, REMOVE_AGENT_CAPS):
        pdu.oid = r.oid()[0]
        if t == ADD_AGENT_CAPS:
            pdu.descr = r.octets()
    elif t not in (COMMIT_SET, UNDO_SET, CLEANUP_SET, PING):
        raise ParseError(f"unknown PDU type {t}")


def decode(header: bytes, payload: bytes) -> Pdu:
    """One PDU from its 20-byte header and its payload."""
    version, type_, flags = header[0], header[1], header[2]
    if version != VERSION:
        raise ParseError(f"AgentX version {version}, expected {VERSION}")
    order = ">" if flags & NETWORK_BYTE_ORDER else "<"
    session_id, transaction_id, packet_id, _ = struct.unpack(order + "IIII", header[4:20])
    pdu = Pdu(type_, session_id, transaction_id, packet_id, flags)
    r = _Reader(payload, order)
    if flags & NON_DEFAULT_CONTEXT and type_ in _CONTEXT_TYPES:
        pdu.context = r.octets()
    _decode_payload(pdu, r)
    if r.pos != r.end:
        raise ParseError(f"{r.end - r.pos} bytes left over after a PDU of type {type_}")
    return pdu


class Decoder:
    """Cuts a byte stream into PDUs. A ParseError leaves the stream unusable (the caller closes the session)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Pdu]:
        buf = self._buf
        buf += data
        out = []
        while len(buf) >= HEADER_LEN:
            order = ">" if buf[2] & NETWORK_BYTE_ORDER else "<"
            length = struct.unpack_from(order + "I", buf, 16)[0]
            if length > MAX_PAYLOAD or length % 4:
                raise ParseError(f"payload length {length} is not a multiple of 4 below {MAX_PAYLOAD}")
            if len(buf) < HEADER_LEN + length:
                break
            header = bytes(buf[:HEADER_LEN])
            payload = bytes(buf[HEADER_LEN : HEADER_LEN + length])
            del buf[: HEADER_LEN + length]
            out.append(decode(header, payload))
        return out
