"""The core link: front-end worker processes reach the charging service of the core process over a Unix socket.

With `[server] frontend_workers = N`, `chf serve` runs the Gy and Nchf front-ends (codec, h2, JSON: the CPU-heavy
protocol work) in N worker processes and keeps the store, engine, sweeper, management API and exporters in the
core process. A worker talks to the core through `RemoteService`, which offers exactly what the front-ends use of
`ChargingService`: the `ChargingPort` of chf/runtime/port.py. The core side is `CoreLinkServer`.

Frames are a 4-byte big-endian length and a msgpack array:
- worker -> core: [request_id, packed ChargingRequest]; ["hello", worker_id]; ["ready", worker_id];
  ["metrics", snapshot] (the worker's Prometheus samples, so the core's /metrics shows them).
- core -> worker: [request_id, packed ChargingAnswer, duplicate]; [request_id, error kind, field, message] with
  kind "request" (RequestError), "busy" (StoreBusy), "closed" (StoreClosed) or "internal"; ["hello", store_id];
  ["signal", packed Signal] (Gy re-auth/abort: every worker gets it, the one holding the peer sends the RAR/ASR).

The worker answers its client only when the core's reply arrives, and the core replies from `charge_then`'s
callback, which runs after the transaction is durable: durable before answered holds across the link. Writes are
batched: one transport write per connection per loop iteration, as the front-ends do on their sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, cast

import msgspec

from chf.core.model import ChargingAnswer, ChargingRequest, RequestError, Signal
from chf.runtime import metrics
from chf.runtime.service import SignalBus, SignalHandler, StoreBusy, StoreClosed

log = logging.getLogger("chf.corelink")

# A request number the core assigns: Nchf requests that carry invocationSequenceNumber 0 after the create get a
# number no client can send that never repeats (nchf.app). The engine refuses a number at or below one already
# applied to the session, so they must grow across all workers: one counter, in the core. (-1: no protocol
# numbers below 0.)
ASSIGN_NUMBER = -1
MAX_FRAME = 16 << 20  # a request is a few hundred bytes; anything this big is a broken peer (invariant 7)
Done = Callable[[ChargingAnswer | BaseException], None]


def link_path(data_dir: str) -> str:
    return os.path.join(data_dir, "corelink.sock")


# msgspec: the same msgpack as the msgpack package, in half the time (see store/schema.py).
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def _frame(obj: Any) -> bytes:
    body = _encode(obj)
    return len(body).to_bytes(4, "big") + body


class _Framed(asyncio.Protocol):
    """Length-prefixed msgpack frames in both directions, writes gathered into one per loop iteration."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if n > MAX_FRAME:
                log.error("event=corelink_frame_too_large bytes=%d", n)
                if self.transport is not None:
                    self.transport.close()
                return
            if end - pos - 4 < n:
                break
            try:
                msg = _decode(buf[pos + 4 : pos + 4 + n])
            except Exception as exc:  # a corrupt stream: nothing after it can be trusted
                log.error("event=corelink_bad_frame error=%r", exc)
                if self.transport is not None:
                    self.transport.close()
                return
            pos += 4 + n
            try:
                self.message(msg)
            except Exception:  # one bad message: logged, the link goes on
                log.exception("event=corelink_message_failed")
        if pos:
            del buf[:pos]

    def message(self, msg: Any) -> None:
        raise NotImplementedError

    def send(self, obj: Any) -> None:
        if self.transport is None:
            return
        self._out.append(_frame(obj))
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


# ----------------------------------------------------------------------------------------------------------------------
# core side
# ----------------------------------------------------------------------------------------------------------------------
def error_frame(request_id: int, exc: BaseException) -> list[Any]:
    if isinstance(exc, RequestError):
        return [request_id, "request", exc.field, exc.message]
    if isinstance(exc, StoreBusy):
        return [request_id, "busy", None, str(exc)]
    if isinstance(exc, StoreClosed):
        return [request_id, "closed", None, str(exc)]
    return [request_id, "internal", None, type(exc).__name__]  # the traceback stays in the core's log


class _CoreConnection(_Framed):
    def __init__(self, link: CoreLinkServer) -> None:
        super().__init__()
        self.link = link
        self.worker_id: int | None = None
        self.snapshot: list[Any] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.link.connections.add(self)
        self.send(["hello", self.link.service.store.store_id])

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.link.lost(self)

    def message(self, msg: Any) -> None:
        head = msg[0]
        if type(head) is int:
            self._charge(head, msg[1])
        elif head == "metrics":
            self.snapshot = msg[1]
        elif head == "hello":
            self.worker_id = int(msg[1])
        elif head == "ready":
            self.link.worker_ready(int(msg[1]))

    def _charge(self, request_id: int, packed: list[Any]) -> None:
        try:
            request = ChargingRequest.unpack(packed)
        except Exception as exc:  # a worker of another release, or a bug: refused, never charged
            log.error("event=corelink_bad_request worker=%s error=%r", self.worker_id, exc)
            self.send([request_id, "internal", None, "malformed request on the core link"])
            return
        if request.number == ASSIGN_NUMBER:
            request.number = next(self.link.numbers)

        def done(result: ChargingAnswer | BaseException) -> None:
            if isinstance(result, BaseException):
                if not isinstance(result, RequestError | StoreBusy | StoreClosed):
                    log.error("event=charge_failed session=%s error=%r", request.session, result, exc_info=result)
                self.send(error_frame(request_id, result))
            else:
                self.send([request_id, result.pack(), result.duplicate])

        try:
            self.link.service.charge_then(request, done)
        except Exception as exc:  # StoreBusy, or a store that is not running: the worker maps it as today
            done(exc)


