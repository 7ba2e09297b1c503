"""The CDR file sink: 3GPP CHF charging data records (chf/export/chfrecord.py) in TS 32.297 CDR files.

File layout (TS 32.297 clause 6.1): a file header, then for each CDR a CDR header and the CDR in BER.

    file header   file length (4 octets), header length (4), high and low release / version identifier (1 + 1),
                  file opening timestamp (4), timestamp when the last CDR was appended (4), number of CDRs (4),
                  file sequence number (4), file closure trigger reason (1), IP address of the node that
                  generated the file (20: four 0xFF octets, then the address in IPv6 form, IPv4 mapped as
                  ::ffff:a.b.c.d), lost CDR indicator (1: none), length of CDR routeing filter (2: 0), length of
                  private extension (2: 8) and the private extension (8: the spool sequence number of the file's
                  first CDR, vendor-specific, used to recover the file after a crash), high and low release
                  identifier extensions (1 + 1). 62 octets.
    CDR header    CDR length (2), release / version identifier (1), data record format (3 bits: 1, BER) and TS
                  number (5 bits: 20, TS 32.255), release identifier extension (1). 5 octets.

The release is 16 and the version 11 (TS 32.298 V16.11.0, the ASN.1 in chf/export/asn1/chf-cdr.asn): release
identifier 7 ("beyond Release 9") with extension 16 - 10 = 6. Timestamps are UTC (offset +0000).

File name: `<node id>_-_<RC>.<YYYYMMDD>_-_<hhmm>+0000`, the TS 32.297 convention with RC the running count (the
header's file sequence number, 1, 2, ...) and the date and time the file was opened. An open file is written as
the same name + `.tmp` and renamed when it is closed: mediation pulls only names without `.tmp`, in RC order.

A file is closed when the next CDR would take it past `max_bytes`, when it holds `max_records` CDRs, when it has
been open `max_age` seconds, and when the sink stops; the file closure trigger reason says which (1, 3, 2, 0).

Exactly once in the published files. Each delivery appends its CDRs and fsyncs the file before the exporter may
advance its cursor (the Exporter of chf/export), so an acknowledged CDR is on disk. A crash can still leave CDRs on
disk beyond the durable cursor, which the exporter then delivers again; the sink drops them by their spool
sequence number: it knows the highest one it holds (`high_water`) from a state file next to the CDR files
(`.<node id>.state`: last RC, last sequence and the store it counts in, NF instance id; written and fsync'd before
each file is renamed into place, so it covers every published file even after mediation removed them) and from the
`.tmp` file itself. Records of another store (a store made anew, the directory kept) start the count again. On
start, a `.tmp` left by a crash is read CDR by CDR, a torn last CDR is cut off, its header is completed (closure
reason 128, abnormal) and it is published; a `.tmp` with no whole CDR is removed. A failed write (a full disk)
is handled the same way before the exporter's retry.

Charging never waits for any of it: the exporter reads the spool, and the encoding and file I/O run in a worker
thread (asyncio.to_thread), one delivery at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from chf.export.chfrecord import ChfRecordEncoder

log = logging.getLogger("chf.export")

RELEASE = 16  # TS 32.298 V16.11.0
VERSION = 11
TS_NUMBER = 20  # TS 32.255 (5G data connectivity domain charging), in the CDR header
FORMAT_BER = 1
_RELEASE_BYTE = 7 << 5 | VERSION  # release identifier 7: "beyond Release 9", the extension octet says which
_RELEASE_EXT = RELEASE - 10

# File closure trigger reasons (TS 32.297)
CLOSE_NORMAL = 0
CLOSE_SIZE = 1
CLOSE_TIME = 2
CLOSE_COUNT = 3
CLOSE_ABNORMAL = 128

HEADER_LENGTH = 62
_HEADER = struct.Struct(">IIBBIIIIB20sBHHQBB")  # the file header, private extension (8 octets) included
_CDR_HEADER_TAIL = bytes((_RELEASE_BYTE, FORMAT_BER << 5 | TS_NUMBER, _RELEASE_EXT))
CDR_HEADER_LENGTH = 5
MAX_CDR = 0xFFFF  # the CDR header's length field
_RECORD_TAG = b"\xbf\x81\x48"  # CHFRecord: chargingFunctionRecord [200]
_LOCAL_SEQUENCE_TAG = 0x8B  # localRecordSequenceNumber [11]


def header_timestamp(epoch: float) -> int:
    """The file header's timestamp: month (4 bits), day (5), hour (5), minute (6), sign of the UTC offset (1:
    "+"), offset hours (5) and minutes (6). UTC: +00:00."""
    t = time.gmtime(epoch)
    return t.tm_mon << 28 | t.tm_mday << 23 | t.tm_hour << 18 | t.tm_min << 12 | 1 << 11


def node_address_octets(address: str) -> bytes:
    """The header's 20-octet node address: four 0xFF octets, then the IPv6 address (IPv4 mapped)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed)
    return b"\xff" * 4 + ip.packed


