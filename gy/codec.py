"""Diameter message codec (RFC 6733 section 3 and 4), sans-IO and struct-based.

Decoding splits a message into its header and a flat list of top-level AVPs that point into the received
bytes; a Grouped AVP's children are parsed only when asked for (most grouped AVPs of a CCR, such as
PS-Information, are never looked at). Encoding builds AVPs with precompiled `struct` formats; the answers'
constant parts (Origin-Host, Origin-Realm, Auth-Application-Id) are encoded once per server.

Errors carry what RFC 6733 needs for the answer: the Result-Code and the offending AVP for Failed-AVP.
"""

from __future__ import annotations

import ipaddress
import random
import struct
import time
from collections.abc import Iterable, Iterator

from gy.codes import DIAMETER_INVALID_AVP_LENGTH, DIAMETER_INVALID_AVP_VALUE
from gy.dictionary import AvpDef, avp, lookup
from gy.grammar import m_bit

# Header flags.
FLAG_REQUEST = 0x80
FLAG_PROXIABLE = 0x40
FLAG_ERROR = 0x20
FLAG_RETRANSMIT = 0x10
HEADER_RESERVED_BITS = 0x0F
# AVP flags.
AVP_VENDOR = 0x80
AVP_MANDATORY = 0x40
AVP_PROTECTED = 0x20
AVP_RESERVED_BITS = 0x1F
_WORD_VENDOR = AVP_VENDOR << 24  # the V bit in the AVP header's flags-and-length word

HEADER_LEN = 20
MAX_MESSAGE = 1 << 20  # beyond this a peer is considered broken (an OCS request is a few hundred bytes)

_HEADER = struct.Struct("!IIIII")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_I32 = struct.Struct("!i")
_I64 = struct.Struct("!q")
_AVP_HDR = struct.Struct("!II")
_AVP_VHDR = struct.Struct("!III")
_AVP_U32 = struct.Struct("!III")
_AVP_VU32 = struct.Struct("!IIII")
_AVP_U64 = struct.Struct("!IIQ")
_AVP_VU64 = struct.Struct("!IIIQ")
_AVP_I32 = struct.Struct("!IIi")
_AVP_VI32 = struct.Struct("!IIIi")
_AVP_I64 = struct.Struct("!IIq")
_AVP_VI64 = struct.Struct("!IIIq")

_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class DecodeError(Exception):
    """A message or AVP cannot be accepted; `result_code` and `failed_avp` (encoded AVP bytes) say why."""

    def __init__(self, result_code: int, message: str, failed_avp: bytes | None = None) -> None:
        super().__init__(message)
        self.result_code = result_code
        self.failed_avp = failed_avp


class Avp:
    """One AVP inside a received buffer. The value is decoded on access; grouped children lazily."""

    __slots__ = ("_children", "buf", "code", "end", "flags", "start", "vendor")

    def __init__(self, buf: bytes, code: int, flags: int, vendor: int, start: int, end: int) -> None:
        self.buf = buf
        self.code = code
        self.flags = flags
        self.vendor = vendor
        self.start = start  # first data byte
        self.end = end  # one past the last data byte (padding excluded)
        self._children: list[Avp] | None = None

    def __repr__(self) -> str:
        d = lookup(self.code, self.vendor)
        return f"Avp({d.name if d else self.code}, vendor={self.vendor}, len={self.end - self.start})"

    @property
    def mandatory(self) -> bool:
        return bool(self.flags & AVP_MANDATORY)

    @property
    def data(self) -> bytes:
        return self.buf[self.start : self.end]

    def raw(self) -> bytes:
        """The whole AVP as it was received (header and data, no padding), for Failed-AVP."""
        header_len = 12 if self.flags & AVP_VENDOR else 8
        return self.buf[self.start - header_len : self.end]

    def _fixed(self, size: int) -> None:
        if self.end - self.start != size:
            raise DecodeError(
                DIAMETER_INVALID_AVP_LENGTH,
                f"{self!r}: data length {self.end - self.start}, expected {size}",
                self.raw(),
            )

    def u32(self) -> int:
        self._fixed(4)
        return _U32.unpack_from(self.buf, self.start)[0]

    def u64(self) -> int:
        self._fixed(8)
        return _U64.unpack_from(self.buf, self.start)[0]

    def i32(self) -> int:
        self._fixed(4)
        return _I32.unpack_from(self.buf, self.start)[0]

    def i64(self) -> int:
        self._fixed(8)
        return _I64.unpack_from(self.buf, self.start)[0]

    def text(self) -> str:
        try:
            return self.buf[self.start : self.end].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(DIAMETER_INVALID_AVP_VALUE, f"{self!r}: not valid UTF-8", self.raw()) from None

    def address(self) -> str:
        data = self.data
        if len(data) == 6 and data[:2] == b"\0\x01":
            return str(ipaddress.IPv4Address(data[2:]))
        if len(data) == 18 and data[:2] == b"\0\x02":
            return str(ipaddress.IPv6Address(data[2:]))
        raise DecodeError(DIAMETER_INVALID_AVP_VALUE, f"{self!r}: not an IPv4 or IPv6 Address", self.raw())

    @property
    def children(self) -> list[Avp]:
        if self._children is None:
            self._children = parse_avps(self.buf, self.start, self.end)
        return self._children

    def value(self) -> object:
        """The value by the dictionary's type (tests, logs); unknown AVPs give their bytes."""
        d = lookup(self.code, self.vendor)
        kind = d.type if d is not None else "octets"
        if kind == "uint32":
            return self.u32()
        if kind == "uint64":
            return self.u64()
        if kind == "int32":
            return self.i32()
        if kind == "int64":
            return self.i64()
        if kind == "utf8":
            return self.text()
        if kind == "address":
            return self.address()
        if kind == "grouped":
            return self.children
        return self.data


