"""Diameter messages out of pcap / pcapng files (Ethernet or Linux cooked; IPv4/IPv6; TCP and SCTP), and out
of the one-hex-message-per-line file. Only what the shared captures need; read at test time, never copied."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(slots=True)
class Captured:
    flow: tuple[str, int, str, int]  # src, sport, dst, dport
    data: bytes  # one complete Diameter message


def _packets(raw: bytes) -> list[tuple[int, bytes]]:
    """(link type, frame) for every packet."""
    magic = raw[:4]
    out: list[tuple[int, bytes]] = []
    if magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"):
        e = "<" if magic == b"\xd4\xc3\xb2\xa1" else ">"
        link = struct.unpack_from(e + "I", raw, 20)[0]
        pos = 24
        while pos + 16 <= len(raw):
            incl = struct.unpack_from(e + "I", raw, pos + 8)[0]
            out.append((link, raw[pos + 16 : pos + 16 + incl]))
            pos += 16 + incl
        return out
    if magic != b"\x0a\x0d\x0d\x0a":
        raise ValueError("not a pcap or pcapng file")
    e = "<" if raw[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    links: list[int] = []
    pos = 0
    while pos + 12 <= len(raw):
        btype, blen = struct.unpack_from(e + "II", raw, pos)
        if btype == 0x0A0D0D0A:
            links = []
        elif btype == 1:  # Interface Description
            links.append(struct.unpack_from(e + "H", raw, pos + 8)[0])
        elif btype == 6:  # Enhanced Packet
            iface, _, _, caplen = struct.unpack_from(e + "IIII", raw, pos + 8)
            out.append((links[iface], raw[pos + 28 : pos + 28 + caplen]))
        pos += blen
    return out


def _ip_payload(link: int, frame: bytes) -> tuple[str, str, int, bytes] | None:
    if link == 1:  # Ethernet
        off, ethertype = 14, struct.unpack_from("!H", frame, 12)[0]
        while ethertype == 0x8100:
            ethertype = struct.unpack_from("!H", frame, off + 2)[0]
            off += 4
    elif link == 113:  # Linux cooked
        off, ethertype = 16, struct.unpack_from("!H", frame, 14)[0]
    elif link == 276:  # Linux cooked v2
        off, ethertype = 20, struct.unpack_from("!H", frame, 0)[0]
    else:
        return None
    if ethertype == 0x0800:
        ihl = (frame[off] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, off + 2)[0]
        proto = frame[off + 9]
        src = ".".join(str(b) for b in frame[off + 12 : off + 16])
        dst = ".".join(str(b) for b in frame[off + 16 : off + 20])
        return src, dst, proto, frame[off + ihl : off + total]
    if ethertype == 0x86DD:
        plen = struct.unpack_from("!H", frame, off + 4)[0]
        proto = frame[off + 6]
        return (
            frame[off + 8 : off + 24].hex(),
            frame[off + 24 : off + 40].hex(),
            proto,
            frame[off + 40 : off + 40 + plen],
        )
    return None


def diameter_messages(path: Path) -> list[Captured]:
    """Every Diameter message in capture order (TCP streams reassembled naively, SCTP DATA chunks joined)."""
    streams: dict[tuple[str, int, str, int], bytearray] = {}
    fragments: dict[tuple[str, int, str, int], bytearray] = {}
    out: list[Captured] = []

    def drain(flow: tuple[str, int, str, int]) -> None:
        buf = streams[flow]
        while len(buf) >= 20:
            length = int.from_bytes(buf[1:4], "big")
            if buf[0] != 1 or length < 20:
                buf.clear()  # not Diameter (or we joined mid-stream): drop what we have
                return
            if len(buf) < length:
                return
            out.append(Captured(flow, bytes(buf[:length])))
            del buf[:length]

    for link, frame in _packets(path.read_bytes()):
        ip = _ip_payload(link, frame)
        if ip is None:
            continue
        src, dst, proto, payload = ip
        if proto == 6 and len(payload) >= 20:
            sport, dport = struct.unpack_from("!HH", payload, 0)
            data = payload[(payload[12] >> 4) * 4 :]
            if data and 3868 in (sport, dport):
                flow = (src, sport, dst, dport)
                streams.setdefault(flow, bytearray()).extend(data)
                drain(flow)
        elif proto == 132 and len(payload) >= 12:
            sport, dport = struct.unpack_from("!HH", payload, 0)
            pos = 12
            while pos + 4 <= len(payload):
                ctype, cflags, clen = struct.unpack_from("!BBH", payload, pos)
                if clen < 4:
                    break
                if ctype == 0 and clen >= 16:  # DATA
                    flow = (src, sport, dst, dport)
                    frag = fragments.setdefault(flow, bytearray())
                    if cflags & 0x02:  # B: first fragment
                        frag.clear()
                    frag.extend(payload[pos + 16 : pos + clen])
                    if cflags & 0x01:  # E: last fragment
                        streams.setdefault(flow, bytearray()).extend(frag)
                        frag.clear()
                        drain(flow)
                pos += (clen + 3) & ~3
    return out


def hex_messages(path: Path) -> list[bytes]:
    return [bytes.fromhex(line.strip()) for line in path.read_text().splitlines() if line.strip() and line[0] != "#"]