def file_header(
    *, length: int, count: int, rc: int, opened: int, appended: int, reason: int, address: bytes, first: int
) -> bytes:
    """The file header; `opened` and `appended` as header_timestamp() gives them."""
    return _HEADER.pack(
        length,
        HEADER_LENGTH,
        _RELEASE_BYTE,
        _RELEASE_BYTE,
        opened,
        appended,
        count,
        rc,
        reason,
        address,
        0,  # lost CDR indicator: none lost
        0,  # no CDR routeing filter
        8,  # private extension: the spool sequence number of the first CDR
        first,
        _RELEASE_EXT,
        _RELEASE_EXT,
    )


def file_name(node_id: str, rc: int, opened: float) -> str:
    stamp = time.strftime("%Y%m%d_-_%H%M", time.gmtime(opened))
    return f"{node_id}_-_{rc}.{stamp}+0000"


def _tlvs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(tag, content start, content end) of the BER TLVs in buf[start:end]; single-octet tags only (every
    component of ChargingRecord below [31])."""
    i = start
    while i < end:
        tag = buf[i]
        n = buf[i + 1]
        i += 2
        if n & 0x80:
            size = n & 0x7F
            n = int.from_bytes(buf[i : i + size], "big")
            i += size
        yield tag, i, i + n
        i += n


def _whole_cdr(buf: bytes, start: int, size: int) -> int | None:
    """The localRecordSequenceNumber of the CHFRecord buf[start:start+size], or None unless it is one whole
    chargingFunctionRecord (a torn or zero-filled tail after a crash)."""
    if size < 5 or buf[start : start + 3] != _RECORD_TAG:
        return None
    n, i = buf[start + 3], start + 4
    if n & 0x80:
        width = n & 0x7F
        n, i = int.from_bytes(buf[i : i + width], "big"), i + width
    if i + n != start + size:
        return None
    try:
        for tag, a, b in _tlvs(buf, i, i + n):
            if b > start + size:
                return None
            if tag == _LOCAL_SEQUENCE_TAG:
                return int.from_bytes(buf[a:b], "big")
    except IndexError:
        return None
    return None


def unwrap(first: int, local: int) -> int:
    """The spool sequence number whose low 32 bits are `local`, counting from the file's first CDR `first`."""
    return first + ((local - first) & 0xFFFFFFFF)


def _scan(f: BinaryIO, header_ok: bool) -> tuple[int, int, int | None]:
    """(end of the last whole CDR, number of whole CDRs, the last one's localRecordSequenceNumber) of the CDRs that
    follow the file header in `f`, read one at a time."""
    end, count, last_local = HEADER_LENGTH, 0, None
    while header_ok:
        head = f.read(CDR_HEADER_LENGTH)
        if len(head) < CDR_HEADER_LENGTH:
            break
        size = int.from_bytes(head[:2], "big")
        cdr = f.read(size)
        local = _whole_cdr(cdr, 0, size) if len(cdr) == size else None
        if local is None:
            break
        end, count, last_local = end + CDR_HEADER_LENGTH + size, count + 1, local
    return end, count, last_local


