"""Diameter peer statistics: what the Gy front-end saw of each peer, as metric families of the process registry.

The Gy server (gy/server.py) gives each connection a `PeerConnectionStats` and hands it the bytes it reads and
writes; this module frames them (the 20-byte Diameter header is enough: version, length, flags, command code) and
counts messages by command, direction and kind, and answers by Result-Code class. A connection joins its peer's
entry (by Origin-Host) once the capabilities exchange succeeded; a peer that never got that far is not listed.

The counts leave as metric families of `chf.runtime.metrics.REGISTRY` (`DiameterPeerCollector`), so they reach the
core from front-end workers like every other metric, and the SNMP agent (chf/snmp/) reads its Diameter peer table
from there without importing the Gy front-end:

    chf_diameter_peer_info{peer, realm, address, port}        1 for the peer's latest connection
    chf_diameter_peer_connections{peer}                       open connections (0 once down)
    chf_diameter_peer_suspect{peer}                           connections whose watchdog is unanswered
    chf_diameter_peer_open_since_seconds{peer}                UNIX time the open connections opened (summed)
    chf_diameter_peer_messages_total{peer, direction, command, kind}
    chf_diameter_peer_answers_total{peer, direction, result_class}     class 1..5 (1xxx informational ... 5xxx)
    chf_diameter_peer_watchdog_failures_total{peer}           DWRs left unanswered for Tw (peer became SUSPECT)
    chf_diameter_answers_total{direction, command, result_code}        all peers, by exact Result-Code

Cost on the request path: one header read per message and a walk to the Result-Code AVP of each answer we send
(it is the second AVP of every answer we build), plus a few dictionary increments.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chf.runtime import metrics

HEADER_LEN = 20
RESULT_CODE = 268
FLAG_REQUEST = 0x80
FLAG_VENDOR = 0x80  # AVP flag V: an 8-byte Vendor-Id follows the AVP header
MAX_PEERS = 1024  # identities kept; beyond, the peer down the longest is forgotten (allow_unknown_peers)


def result_code(data: bytes, start: int, end: int) -> int:
    """The Result-Code of the Diameter message data[start:end] (0 when it has none)."""
    pos = start + HEADER_LEN
    while end - pos >= 12:
        length = (data[pos + 5] << 16) | (data[pos + 6] << 8) | data[pos + 7]
        if length < 8:
            return 0
        # Result-Code (268 = 0x10c), no Vendor-Id, 4 octets of data (byte reads: no slice per AVP)
        is_result_code = data[pos + 3] == 12 and data[pos + 2] == 1 and not (data[pos] | data[pos + 1])
        if is_result_code and length == 12 and not data[pos + 4] & FLAG_VENDOR:
            return (data[pos + 8] << 24) | (data[pos + 9] << 16) | (data[pos + 10] << 8) | data[pos + 11]
        pos += (length + 3) & ~3
    return 0


class DiameterPeer:
    """One peer identity (Origin-Host): counters over all its connections, and its latest connection."""

    __slots__ = (
        "address",
        "connections",
        "down_since",
        "identity",
        "messages",
        "open_since",
        "port",
        "realm",
        "results",
        "suspect",
        "watchdog_failures",
    )

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.realm = ""
        self.address = ""
        self.port = 0
        self.connections = 0
        self.suspect = 0
        self.open_since = 0.0  # sum over the open connections
        self.down_since = 0.0
        self.watchdog_failures = 0
        self.messages: dict[tuple[str, int, str], int] = {}  # (direction, command, kind) -> count
        self.results: dict[tuple[str, int], int] = {}  # (direction, result class) -> count


class PeerTable:
    """Every Diameter peer of this process, and the answers by Result-Code over all of them."""

    def __init__(self) -> None:
        self.peers: dict[str, DiameterPeer] = {}
        self.answers: dict[tuple[str, int, int], int] = {}  # (direction, command, result code) -> count

    def connection(self, peername: Any = None) -> PeerConnectionStats:
        return PeerConnectionStats(self, peername)

    def peer(self, identity: str) -> DiameterPeer:
        peer = self.peers.get(identity)
        if peer is None:
            if len(self.peers) >= MAX_PEERS:
                down = [p for p in self.peers.values() if p.connections == 0]
                if down:
                    del self.peers[min(down, key=lambda p: p.down_since).identity]
            peer = self.peers[identity] = DiameterPeer(identity)
        return peer

    def clear(self) -> None:
        self.peers.clear()
        self.answers.clear()


class PeerConnectionStats:
    """The counts of one connection; sans-IO: fed the bytes read (`received`) and written (`sent`)."""

    def __init__(self, table: PeerTable, peername: Any = None) -> None:
        self.table = table
        self.peer: DiameterPeer | None = None
        self.address, self.port = _address(peername)
        self.opened_at = 0.0
        self.suspect = False
        # Before the capabilities exchange the counts are the connection's own; they join the peer's on open.
        self.messages: dict[tuple[str, int, str], int] = {}
        self.results: dict[tuple[str, int], int] = {}
        # Inbound framing: bytes of the current request still to skip, or the start of a message being gathered.
        self._skip = 0
        self._partial = bytearray()
        self._broken = False

    # -- the connection's life ---------------------------------------------------------------------------------------
    def opened(self, identity: str, realm: str, now: float | None = None) -> None:
        peer = self.table.peer(identity)
        peer.realm = realm
        peer.address, peer.port = self.address, self.port
        peer.connections += 1
        self.opened_at = time.time() if now is None else now
        peer.open_since += self.opened_at
        for key, n in self.messages.items():
            peer.messages[key] = peer.messages.get(key, 0) + n
        for rkey, n in self.results.items():
            peer.results[rkey] = peer.results.get(rkey, 0) + n
        self.messages = peer.messages
        self.results = peer.results
        self.peer = peer

    def closed(self, now: float | None = None) -> None:
        peer = self.peer
        if peer is None:
            return
        self.peer = None
        peer.connections -= 1
        peer.open_since -= self.opened_at
        if self.suspect:
            peer.suspect -= 1
            self.suspect = False
        if peer.connections == 0:
            peer.open_since = 0.0
            peer.down_since = time.time() if now is None else now

    def set_suspect(self, suspect: bool) -> None:
        """The watchdog state of the connection (RFC 3539): becoming SUSPECT is a watchdog failure."""
        if suspect == self.suspect:
            return
        self.suspect = suspect
        peer = self.peer
        if peer is not None:
            peer.suspect += 1 if suspect else -1
            if suspect:
                peer.watchdog_failures += 1

    # -- bytes -------------------------------------------------------------------------------------------------------
    def sent(self, data: bytes) -> None:
        """Whole messages written to the peer."""
        pos = 0
        end = len(data)
        while end - pos >= HEADER_LEN:
            length = (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
            if length < HEADER_LEN or pos + length > end:
                return
            self._count("out", data, pos, pos + length)
            pos += length

    def received(self, data: bytes) -> None:
        """Bytes read from the peer, as they come (messages may be cut anywhere)."""
        if self._broken:
            return
        if self._skip:
            if self._skip >= len(data):
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
        if self._partial:  # the start of a header, or of an answer gathered whole for its Result-Code
            self._partial += data
            data = bytes(self._partial)
            self._partial.clear()
        pos = 0
        end = len(data)
        while end - pos >= HEADER_LEN:
            length = (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]
            if length < HEADER_LEN:
                self._broken = True  # the peer state machine closes such a stream; nothing more to count
                return
            if pos + length <= end:
                self._count("in", data, pos, pos + length)
                pos += length
            elif data[pos + 4] & FLAG_REQUEST:  # a request's header is all we read of it
                self._count("in", data, pos, pos + HEADER_LEN)
                self._skip = pos + length - end
                return
            else:
                break
        if pos < end:
            self._partial += data[pos:end]

    def _count(self, direction: str, data: bytes, start: int, end: int) -> None:
        command = (data[start + 5] << 16) | (data[start + 6] << 8) | data[start + 7]
        messages = self.messages
        if data[start + 4] & FLAG_REQUEST:
            key = (direction, command, "request")
            messages[key] = messages.get(key, 0) + 1
            return
        key = (direction, command, "answer")
        messages[key] = messages.get(key, 0) + 1
        code = result_code(data, start, end)
        if code:
            rkey = (direction, min(max(code // 1000, 1), 5))
            self.results[rkey] = self.results.get(rkey, 0) + 1
            answers = self.table.answers
            akey = (direction, command, code)
            answers[akey] = answers.get(akey, 0) + 1


def _address(peername: Any) -> tuple[str, int]:
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0]), int(peername[1])
    return "", 0


class DiameterPeerCollector:
    """The peer table as metric families (prometheus_client custom collector)."""

    def __init__(self, table: PeerTable) -> None:
        self.table = table

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only; names are listed in the module docstring

    def collect(self) -> Iterator[Any]:
        fam = {name: kind(name, help_text, labels=labels) for name, (kind, help_text, labels) in FAMILIES.items()}
        for peer in list(self.table.peers.values()):
            name = peer.identity
            fam["chf_diameter_peer_info"].add_metric([name, peer.realm, peer.address, str(peer.port)], 1)
            fam["chf_diameter_peer_connections"].add_metric([name], peer.connections)
            fam["chf_diameter_peer_suspect"].add_metric([name], peer.suspect)
            fam["chf_diameter_peer_open_since_seconds"].add_metric([name], peer.open_since)
            fam["chf_diameter_peer_watchdog_failures"].add_metric([name], peer.watchdog_failures)
            for (direction, command, kind), n in list(peer.messages.items()):
                fam["chf_diameter_peer_messages"].add_metric([name, direction, str(command), kind], n)
            for (direction, cls), n in list(peer.results.items()):
                fam["chf_diameter_peer_answers"].add_metric([name, direction, str(cls)], n)
        for (direction, command, code), n in list(self.table.answers.items()):
            fam["chf_diameter_answers"].add_metric([direction, str(command), str(code)], n)
        yield from fam.values()


_PEER = ["peer"]
FAMILIES: dict[str, tuple[Any, str, list[str]]] = {
    "chf_diameter_peer_info": (
        GaugeMetricFamily,
        "Diameter peer identity, realm and latest address",
        ["peer", "realm", "address", "port"],
    ),
    "chf_diameter_peer_connections": (GaugeMetricFamily, "Open connections of a Diameter peer", _PEER),
    "chf_diameter_peer_suspect": (
        GaugeMetricFamily,
        "Connections whose watchdog is unanswered",
        _PEER,
    ),
    "chf_diameter_peer_open_since_seconds": (
        GaugeMetricFamily,
        "UNIX time the open connections of a Diameter peer opened (summed over them)",
        _PEER,
    ),
    "chf_diameter_peer_messages": (
        CounterMetricFamily,
        "Diameter messages by peer, direction, command code and kind",
        ["peer", "direction", "command", "kind"],
    ),
    "chf_diameter_peer_answers": (
        CounterMetricFamily,
        "Diameter answers by peer, direction and Result-Code class (1 to 5)",
        ["peer", "direction", "result_class"],
    ),
    "chf_diameter_peer_watchdog_failures": (
        CounterMetricFamily,
        "Device watchdog requests left unanswered for Tw (the peer became SUSPECT)",
        _PEER,
    ),
    "chf_diameter_answers": (
        CounterMetricFamily,
        "Diameter answers by direction, command code and Result-Code, over all peers",
        ["direction", "command", "result_code"],
    ),
}


# The process's table: the Gy front-end fills it, the registry renders it.
DIAMETER_PEERS = PeerTable()
metrics.REGISTRY.register(DiameterPeerCollector(DIAMETER_PEERS))