class CoreLinkServer:
    """The core's end: serves ChargingRequests of the workers, forwards Gy signals, collects worker metrics."""

    name = "corelink"

    def __init__(self, service: Any, path: str) -> None:
        self.service = service
        self.path = path
        self.connections: set[_CoreConnection] = set()
        self.ready_workers: set[int] = set()
        self.changed = asyncio.Event()  # set whenever a worker becomes ready
        self._retired: list[list[Any]] = []  # counters of workers that exited: totals must not go down
        # As nchf.app's own counter: above Uint32, microseconds since the epoch, so it grows across restarts too.
        self.numbers = itertools.count(2**32 + time.time_ns() // 1000)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket of a core that died
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _CoreConnection(self), self.path)
        os.chmod(self.path, 0o600)  # charging requests are only for this user's processes
        self.service.bus.subscribe("gy", self.forward_signal)
        metrics.REMOTE_SAMPLES.append(self.samples)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.flush()
                conn.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(ValueError):
            metrics.REMOTE_SAMPLES.remove(self.samples)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def forward_signal(self, signal: Signal) -> None:
        packed = ["signal", signal.pack()]
        for conn in self.connections:
            conn.send(packed)

    def worker_ready(self, worker_id: int) -> None:
        self.ready_workers.add(worker_id)
        self.changed.set()

    def lost(self, conn: _CoreConnection) -> None:
        self.connections.discard(conn)
        if conn.worker_id is not None:
            self.ready_workers.discard(conn.worker_id)
        # Keep what the worker counted; its gauges (peers up) ended with it.
        kept = [fam for fam in conn.snapshot if fam[1] != "gauge"]
        if kept:
            self._retired.append(kept)

    def samples(self) -> list[list[Any]]:
        return self._retired + [c.snapshot for c in self.connections if c.snapshot]


# ----------------------------------------------------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------------------------------------------------
class _RemoteStore:
    """The part of the store a front-end reads: its id (Nchf resource references are keyed with it)."""

    def __init__(self) -> None:
        self.store_id = ""


class _WorkerConnection(_Framed):
    def __init__(self, remote: RemoteService) -> None:
        super().__init__()
        self.remote = remote

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.remote._lost()

    def message(self, msg: Any) -> None:
        head = msg[0]
        if type(head) is int:
            self.remote._reply(head, msg)
        elif head == "signal":
            self.remote.bus.publish([Signal.unpack(msg[1])])
        elif head == "hello":
            self.remote._hello(msg[1])


class RemoteService:
    """What a front-end in a worker process sees as the charging service: requests go to the core over the link,
    answers come back after the core made them durable, Gy signals arrive on the local bus."""

    def __init__(self, path: str, worker_id: int) -> None:
        self.path = path
        self.worker_id = worker_id
        self.bus = SignalBus()
        self.store = _RemoteStore()
        self.closed = asyncio.Event()  # the core went away: the worker stops
        self._conn: _WorkerConnection | None = None
        self._pending: dict[int, Done] = {}
        self._ids = itertools.count(1)
        self._hello_seen: asyncio.Future[str] | None = None

    async def connect(self, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        self._hello_seen = loop.create_future()
        conn = self._conn = _WorkerConnection(self)
        await loop.create_unix_connection(lambda: conn, self.path)
        conn.send(["hello", self.worker_id])
        self.store.store_id = await asyncio.wait_for(self._hello_seen, timeout)

    def _hello(self, store_id: str) -> None:
        if self._hello_seen is not None and not self._hello_seen.done():
            self._hello_seen.set_result(store_id)

    # -- the ChargingPort of the front-ends (chf/runtime/port.py) -----------------------------------------------
    @property
    def store_id(self) -> str:
        return self.store.store_id

    def subscribe(self, protocol: str, handler: SignalHandler) -> None:
        self.bus.subscribe(protocol, handler)

    def ready(self) -> None:
        if self._conn is not None:
            self._conn.send(["ready", self.worker_id])

    def send_metrics(self) -> None:
        if self._conn is not None:
            self._conn.send(["metrics", metrics.snapshot()])

    def charge_then(self, request: ChargingRequest, done: Done) -> None:
        """As ChargingService.charge_then: `done` runs once the core has answered (after its commit). Raises
        StoreClosed at once when the core link is down."""
        conn = self._conn
        if conn is None or conn.transport is None:
            raise StoreClosed("the core link is down")
        request_id = next(self._ids)
        self._pending[request_id] = done
        conn.send([request_id, request.pack()])

    def _reply(self, request_id: int, msg: list[Any]) -> None:
        done = self._pending.pop(request_id, None)
        if done is None:
            return
        if isinstance(msg[1], list):
            done(ChargingAnswer.unpack(msg[1], duplicate=bool(msg[2])))
            return
        kind, field, message = msg[1], msg[2], msg[3]
        if kind == "request":
            done(RequestError(field, message))
        elif kind == "busy":
            done(StoreBusy(message))
        elif kind == "closed":
            done(StoreClosed(message))
        else:
            done(RuntimeError(f"the core failed to charge: {message}"))

    def _lost(self) -> None:
        """No more answers can come: every waiting request is failed as when the store stops."""
        pending, self._pending = self._pending, {}
        for done in pending.values():
            done(StoreClosed("the core link was lost"))
        self.closed.set()

    def in_flight(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.flush()
            self._conn.transport.close()