class CdrSink:
    """Writes CHF-CDRs in TS 32.297 files (module docstring). `node_id` names the files; `nf_instance_id` goes into
    every CDR (recordingNetworkFunctionID), a UUID kept in the state file when not configured."""

    def __init__(
        self,
        directory: str,
        *,
        name: str = "cdr",
        node_id: str = "chf",
        nf_instance_id: str | None = None,
        node_address: str = "127.0.0.1",
        max_bytes: int = 8 << 20,
        max_records: int = 100_000,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.directory = directory
        self.node_id = node_id
        self.nf_instance_id = nf_instance_id
        self.address = node_address_octets(node_address)
        self.max_bytes = min(max_bytes, 0xFFFFFFFF)
        self.max_records = max_records
        self.max_age = max_age
        self.clock = clock
        self.high_water = 0  # highest spool sequence number in the files (published or open)
        self.store_id: str | None = None  # the store whose spool high_water counts
        self.rc = 0  # running count of the last file opened
        self._published_rc = 0  # ... and of the last file published (the state file's "rc")
        self.closed_files = 0
        self.written = 0  # CDRs written by this sink since it was made
        self._encoder: ChfRecordEncoder | None = None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: str | None = None
        self._opened_at = 0.0
        self._size = 0
        self._count = 0
        self._first = 0
        self._broken = False

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, f".{self.node_id}.state")

    # -- Sink ------------------------------------------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._locked, self._open)

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._locked, self._deliver, records)

    async def idle(self) -> None:
        if self._fd is not None and self.clock() - self._opened_at >= self.max_age:
            await asyncio.to_thread(self._locked, self._close_file, CLOSE_TIME)

    async def close(self) -> None:
        await asyncio.to_thread(self._locked, self._close_file, CLOSE_NORMAL)

    def _locked(self, fn: Callable[..., None], *args: Any) -> None:
        # A stopped exporter cancels its task while a delivery may still run in its thread: one at a time.
        with self._lock:
            fn(*args)

    # -- start and recovery ----------------------------------------------------------------------------------------
    def _open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        state = self._read_state()
        self._published_rc = max(self._published_rc, int(state.get("rc", 0)))
        self.high_water = max(self.high_water, int(state.get("seq", 0)))
        self.store_id = state.get("store") or self.store_id
        if self.nf_instance_id is None:
            self.nf_instance_id = state.get("nf_instance_id") or str(uuid.uuid4())
            if not state.get("nf_instance_id"):
                self._write_state(self._published_rc)
        self._encoder = ChfRecordEncoder(self.nf_instance_id)
        self._recover_all()

    def _read_state(self) -> dict[str, Any]:
        try:
            with open(self.state_path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self, rc: int) -> None:
        self._published_rc = max(self._published_rc, rc)
        tmp = self.state_path + ".tmp"
        state = {
            "rc": self._published_rc,
            "seq": self.high_water,
            "store": self.store_id,
            "nf_instance_id": self.nf_instance_id,
        }
        data = json.dumps(state).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.state_path)
        self._sync_dir()

    def _ours(self) -> Iterator[tuple[str, int]]:
        """(file name, RC) of this node's CDR files in the directory, open or closed."""
        prefix = self.node_id + "_-_"
        for entry in os.listdir(self.directory):
            if entry.startswith(prefix):
                rc = entry[len(prefix) :].partition(".")[0]
                if rc.isdigit():
                    yield entry, int(rc)

    def _highest_rc(self) -> int:
        return max((rc for _, rc in self._ours()), default=0)

    def _recover_all(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._path = None
        for entry, rc in sorted(self._ours(), key=lambda e: e[1]):
            if entry.endswith(".tmp"):
                self._recover(os.path.join(self.directory, entry), rc)
        # The next file continues the published ones: a discarded .tmp (no whole CDR) leaves no gap in the RCs,
        # and an RC still present in the directory (the state file lost) is never reused.
        self.rc = max(self._published_rc, self._highest_rc())
        self._broken = False

    def _recover(self, path: str, rc: int) -> None:
        """Complete and publish a `.tmp` file a crash (or a failed write) left: whole CDRs only."""
        name = os.path.basename(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_LENGTH)
            end, count, last_local = _scan(f, len(head) == HEADER_LENGTH)
            size = f.seek(0, os.SEEK_END)
        if count == 0 or last_local is None:
            os.unlink(path)
            log.warning("event=cdr_file_discarded file=%s reason=no_whole_cdr", name)
            return
        fields = _HEADER.unpack(head)
        first = fields[13]
        if end != size:
            log.warning("event=cdr_file_torn_cdr_cut file=%s bytes=%d", name, size - end)
        header = file_header(
            length=end,
            count=count,
            rc=rc,
            opened=fields[4],
            appended=header_timestamp(os.stat(path).st_mtime),
            reason=CLOSE_ABNORMAL,
            address=self.address,
            first=first,
        )
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, end)
            os.pwrite(fd, header, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.high_water = max(self.high_water, unwrap(first, last_local))
        self._publish(path, rc, count, CLOSE_ABNORMAL)

    # -- writing ---------------------------------------------------------------------------------------------------
    def _deliver(self, records: list[dict[str, Any]]) -> None:
        if self._broken:
            self._recover_all()
        if self._fd is not None and self.clock() - self._opened_at >= self.max_age:
            self._close_file(CLOSE_TIME)
        if records:
            self._check_store(records[0]["recordId"].rpartition("-")[0])
        items = self._items(records)
        try:
            self._write(items)
        except OSError:
            self._broken = True  # what is on disk is recovered (whole CDRs kept) before the retry
            raise
        if self._fd is not None and (self._count >= self.max_records or self._size >= self.max_bytes):
            self._close_file(self._full_reason())

    def _items(self, records: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
        """(spool sequence, CDR header + CDR) of the records not yet in a file that are CDRs."""
        if self._encoder is None:
            raise RuntimeError("the CDR sink is not open")
        items = []
        for record in records:
            seq = record["recordSequenceNumber"]
            if seq <= self.high_water:
                continue  # already in a file: a re-delivery after a crash
            cdr = self._encoder.encode(record)
            if cdr is None:
                continue
            if len(cdr) > MAX_CDR:
                log.error("event=cdr_too_long record=%s bytes=%d", record.get("recordId"), len(cdr))
                continue
            items.append((seq, len(cdr).to_bytes(2, "big") + _CDR_HEADER_TAIL + cdr))
        return items

    def _write(self, items: list[tuple[int, bytes]]) -> None:
        """Append the items, closing a file when the next one would not fit and opening the next; fsync'd."""
        chunk: list[bytes] = []
        chunk_size = 0
        last_seq = self.high_water
        for seq, item in items:
            if self._fd is not None and self._full(chunk_size + len(item), len(chunk)):
                self._append(chunk, chunk_size, last_seq)
                chunk, chunk_size = [], 0
                self._close_file(self._full_reason())
            if self._fd is None:
                self._new_file(seq)
            chunk.append(item)
            chunk_size += len(item)
            last_seq = seq
        if chunk:
            self._append(chunk, chunk_size, last_seq)

    def _full_reason(self) -> int:
        return CLOSE_COUNT if self._count >= self.max_records else CLOSE_SIZE

    def _check_store(self, store_id: str) -> None:
        """Sequence numbers count within one store: records of another (a store made anew, the directory kept)
        start a new count instead of being taken for re-deliveries."""
        if self.store_id is not None and store_id != self.store_id:
            log.warning(
                "event=cdr_new_spool old_store=%s store=%s high_water=%d", self.store_id, store_id, self.high_water
            )
            self.high_water = 0
        self.store_id = store_id

    def _full(self, adding: int, adding_count: int) -> bool:
        if self._count + adding_count >= self.max_records:
            return True
        return self._count + adding_count > 0 and self._size + adding > self.max_bytes

    def _new_file(self, first_seq: int) -> None:
        now = self.clock()
        self.rc = self.rc + 1 if self.rc < 0xFFFFFFFF else 1
        path = os.path.join(self.directory, file_name(self.node_id, self.rc, now) + ".tmp")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        header = file_header(
            length=HEADER_LENGTH,
            count=0,
            rc=self.rc,
            opened=header_timestamp(now),
            appended=header_timestamp(now),
            reason=CLOSE_NORMAL,
            address=self.address,
            first=first_seq,
        )
        self._fd, self._path, self._opened_at = fd, path, now
        self._size, self._count, self._first = HEADER_LENGTH, 0, first_seq
        self._write_at(header, 0)
        self._sync_dir()

    def _write_at(self, data: bytes, offset: int) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def _append(self, chunk: list[bytes], size: int, last_seq: int) -> None:
        self._write_at(b"".join(chunk), self._size)
        assert self._fd is not None
        os.fsync(self._fd)  # the acknowledgement: the exporter advances its cursor after this
        self._size += size
        self._count += len(chunk)
        self.written += len(chunk)
        self.high_water = max(self.high_water, last_seq)

    def _close_file(self, reason: int) -> None:
        fd, path = self._fd, self._path
        if fd is None or path is None:
            return
        if self._broken:
            self._recover_all()
            return
        header = file_header(
            length=self._size,
            count=self._count,
            rc=self.rc,
            opened=header_timestamp(self._opened_at),
            appended=header_timestamp(self.clock()),
            reason=reason,
            address=self.address,
            first=self._first,
        )
        try:
            self._write_at(header, 0)
            os.fsync(fd)
        except OSError:
            self._broken = True
            raise
        os.close(fd)
        self._fd, self._path = None, None
        self._publish(path, self.rc, self._count, reason)

    def _publish(self, tmp_path: str, rc: int, count: int, reason: int) -> None:
        self._write_state(rc)  # before the rename: the state covers every published file
        final = tmp_path[: -len(".tmp")]
        os.rename(tmp_path, final)
        self._sync_dir()
        self.closed_files += 1
        log.info("event=cdr_file_closed file=%s cdrs=%d reason=%d", os.path.basename(final), count, reason)

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