# One AVP's header as the walkers see it: (code, vendor, flags and length word, data start, data end).
AvpHeader = tuple[int, int, int, int, int]


def frame(buf: bytes, pos: int, end: int, heads: list[slice] | None = None) -> list[AvpHeader]:
    """The AVPs between `pos` and `end` by their headers (RFC 6733 section 4.1), padding skipped: the one framing
    of AVPs, for the decoders and the fast CCR walker alike. A header cut short or a length below the header or
    past `end` is 5014, with the AVP's header as Failed-AVP (RFC 6733 section 7.5). `heads`, when given, receives
    the slice of every AVP header (the fast walker keys its layout cache on them)."""
    out: list[AvpHeader] = []
    unpack_hdr = _AVP_HDR.unpack_from
    while pos < end:
        if end - pos < 8:
            raise DecodeError(DIAMETER_INVALID_AVP_LENGTH, "truncated AVP header", bytes(buf[pos:end]).ljust(8, b"\0"))
        code, word = unpack_hdr(buf, pos)
        length = word & 0xFFFFFF
        header = 12 if word & _WORD_VENDOR else 8
        if length < header or pos + header > end:
            raise DecodeError(
                DIAMETER_INVALID_AVP_LENGTH, f"AVP {code}: length {length} too short", _failed_header(buf, pos, end)
            )
        if pos + length > end:
            raise DecodeError(
                DIAMETER_INVALID_AVP_LENGTH,
                f"AVP {code}: length {length} runs past its end",
                _failed_header(buf, pos, end),
            )
        if heads is not None:
            heads.append(slice(pos, pos + header))
        out.append((code, _U32.unpack_from(buf, pos + 8)[0] if header == 12 else 0, word, pos + header, pos + length))
        pos += (length + 3) & ~3
    return out


def parse_avps(buf: bytes, pos: int, end: int) -> list[Avp]:
    """The AVPs between `pos` and `end` (see `frame`)."""
    return [Avp(buf, code, word >> 24, vendor, start, stop) for code, vendor, word, start, stop in frame(buf, pos, end)]


def _failed_header(buf: bytes, pos: int, end: int) -> bytes:
    """RFC 6733 7.5: for an AVP with a bad length, Failed-AVP carries its header (and what data there is)."""
    return bytes(buf[pos : min(end, pos + 12)])


class Message:
    __slots__ = ("_avps", "app", "buf", "code", "e2e", "flags", "hbh")

    def __init__(self, buf: bytes, flags: int, code: int, app: int, hbh: int, e2e: int) -> None:
        self.buf = buf
        self.flags = flags
        self.code = code
        self.app = app
        self.hbh = hbh
        self.e2e = e2e
        self._avps: list[Avp] | None = None

    @property
    def is_request(self) -> bool:
        return bool(self.flags & FLAG_REQUEST)

    @property
    def avps(self) -> list[Avp]:
        if self._avps is None:
            self._avps = parse_avps(self.buf, HEADER_LEN, len(self.buf))
        return self._avps

    def find(self, code: int, vendor: int = 0) -> Avp | None:
        for a in self.avps:
            if a.code == code and a.vendor == vendor:
                return a
        return None

    def __repr__(self) -> str:
        kind = "request" if self.is_request else "answer"
        return f"Message(code={self.code}, app={self.app}, {kind}, hbh={self.hbh:#x}, e2e={self.e2e:#x})"


def find(avps: list[Avp], code: int, vendor: int = 0) -> Avp | None:
    for a in avps:
        if a.code == code and a.vendor == vendor:
            return a
    return None


def find_all(avps: list[Avp], code: int, vendor: int = 0) -> list[Avp]:
    return [a for a in avps if a.code == code and a.vendor == vendor]


