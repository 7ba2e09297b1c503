"""The file sink: JSON Lines files, fsync'd per batch, rolled by size and by time."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from chf.export.records import encode_record

log = logging.getLogger("chf.export")


class FileSink:
    """Writes `<prefix>-<UTC time>-<first sequence>.jsonl.tmp`, fsyncs each batch (the acknowledgement), and
    renames the file to `.jsonl` once it reaches `max_bytes` or `max_age` seconds: a billing system pulls only
    closed `.jsonl` files. A `.tmp` file left by a crash is closed on the next start (a torn last line is cut),
    so it is never lost; events after the durable cursor are delivered again in the next file (de-duplicate on
    recordId)."""

    def __init__(
        self,
        directory: str,
        *,
        name: str = "files",
        prefix: str = "chf-events",
        max_bytes: int = 64 << 20,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.directory = directory
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self._file: Any = None
        self._path: str | None = None
        self._opened_at = 0.0
        self._size = 0
        self.closed_files = 0

    async def open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for entry in sorted(os.listdir(self.directory)):
            if entry.startswith(self.prefix) and entry.endswith(".jsonl.tmp"):
                self._recover(os.path.join(self.directory, entry))

    def _recover(self, path: str) -> None:
        with open(path, "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                log.warning(
                    "event=export_file_torn_line_cut file=%s bytes=%d", os.path.basename(path), len(data) - keep
                )
                f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        if keep == 0:
            os.unlink(path)
        else:
            self._publish(path)

    def _publish(self, tmp_path: str) -> None:
        os.rename(tmp_path, tmp_path[: -len(".tmp")])
        self._sync_dir()
        self.closed_files += 1
        log.info("event=export_file_closed file=%s", os.path.basename(tmp_path[: -len(".tmp")]))

    def _sync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _new_file(self, first_seq: int) -> None:
        now = self.clock()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        base = os.path.join(self.directory, f"{self.prefix}-{stamp}-{first_seq:012d}")
        path, n = base + ".jsonl.tmp", 1
        while os.path.exists(path) or os.path.exists(path[: -len(".tmp")]):  # a re-delivery after a crash
            path, n = f"{base}.{n}.jsonl.tmp", n + 1
        self._file = open(path, "ab")  # noqa: SIM115 - kept open across batches until rolled
        self._path = path
        self._opened_at = now
        self._size = 0
        self._sync_dir()

    def _roll(self) -> None:
        if self._file is None or self._path is None:
            return
        self._file.close()
        self._file = None
        self._publish(self._path)
        self._path = None

    async def deliver(self, records: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._write, records)

    def _write(self, records: list[dict[str, Any]]) -> None:
        if self._file is not None and self.clock() - self._opened_at >= self.max_age:
            self._roll()
        if self._file is None:
            self._new_file(records[0]["recordSequenceNumber"])
        data = b"".join(encode_record(r) + b"\n" for r in records)
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._size += len(data)
        if self._size >= self.max_bytes:
            self._roll()

    async def idle(self) -> None:
        if self._file is not None and self.clock() - self._opened_at >= self.max_age:
            await asyncio.to_thread(self._roll)

    async def close(self) -> None:
        await asyncio.to_thread(self._roll)
