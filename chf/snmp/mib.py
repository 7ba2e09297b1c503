"""CHF-MIB (mibs/CHF-MIB.txt) as the agent serves it: the object identifiers, a view of every instance built from
a Sample and the Monitor's state, and the answers to the master agent's Get, GetNext and GetBulk (RFC 2741 7.2.3).

Object identifiers are relative to the module's root, `[snmp] enterprise_arc` (default 1.3.6.1.4.1.32473, the
enterprise number IANA reserves for documentation, RFC 5612: a placeholder until the project has its own).
Keep this file and mibs/CHF-MIB.txt in step: tests/test_snmp.py checks the names here against the MIB with
snmptranslate.
"""

from __future__ import annotations

import bisect
import ipaddress
import time
from typing import Any

from chf.snmp import agentx as ax
from chf.snmp.monitor import ALARM_NAMES, Alarm, Monitor
from chf.snmp.sample import Sample

Oid = tuple[int, ...]
Value = tuple[int, Any]  # (AgentX type, value)

DEFAULT_ARC: Oid = (1, 3, 6, 1, 4, 1, 32473)
SYS_UPTIME: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)

# Relative OIDs (under the root), as in mibs/CHF-MIB.txt. Tables: (table, entry 1, column).
NOTIFICATIONS = (0,)
OBJECTS = (1,)
DIAMETER = (1, 1)
PEER_TABLE = (1, 1, 1)
PEER_CMD_TABLE = (1, 1, 2)
PEER_RESULT_TABLE = (1, 1, 3)
PEERS_UP = (1, 1, 4)
CREDIT_CONTROL = (1, 2)
CCR_TABLE = (1, 2, 1)
CCA_TABLE = (1, 2, 2)
NCHF = (1, 3)
NCHF_OP_TABLE = (1, 3, 1)
NCHF_PROBLEM_TABLE = (1, 3, 2)
NCHF_NOTIFY_SENT = (1, 3, 3)
NCHF_NOTIFY_FAILED = (1, 3, 4)
NCHF_NOTIFY_DROPPED = (1, 3, 5)
STORE = (1, 4)
EXPORT_TABLE = (1, 5, 1)
WORKERS_CONFIGURED = (1, 6, 1)
WORKERS_UP = (1, 6, 2)
WORKER_TABLE = (1, 6, 3)
ALARMS_ACTIVE = (1, 7, 1)
ALARM_TABLE = (1, 7, 2)
CONFORMANCE = (2,)

# Columns (entry sub-identifier 1, then the column number)
PEER_IDENTITY, PEER_REALM, PEER_STATE, PEER_WATCHDOG, PEER_ADDR_TYPE, PEER_ADDR, PEER_PORT = 2, 3, 4, 5, 6, 7, 8
PEER_UPTIME, PEER_WATCHDOG_FAILURES, PEER_CONNECTIONS = 9, 10, 11
PEER_REQUESTS_IN, PEER_ANSWERS_OUT, PEER_REQUESTS_OUT, PEER_ANSWERS_IN = 12, 13, 14, 15
ALARM_TYPE, ALARM_RESOURCE, ALARM_RAISED, ALARM_TEXT = 2, 3, 4, 5

PEER_TOTALS = (
    (PEER_REQUESTS_IN, "in", "request"),
    (PEER_ANSWERS_OUT, "out", "answer"),
    (PEER_REQUESTS_OUT, "out", "request"),
    (PEER_ANSWERS_IN, "in", "answer"),
)
CCR_TYPES = {"CCR-I": 1, "CCR-U": 2, "CCR-T": 3, "CCR-E": 4}
NCHF_OPERATIONS = {"create": 1, "update": 2, "release": 3}
STATE_CLOSED, STATE_R_OPEN = 1, 6  # dbpPeerStatsState of the Diameter base protocol MIB draft
WATCHDOG_OKAY, WATCHDOG_SUSPECT, WATCHDOG_DOWN = 1, 2, 3
CMD_CC = 272


def string_index(text: str) -> Oid:
    """A variable-length OCTET STRING index (RFC 2578 7.7): its length, then one sub-identifier per octet."""
    data = text.encode()
    return (len(data), *data)


def date_and_time(epoch: float) -> bytes:
    """SNMPv2-TC DateAndTime, UTC (11 octets); 8 zero octets when `epoch` is 0 (never)."""
    if epoch <= 0:
        return bytes(8)
    t = time.gmtime(epoch)
    deci = int((epoch % 1) * 10)
    fields = (t.tm_year >> 8, t.tm_year & 0xFF, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, deci)
    return bytes(fields) + b"+\x00\x00"


