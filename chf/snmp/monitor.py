"""Alarms and the state the MIB keeps between samples, without I/O: fed one Sample at a time (`update`), it says
which notifications to send.

An alarm is raised once when its condition starts and cleared once when it ends (one notification each, the
clear carrying the raise's alarm index); while raised it is a row of chfAlarmTable:

    peerDown               a Diameter peer that was up has no open connection; cleared when it is up again
    overload               requests answered "too busy" (Diameter 3004, HTTP 503) on an interface; cleared when
                           none was for `overload_hold` seconds
    storeFill              the store's map is at least `store_fill_threshold` percent full; cleared below it
    exportBacklog          a sink is more than the export backlog_limit events behind; cleared at or below it
    workerExited           a front-end worker exited; cleared when it is up again
    catalogueReloadFailed  the last catalogue reload (SIGHUP, API) failed; cleared by a successful one
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from chf.snmp.sample import Sample

PEER_DOWN = 1
OVERLOAD = 2
STORE_FILL = 3
EXPORT_BACKLOG = 4
WORKER_EXITED = 5
CATALOGUE_RELOAD_FAILED = 6
ALARM_NAMES = {
    PEER_DOWN: "peerDown",
    OVERLOAD: "overload",
    STORE_FILL: "storeFill",
    EXPORT_BACKLOG: "exportBacklog",
    WORKER_EXITED: "workerExited",
    CATALOGUE_RELOAD_FAILED: "catalogueReloadFailed",
}
COMMIT_WINDOW = 10.0  # seconds over which chfStoreCommitLatencyAvg is averaged


def raise_notification(alarm_type: int) -> int:
    """The sub-identifier under chfNotifications of the notification raising `alarm_type` (chfPeerDown = 1...)."""
    return 2 * alarm_type - 1


def clear_notification(alarm_type: int) -> int:
    return 2 * alarm_type


@dataclass(slots=True)
class Alarm:
    index: int
    type: int
    resource: str
    raised: float  # UNIX time
    text: str


@dataclass(slots=True)
class Notification:
    """To send: notification `number` under chfNotifications, about `alarm` (raised, or just cleared)."""

    number: int
    alarm: Alarm


@dataclass(slots=True)
class Thresholds:
    store_fill_percent: int = 80
    export_backlog_limit: int = 10_000_000
    overload_hold: float = 10.0


class Monitor:
    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.sample: Sample | None = None
        self.alarms: dict[tuple[int, str], Alarm] = {}
        self._next_alarm = 1
        self.peer_index: dict[str, int] = {}  # identity -> chfDiameterPeerIndex, stable for the process's life
        self.last_delivery: dict[str, float] = {}  # sink -> when its delivered count last grew
        self._delivered: dict[str, float] = {}
        self._overload: dict[str, tuple[float, float]] = {}  # interface -> (count, last time it grew)
        self._worker_exits: dict[str, float] = {}
        self._catalogue_failures = 0.0
        self._commits: deque[tuple[float, float, float]] = deque()  # (time, commits, seconds)

    # -- alarms -------------------------------------------------------------------------------------------------------
    def _raise(self, out: list[Notification], alarm_type: int, resource: str, text: str, now: float) -> None:
        key = (alarm_type, resource)
        if key in self.alarms:
            return
        alarm = self.alarms[key] = Alarm(self._next_alarm, alarm_type, resource, now, text)
        self._next_alarm += 1
        out.append(Notification(raise_notification(alarm_type), alarm))

    def _clear(self, out: list[Notification], alarm_type: int, resource: str, text: str) -> None:
        alarm = self.alarms.pop((alarm_type, resource), None)
        if alarm is not None:
            cleared = Alarm(alarm.index, alarm_type, resource, alarm.raised, text)
            out.append(Notification(clear_notification(alarm_type), cleared))

    def _set(self, out: list[Notification], alarm_type: int, resource: str, on: bool, text: str, now: float) -> None:
        if on:
            self._raise(out, alarm_type, resource, text, now)
        else:
            self._clear(out, alarm_type, resource, text)

    # -- one sample ---------------------------------------------------------------------------------------------------
    def update(self, sample: Sample) -> list[Notification]:
        out: list[Notification] = []
        self._peers(sample, out)
        self._overloads(sample, out)
        self._store(sample, out)
        self._export(sample, out)
        self._workers(sample, out)
        self._catalogue(sample, out)
        self.sample = sample
        return out

    def _peers(self, sample: Sample, out: list[Notification]) -> None:
        previous = self.sample.peers if self.sample is not None else {}
        for identity, peer in sample.peers.items():
            if identity not in self.peer_index:
                self.peer_index[identity] = len(self.peer_index) + 1
            was = previous.get(identity)
            if peer.connections > 0:
                self._clear(out, PEER_DOWN, identity, f"Diameter peer {identity} is up ({peer.address})")
            elif was is not None and was.connections > 0:
                text = f"Diameter peer {identity} is down (no open connection)"
                self._raise(out, PEER_DOWN, identity, text, sample.time)

    def _overloads(self, sample: Sample, out: list[Notification]) -> None:
        hold = self.thresholds.overload_hold
        for interface, count in sample.by("chf_overload_rejections_total", "interface").items():
            # A series that appears after the first sample starts from 0; those there at start are the baseline.
            baseline = count if self.sample is None else 0.0
            last_count, last_grew = self._overload.get(interface, (baseline, -math.inf))
            if count > last_count:
                last_grew = sample.time
                text = f"{interface}: requests answered too busy (Diameter 3004 / HTTP 503)"
                self._raise(out, OVERLOAD, interface, text, sample.time)
            elif sample.time - last_grew >= hold:
                self._clear(out, OVERLOAD, interface, f"{interface}: no request answered too busy for {hold:g} s")
            self._overload[interface] = (count, last_grew)

    def store_fill_percent(self, sample: Sample | None = None) -> int:
        sample = sample or self.sample
        if sample is None:
            return 0
        map_size = sample.total("chf_store_map_size_bytes")
        return int(100 * sample.total("chf_store_used_bytes") // map_size) if map_size > 0 else 0

    def _store(self, sample: Sample, out: list[Notification]) -> None:
        commits = sample.total("chf_store_commit_duration_seconds_count")
        self._commits.append((sample.time, commits, sample.total("chf_store_commit_duration_seconds_sum")))
        while len(self._commits) > 2 and sample.time - self._commits[1][0] >= COMMIT_WINDOW:
            self._commits.popleft()
        if not sample.rows("chf_store_map_size_bytes"):
            return
        fill = self.store_fill_percent(sample)
        threshold = self.thresholds.store_fill_percent
        on = fill >= threshold
        text = f"store map {fill} % full (threshold {threshold} %)"
        self._set(out, STORE_FILL, "store", on, text, sample.time)

    def commit_latency_us(self) -> int:
        """Mean commit time over the last COMMIT_WINDOW seconds, in microseconds (0 without commits)."""
        if len(self._commits) < 2:
            return 0
        (_, c0, s0), (_, c1, s1) = self._commits[0], self._commits[-1]
        return int((s1 - s0) / (c1 - c0) * 1e6) if c1 > c0 else 0

    def _export(self, sample: Sample, out: list[Notification]) -> None:
        limit = self.thresholds.export_backlog_limit
        for sink, delivered in sample.by("chf_export_delivered_events_total", "sink").items():
            if delivered > self._delivered.get(sink, 0.0):
                self.last_delivery[sink] = sample.time
            self._delivered[sink] = delivered
        for sink, backlog in sample.by("chf_export_backlog_events", "sink").items():
            text = f"export sink {sink}: {int(backlog)} events behind (limit {limit})"
            self._set(out, EXPORT_BACKLOG, sink, backlog > limit, text, sample.time)

    def _workers(self, sample: Sample, out: list[Notification]) -> None:
        up = sample.by("chf_frontend_worker_up", "worker")
        for worker, exits in sample.by("chf_frontend_worker_exits_total", "worker").items():
            if exits > self._worker_exits.get(worker, 0.0):
                self._raise(out, WORKER_EXITED, worker, f"front-end worker {worker} exited", sample.time)
            self._worker_exits[worker] = exits
        for worker, value in up.items():
            if value > 0:
                self._clear(out, WORKER_EXITED, worker, f"front-end worker {worker} is up again")

    def _catalogue(self, sample: Sample, out: list[Notification]) -> None:
        failures = sample.total("chf_catalogue_reloads_total", result="failed")
        failed_now = sample.total("chf_catalogue_reload_failed") > 0
        if self.sample is None:  # failures before the agent started are not its to report
            self._catalogue_failures = failures
        if failures > self._catalogue_failures:
            text = "catalogue reload failed: the running catalogue is kept (log: event=catalogue_reload_rejected)"
            self._raise(out, CATALOGUE_RELOAD_FAILED, "catalogue", text, sample.time)
        self._catalogue_failures = failures
        if not failed_now:
            self._clear(out, CATALOGUE_RELOAD_FAILED, "catalogue", "catalogue reloaded")