def message_length(buf: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """The length field of the header starting at `pos` (the caller has at least 4 bytes)."""
    return ((buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]) if len(buf) - pos >= 4 else 0


def end_to_end_ids(wall_clock: float | None = None) -> Iterator[int]:
    """End-to-End Identifiers as RFC 6733 section 3 suggests: the high 12 bits from the time of day at start-up,
    the low 20 bits random to start with, then counting; so that ids stay unique across connections and restarts
    for the 4 minutes a receiver keeps answers for duplicate detection."""
    high = (int(time.time() if wall_clock is None else wall_clock) & 0xFFF) << 20
    low = random.getrandbits(20)
    while True:
        low = (low + 1) & 0xFFFFF
        yield high | low


def decode_header(buf: bytes) -> Message:
    """The header of one complete message; its AVPs are parsed on first access."""
    _w0, w1, app, hbh, e2e = _HEADER.unpack_from(buf, 0)
    return Message(buf, w1 >> 24, w1 & 0xFFFFFF, app, hbh, e2e)


# ----------------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------------
def _flags_for(d: AvpDef, mandatory: bool | None) -> int:
    flags = AVP_VENDOR if d.vendor else 0
    if m_bit(d) if mandatory is None else mandatory:
        flags |= AVP_MANDATORY
    return flags


def encode_raw(code: int, flags: int, vendor: int, data: bytes) -> bytes:
    """One AVP with its padding."""
    if vendor:
        head = _AVP_VHDR.pack(code, ((flags | AVP_VENDOR) << 24) | (12 + len(data)), vendor)
    else:
        head = _AVP_HDR.pack(code, ((flags & ~AVP_VENDOR) << 24) | (8 + len(data)))
    return head + data + _PAD[len(data) & 3]


class AvpEncoder:
    """Encodes one AVP kind fast: its code, flags and vendor are resolved once."""

    __slots__ = ("code", "flags", "name", "type", "vendor", "word")

    def __init__(self, name: str, mandatory: bool | None = None) -> None:
        d = avp(name)
        self.name = name
        self.code = d.code
        self.vendor = d.vendor
        self.type = d.type
        self.flags = _flags_for(d, mandatory)
        self.word = self.flags << 24

    def u32(self, value: int) -> bytes:
        if self.vendor:
            return _AVP_VU32.pack(self.code, self.word | 16, self.vendor, value)
        return _AVP_U32.pack(self.code, self.word | 12, value)

    def u64(self, value: int) -> bytes:
        if self.vendor:
            return _AVP_VU64.pack(self.code, self.word | 20, self.vendor, value)
        return _AVP_U64.pack(self.code, self.word | 16, value)

    def i32(self, value: int) -> bytes:
        if self.vendor:
            return _AVP_VI32.pack(self.code, self.word | 16, self.vendor, value)
        return _AVP_I32.pack(self.code, self.word | 12, value)

    def i64(self, value: int) -> bytes:
        if self.vendor:
            return _AVP_VI64.pack(self.code, self.word | 20, self.vendor, value)
        return _AVP_I64.pack(self.code, self.word | 16, value)

    def octets(self, data: bytes) -> bytes:
        n = len(data)
        if self.vendor:
            return _AVP_VHDR.pack(self.code, self.word | (12 + n), self.vendor) + data + _PAD[n & 3]
        return _AVP_HDR.pack(self.code, self.word | (8 + n)) + data + _PAD[n & 3]

    def text(self, value: str) -> bytes:
        return self.octets(value.encode("utf-8"))

    def grouped(self, children: Iterable[bytes]) -> bytes:
        return self.octets(b"".join(children))

    def address(self, value: str) -> bytes:
        ip = ipaddress.ip_address(value)
        family = b"\0\x01" if ip.version == 4 else b"\0\x02"
        return self.octets(family + ip.packed)

    def value(self, value: object) -> bytes:
        """By the dictionary type: ints, str, bytes, an address string, or a list of encoded children."""
        kind = self.type
        if kind == "grouped":
            return self.grouped(value)  # type: ignore[arg-type]
        if kind in ("uint32", "time"):
            return self.u32(value)  # type: ignore[arg-type]
        if kind == "uint64":
            return self.u64(value)  # type: ignore[arg-type]
        if kind == "int32":
            return self.i32(value)  # type: ignore[arg-type]
        if kind == "int64":
            return self.i64(value)  # type: ignore[arg-type]
        if kind == "address" and isinstance(value, str):
            return self.address(value)
        if isinstance(value, str):
            return self.text(value)
        return self.octets(value)  # type: ignore[arg-type]


_ENCODERS: dict[str, AvpEncoder] = {}


def E(name: str) -> AvpEncoder:  # short on purpose: used in every builder
    """The cached encoder of an AVP by its dictionary name."""
    enc = _ENCODERS.get(name)
    if enc is None:
        enc = _ENCODERS[name] = AvpEncoder(name)
    return enc


def encode(name: str, value: object) -> bytes:
    return E(name).value(value)


def encode_message(code: int, flags: int, app: int, hbh: int, e2e: int, avps: Iterable[bytes]) -> bytes:
    body = b"".join(avps)
    return _HEADER.pack((1 << 24) | (HEADER_LEN + len(body)), (flags << 24) | code, app, hbh, e2e) + body