def inet_address(text: str) -> tuple[int, bytes]:
    """(InetAddressType, InetAddress) of an address string: ipv4(1), ipv6(2), or unknown(0) with no octets."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return 0, b""
    return (1 if addr.version == 4 else 2), addr.packed


def counter64(value: float) -> Value:
    return ax.COUNTER64, int(value)


def gauge32(value: float) -> Value:
    return ax.GAUGE32, int(value)


def text(value: str) -> Value:
    return ax.OCTET_STRING, value.encode()[:255]


class MibView:
    """Every instance, sorted, for Get / GetNext / GetBulk."""

    def __init__(self, values: dict[Oid, Value], objects: set[Oid]) -> None:
        self.values = values
        self.oids = sorted(values)
        self.objects = objects  # OIDs of the object types (scalars without .0, table columns)

    def get(self, oid: Oid) -> ax.VarBind:
        value = self.values.get(oid)
        if value is not None:
            return ax.VarBind(value[0], oid, value[1])
        for n in range(len(oid) - 1, 0, -1):
            if oid[:n] in self.objects:
                return ax.VarBind(ax.NO_SUCH_INSTANCE, oid)
        return ax.VarBind(ax.NO_SUCH_OBJECT, oid)

    def next(self, start: Oid, include: bool = False, end: Oid = ()) -> ax.VarBind:
        """The first instance after `start` (or at it, with `include`) and before `end`; endOfMibView if none."""
        oids = self.oids
        i = bisect.bisect_left(oids, start) if include else bisect.bisect_right(oids, start)
        if i < len(oids) and (not end or oids[i] < end):
            oid = oids[i]
            type_, value = self.values[oid]
            return ax.VarBind(type_, oid, value)
        return ax.VarBind(ax.END_OF_MIB_VIEW, start)


def answer(pdu: ax.Pdu, view: MibView, uptime: int = 0) -> ax.Pdu:
    """The Response to a Get, GetNext or GetBulk PDU."""
    varbinds: list[ax.VarBind] = []
    if pdu.type == ax.GET:
        varbinds = [view.get(r.start) for r in pdu.ranges]
    elif pdu.type == ax.GET_NEXT:
        varbinds = [view.next(r.start, r.include, r.end) for r in pdu.ranges]
    elif pdu.type == ax.GET_BULK:
        # RFC 2741 7.2.3.3: the non-repeaters once each, then the repeaters max_repetitions times, each repetition
        # starting after the previous one's result.
        ranges = pdu.ranges
        fixed, repeaters = ranges[: pdu.non_repeaters], ranges[pdu.non_repeaters :]
        varbinds = [view.next(r.start, r.include, r.end) for r in fixed]
        current = [(r.start, r.include, r.end) for r in repeaters]
        for _ in range(pdu.max_repetitions if current else 0):
            row = [view.next(start, include, end) for start, include, end in current]
            varbinds.extend(row)
            if all(vb.type == ax.END_OF_MIB_VIEW for vb in row):
                break
            current = [(vb.name, False, end) for vb, (_, _, end) in zip(row, current, strict=True)]
    return ax.Pdu(ax.RESPONSE, pdu.session_id, pdu.transaction_id, pdu.packet_id, sys_uptime=uptime, varbinds=varbinds)


class ViewBuilder:
    """Builds the MibView of one Sample and the Monitor's state, under `root`."""

    def __init__(
        self, root: Oid, workers_configured: int = 0, store_fill_threshold: int = 80, export_backlog_limit: int = 0
    ) -> None:
        self.root = root
        self.workers_configured = workers_configured
        self.store_fill_threshold = store_fill_threshold
        self.export_backlog_limit = export_backlog_limit
        self.values: dict[Oid, Value] = {}
        self.objects: set[Oid] = set()

    def scalar(self, rel: Oid, value: Value) -> None:
        oid = self.root + rel
        self.objects.add(oid)
        self.values[(*oid, 0)] = value

    def cell(self, table: Oid, column: int, index: Oid, value: Value) -> None:
        column_oid = (*self.root, *table, 1, column)
        self.objects.add(column_oid)
        self.values[column_oid + index] = value

    def build(self, sample: Sample, monitor: Monitor) -> MibView:
        self.values = {}
        self.objects = set()
        for part in (self._peers, self._credit_control, self._nchf, self._store, self._export, self._workers):
            part(sample, monitor)
        self._alarms(monitor)
        return MibView(self.values, self.objects)

    # -- chfDiameter ---------------------------------------------------------------------------------------------------
    def _peers(self, sample: Sample, monitor: Monitor) -> None:
        up = 0
        index_of = monitor.peer_index
        totals: dict[tuple[str, str, str], float] = {}  # (peer, direction, kind): one pass over the messages
        for labels, value in sample.rows("chf_diameter_peer_messages_total"):
            key = (labels.get("peer", ""), labels.get("direction", ""), labels.get("kind", ""))
            totals[key] = totals.get(key, 0.0) + value
        for identity, peer in sample.peers.items():
            index = index_of.get(identity)
            if index is None:
                continue
            idx = (index,)
            is_up = peer.connections > 0
            up += is_up
            addr_type, addr = inet_address(peer.address)
            since = peer.open_since / peer.connections if is_up else 0.0
            watchdog = (WATCHDOG_SUSPECT if peer.suspect else WATCHDOG_OKAY) if is_up else WATCHDOG_DOWN

            def cell(column: int, value: Value, idx: Oid = idx) -> None:
                self.cell(PEER_TABLE, column, idx, value)

            cell(PEER_IDENTITY, text(identity))
            cell(PEER_REALM, text(peer.realm))
            cell(PEER_STATE, (ax.INTEGER, STATE_R_OPEN if is_up else STATE_CLOSED))
            cell(PEER_WATCHDOG, (ax.INTEGER, watchdog))
            cell(PEER_ADDR_TYPE, (ax.INTEGER, addr_type))
            cell(PEER_ADDR, (ax.OCTET_STRING, addr))
            cell(PEER_PORT, gauge32(peer.port))
            cell(PEER_UPTIME, (ax.TIME_TICKS, int(max(0.0, sample.time - since) * 100) if is_up else 0))
            cell(PEER_WATCHDOG_FAILURES, counter64(peer.watchdog_failures))
            cell(PEER_CONNECTIONS, gauge32(peer.connections))
            for column, direction, kind in PEER_TOTALS:
                cell(column, counter64(totals.get((identity, direction, kind), 0.0)))
        self.scalar(PEERS_UP, gauge32(up))
        self._peer_commands(sample, index_of)
        self._peer_results(sample, index_of)

    def _peer_commands(self, sample: Sample, index_of: dict[str, int]) -> None:
        columns = {("in", "request"): 2, ("out", "request"): 3, ("in", "answer"): 4, ("out", "answer"): 5}
        counts: dict[Oid, dict[int, float]] = {}
        for labels, value in sample.rows("chf_diameter_peer_messages_total"):
            index = index_of.get(labels.get("peer", ""))
            column = columns.get((labels.get("direction", ""), labels.get("kind", "")))
            if index is None or column is None:
                continue
            row = counts.setdefault((index, int(labels["command"])), {})
            row[column] = row.get(column, 0.0) + value
        for idx, row in counts.items():
            for column in columns.values():
                self.cell(PEER_CMD_TABLE, column, idx, counter64(row.get(column, 0.0)))

    def _peer_results(self, sample: Sample, index_of: dict[str, int]) -> None:
        counts: dict[Oid, dict[int, float]] = {}
        for labels, value in sample.rows("chf_diameter_peer_answers_total"):
            index = index_of.get(labels.get("peer", ""))
            if index is None:
                continue
            row = counts.setdefault((index, int(labels["result_class"])), {})
            column = 2 if labels.get("direction") == "in" else 3
            row[column] = row.get(column, 0.0) + value
        for idx, row in counts.items():
            for column in (2, 3):
                self.cell(PEER_RESULT_TABLE, column, idx, counter64(row.get(column, 0.0)))

    # -- chfCreditControl ----------------------------------------------------------------------------------------------
    def _credit_control(self, sample: Sample, monitor: Monitor) -> None:
        by_type = sample.by("chf_requests_total", "operation", interface="gy")
        for operation, number in CCR_TYPES.items():
            self.cell(CCR_TABLE, 2, (number,), counter64(by_type.get(operation, 0.0)))
        codes = sample.by("chf_diameter_answers_total", "result_code", direction="out", command=str(CMD_CC))
        for code, count in sorted(codes.items(), key=lambda kv: int(kv[0])):
            self.cell(CCA_TABLE, 2, (int(code),), counter64(count))

    # -- chfNchf -------------------------------------------------------------------------------------------------------
    def _nchf(self, sample: Sample, monitor: Monitor) -> None:
        requests = sample.by("chf_requests_total", "operation", interface="nchf")
        successes = sample.by("chf_requests_total", "operation", interface="nchf", result="SUCCESS")
        for operation, number in NCHF_OPERATIONS.items():
            self.cell(NCHF_OP_TABLE, 2, (number,), counter64(requests.get(operation, 0.0)))
            self.cell(NCHF_OP_TABLE, 3, (number,), counter64(successes.get(operation, 0.0)))
        causes = sample.by("chf_requests_total", "result", interface="nchf")
        for cause, count in sorted(causes.items()):
            if cause != "SUCCESS" and cause:
                self.cell(NCHF_PROBLEM_TABLE, 2, string_index(cause[:64]), counter64(count))
        signals = sample.by("chf_signals_total", "outcome", protocol="nchf")
        self.scalar(NCHF_NOTIFY_SENT, counter64(signals.get("delivered", 0.0)))
        self.scalar(NCHF_NOTIFY_FAILED, counter64(signals.get("failed", 0.0)))
        self.scalar(NCHF_NOTIFY_DROPPED, counter64(signals.get("dropped", 0.0)))

    # -- chfStore ------------------------------------------------------------------------------------------------------
    def _store(self, sample: Sample, monitor: Monitor) -> None:
        self.scalar((*STORE, 1), gauge32(sample.total("chf_store_used_bytes") // 1024))
        self.scalar((*STORE, 2), gauge32(sample.total("chf_store_map_size_bytes") // 1024))
        self.scalar((*STORE, 3), gauge32(monitor.store_fill_percent(sample)))
        self.scalar((*STORE, 4), counter64(sample.total("chf_store_commit_duration_seconds_count")))
        self.scalar((*STORE, 5), counter64(sample.total("chf_store_commit_duration_seconds_sum") * 1e6))
        self.scalar((*STORE, 6), gauge32(monitor.commit_latency_us()))
        self.scalar((*STORE, 7), gauge32(sample.total("chf_store_write_queue_operations")))
        self.scalar((*STORE, 8), gauge32(self.store_fill_threshold))

    # -- chfExport -----------------------------------------------------------------------------------------------------
    def _export(self, sample: Sample, monitor: Monitor) -> None:
        backlog = sample.by("chf_export_backlog_events", "sink")
        delivered = sample.by("chf_export_delivered_events_total", "sink")
        failures = sample.by("chf_export_failures_total", "sink")
        for sink in sorted(set(backlog) | set(delivered)):
            idx = string_index(sink[:32])
            self.cell(EXPORT_TABLE, 2, idx, gauge32(backlog.get(sink, 0.0)))
            self.cell(EXPORT_TABLE, 3, idx, gauge32(self.export_backlog_limit))
            self.cell(EXPORT_TABLE, 4, idx, counter64(delivered.get(sink, 0.0)))
            self.cell(EXPORT_TABLE, 5, idx, counter64(failures.get(sink, 0.0)))
            self.cell(EXPORT_TABLE, 6, idx, (ax.OCTET_STRING, date_and_time(monitor.last_delivery.get(sink, 0.0))))

    # -- chfWorkers ----------------------------------------------------------------------------------------------------
    def _workers(self, sample: Sample, monitor: Monitor) -> None:
        up = sample.by("chf_frontend_worker_up", "worker")
        exits = sample.by("chf_frontend_worker_exits_total", "worker")
        self.scalar(WORKERS_CONFIGURED, gauge32(self.workers_configured))
        self.scalar(WORKERS_UP, gauge32(sum(1 for v in up.values() if v > 0)))
        for worker in sorted(set(up) | set(exits), key=int):
            idx = (int(worker),)
            self.cell(WORKER_TABLE, 2, idx, (ax.INTEGER, 1 if up.get(worker, 0.0) > 0 else 2))
            self.cell(WORKER_TABLE, 3, idx, (ax.COUNTER32, int(exits.get(worker, 0.0))))

    # -- chfAlarms -----------------------------------------------------------------------------------------------------
    def _alarms(self, monitor: Monitor) -> None:
        self.scalar(ALARMS_ACTIVE, gauge32(len(monitor.alarms)))
        for alarm in monitor.alarms.values():
            for column, value in alarm_columns(alarm).items():
                self.cell(ALARM_TABLE, column, (alarm.index,), value)


def alarm_columns(alarm: Alarm) -> dict[int, Value]:
    return {
        ALARM_TYPE: (ax.INTEGER, alarm.type),
        ALARM_RESOURCE: text(alarm.resource),
        ALARM_RAISED: (ax.OCTET_STRING, date_and_time(alarm.raised)),
        ALARM_TEXT: text(alarm.text),
    }


def notify_varbinds(root: Oid, number: int, alarm: Alarm) -> list[ax.VarBind]:
    """snmpTrapOID.0 = chfNotifications.number, then chfAlarmType, chfAlarmResource, chfAlarmText of the alarm."""
    varbinds = [ax.VarBind(ax.OBJECT_IDENTIFIER, SNMP_TRAP_OID, (*root, *NOTIFICATIONS, number))]
    columns = alarm_columns(alarm)
    for column in (ALARM_TYPE, ALARM_RESOURCE, ALARM_TEXT):
        type_, value = columns[column]
        varbinds.append(ax.VarBind(type_, (*root, *ALARM_TABLE, 1, column, alarm.index), value))
    return varbinds


__all__ = ["ALARM_NAMES", "DEFAULT_ARC", "MibView", "ViewBuilder", "answer", "notify_varbinds"]
