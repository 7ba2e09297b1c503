"""The AgentX subagent (RFC 2741) of `chf serve`: registers CHF-MIB with the host's master agent (net-snmp snmpd,
`master agentx`) over its AgentX socket, answers its Get / GetNext / GetBulk from the latest sample, and sends
the alarms' notifications through it (Notify PDU: snmpd forwards them to its trap and inform sinks, SNMPv2c and
SNMPv3 alike).

It never blocks charging: it is a pair of tasks on the event loop (the session with the master, and the poller
that takes a Sample every `poll_interval` seconds), it writes to the master's socket without waiting for the
socket to drain, and a master that is away (not started, restarting, gone) costs one connection attempt every
`reconnect_interval` seconds. A session is dropped and opened again when the master closes it, when a Ping or
any request of ours goes unanswered for `timeout` seconds, or when the master sends bytes that are not AgentX.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from chf.snmp import agentx as ax
from chf.snmp.config import SnmpSettings
from chf.snmp.mib import MibView, ViewBuilder, answer, notify_varbinds
from chf.snmp.monitor import ALARM_NAMES, Monitor, Notification, Thresholds
from chf.snmp.sample import Sample, take_sample

log = logging.getLogger("chf.snmp")

MAX_WRITE_BUFFER = 1 << 20  # bytes queued to a master that does not read: the session is dropped beyond


class AgentXError(Exception):
    """The master refused or did not answer (Open, Register), or broke the protocol."""


class SnmpAgent:
    name = "snmp"

    def __init__(
        self,
        settings: SnmpSettings,
        *,
        workers_configured: int = 0,
        export_backlog_limit: int = 10_000_000,
        sampler: Callable[[], Sample] = take_sample,
    ) -> None:
        self.settings = settings
        self.root = settings.arc
        self.sampler = sampler
        self.monitor = Monitor(Thresholds(settings.store_fill_threshold, export_backlog_limit, settings.overload_hold))
        self.builder = ViewBuilder(self.root, workers_configured, settings.store_fill_threshold, export_backlog_limit)
        self.started = time.monotonic()
        self.connected = asyncio.Event()
        self.sessions = 0  # sessions opened so far (tests watch it across a master restart)
        self.notifications_sent = 0
        self._view: MibView | None = None
        self._view_of: Sample | None = None
        self._pending_notify: deque[Notification] = deque(maxlen=max(settings.notify_queue, 1))
        self._writer: asyncio.StreamWriter | None = None
        self._session_id = 0
        self._packet_ids = 0
        self._waiting: dict[int, asyncio.Future[ax.Pdu]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._unavailable_logged = False

    # -- component ----------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.poll()  # a first sample: the MIB answers from the start
        self._tasks = [
            asyncio.create_task(self._connect_loop(), name="snmp-agentx"),
            asyncio.create_task(self._poll_loop(), name="snmp-poll"),
        ]
        log.info("event=snmp_agent_started socket=%s arc=%s", self.settings.agentx_socket, self.settings.enterprise_arc)

    async def stop(self) -> None:
        writer = self._writer
        if writer is not None and self._session_id:
            with contextlib.suppress(Exception):
                writer.write(ax.encode(self._pdu(ax.CLOSE, reason=ax.REASON_SHUTDOWN)))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close_writer()
        log.info("event=snmp_agent_stopped")

    # -- sampling and alarms ------------------------------------------------------------------------------------------
    def poll(self) -> list[Notification]:
        """Take a sample, update the alarms, send what they raised or cleared."""
        notifications = self.monitor.update(self.sampler())
        for n in notifications:
            alarm = n.alarm
            raised = n.number % 2 == 1
            log.log(
                logging.WARNING if raised else logging.INFO,
                "event=%s type=%s resource=%s index=%d text=%s",
                "alarm_raised" if raised else "alarm_cleared",
                ALARM_NAMES[alarm.type],
                alarm.resource,
                alarm.index,
                alarm.text.replace(" ", "_"),
            )
            self._pending_notify.append(n)
        self._send_notifications()
        return notifications

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                self.poll()
            except Exception:
                log.exception("event=snmp_poll_failed")

    def view(self) -> MibView:
        sample = self.monitor.sample
        if sample is None:
            self.poll()
            sample = self.monitor.sample
        assert sample is not None
        if self._view is None or self._view_of is not sample:
            self._view = self.builder.build(sample, self.monitor)
            self._view_of = sample
        return self._view

    def uptime(self) -> int:
        return int((time.monotonic() - self.started) * 100) & 0xFFFFFFFF

    # -- the session with the master ----------------------------------------------------------------------------------
    async def _connect_loop(self) -> None:
        while True:
            try:
                await self._session()
            except (OSError, AgentXError, ax.ParseError, TimeoutError) as exc:
                if not self._unavailable_logged:
                    log.warning(
                        "event=snmp_master_unavailable socket=%s error=%s retry_every=%.1f",
                        self.settings.agentx_socket,
                        str(exc).replace(" ", "_") or type(exc).__name__,
                        self.settings.reconnect_interval,
                    )
                    self._unavailable_logged = True
            finally:
                self._end_session()
            await asyncio.sleep(self.settings.reconnect_interval)

    async def _open_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        where = self.settings.agentx_socket
        timeout = self.settings.timeout
        if where.startswith("tcp:"):
            host, _, port = where[4:].rpartition(":")
            return await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
        if where.startswith("unix:"):
            where = where[5:]
        return await asyncio.wait_for(asyncio.open_unix_connection(where), timeout)

    async def _session(self) -> None:
        reader, writer = await self._open_stream()
        self._writer = writer
        reading = asyncio.create_task(self._read(reader), name="snmp-agentx-read")
        try:
            await self._handshake()
            self.sessions += 1
            self._unavailable_logged = False
            self.connected.set()
            log.info(
                "event=snmp_registered socket=%s session=%d arc=%s",
                self.settings.agentx_socket,
                self._session_id,
                self.settings.enterprise_arc,
            )
            self._send_notifications()
            await self._keepalive(reading)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    async def _handshake(self) -> None:
        s = self.settings
        opened = await self._request(self._pdu(ax.OPEN, timeout=s.timeout, oid=self.root, descr=s.description.encode()))
        if opened.error:
            raise AgentXError(f"the master refused the session (error {opened.error})")
        self._session_id = opened.session_id
        registered = await self._request(self._pdu(ax.REGISTER, timeout=s.timeout, oid=self.root))
        if registered.error:
            raise AgentXError(f"the master refused to register {s.enterprise_arc} (error {registered.error})")
        caps = await self._request(self._pdu(ax.ADD_AGENT_CAPS, oid=self.root, descr=b"CHF-MIB"))
        if caps.error:
            log.info("event=snmp_agent_caps_refused error=%d", caps.error)

    async def _keepalive(self, reading: asyncio.Task[None]) -> None:
        """Ping the master every ping_interval; returns when the session ends (closed, unanswered, broken)."""
        while not reading.done():
            done, _ = await asyncio.wait([reading], timeout=self.settings.ping_interval)
            if done:
                break
            pong = await self._request(self._pdu(ax.PING))
            if pong.error:
                raise AgentXError(f"the master answered a Ping with error {pong.error}")
        exc = reading.exception()
        if exc is not None:
            raise exc
        log.warning("event=snmp_master_closed socket=%s", self.settings.agentx_socket)

    def _end_session(self) -> None:
        self.connected.clear()
        self._session_id = 0
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(AgentXError("session closed"))
        self._waiting.clear()
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- PDUs ---------------------------------------------------------------------------------------------------------
    def _pdu(self, type_: int, **fields: Any) -> ax.Pdu:
        self._packet_ids = (self._packet_ids + 1) & 0xFFFFFFFF
        return ax.Pdu(type_, self._session_id, 0, self._packet_ids, **fields)

    def _write(self, pdu: ax.Pdu) -> None:
        writer = self._writer
        if writer is None:
            raise AgentXError("not connected")
        if writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            writer.close()
            raise AgentXError("the master does not read")
        writer.write(ax.encode(pdu))

    async def _request(self, pdu: ax.Pdu) -> ax.Pdu:
        future: asyncio.Future[ax.Pdu] = asyncio.get_running_loop().create_future()
        self._waiting[pdu.packet_id] = future
        try:
            self._write(pdu)
            return await asyncio.wait_for(future, self.settings.timeout)
        finally:
            self._waiting.pop(pdu.packet_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = ax.Decoder()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for pdu in decoder.feed(data):
                if self._dispatch(pdu):
                    return

    def _dispatch(self, pdu: ax.Pdu) -> bool:
        """Handle one PDU of the master; True when it closed the session."""
        t = pdu.type
        if t == ax.RESPONSE:
            future = self._waiting.get(pdu.packet_id)
            if future is not None and not future.done():
                future.set_result(pdu)
        elif t in (ax.GET, ax.GET_NEXT, ax.GET_BULK):
            self._write(answer(pdu, self.view(), self.uptime()))
        elif t == ax.TEST_SET:  # every object of CHF-MIB is read-only
            self._write(self._reply(pdu, ax.NOT_WRITABLE, 1 if pdu.varbinds else 0))
        elif t in (ax.COMMIT_SET, ax.UNDO_SET):
            self._write(self._reply(pdu, ax.NO_ERROR))
        elif t == ax.CLOSE:
            log.info("event=snmp_master_closed_session reason=%d", pdu.reason)
            return True
        elif t != ax.CLEANUP_SET:  # CleanupSet has no response; anything else is not for a subagent
            self._write(self._reply(pdu, ax.PROCESSING_ERROR))
        return False

    def _reply(self, pdu: ax.Pdu, error: int, index: int = 0) -> ax.Pdu:
        return ax.Pdu(
            ax.RESPONSE,
            pdu.session_id,
            pdu.transaction_id,
            pdu.packet_id,
            sys_uptime=self.uptime(),
            error=error,
            index=index,
        )

    # -- notifications ------------------------------------------------------------------------------------------------
    def _send_notifications(self) -> None:
        if not self.connected.is_set():
            return
        while self._pending_notify:
            n = self._pending_notify.popleft()
            pdu = self._pdu(ax.NOTIFY, varbinds=notify_varbinds(self.root, n.number, n.alarm))
            try:
                self._write(pdu)
            except AgentXError:
                self._pending_notify.appendleft(n)
                return
            self.notifications_sent += 1
            future: asyncio.Future[ax.Pdu] = asyncio.get_running_loop().create_future()
            self._waiting[pdu.packet_id] = future
            future.add_done_callback(functools.partial(self._notified, pdu.packet_id))

    def _notified(self, packet_id: int, future: asyncio.Future[ax.Pdu]) -> None:
        self._waiting.pop(packet_id, None)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None and future.result().error:
            log.warning("event=snmp_notify_refused error=%d", future.result().error)
