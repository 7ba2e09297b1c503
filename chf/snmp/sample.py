"""One look at the process: the metric families of the registry (with the front-end workers' samples summed in),
indexed for the MIB and the alarms. Taking one costs a registry collection (a fraction of a millisecond); the
agent takes one per second at most (chf/snmp/agent.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chf.runtime import metrics

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class PeerSample:
    identity: str
    realm: str = ""
    address: str = ""
    port: int = 0
    connections: int = 0
    suspect: int = 0
    open_since: float = 0.0
    watchdog_failures: int = 0


@dataclass(slots=True)
class Sample:
    time: float
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    peers: dict[str, PeerSample] = field(default_factory=dict)

    def rows(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self.samples.get(name, [])

    def total(self, name: str, **match: str) -> float:
        """The sum of sample `name` over the series whose labels include `match`."""
        return sum(v for labels, v in self.rows(name) if all(labels.get(k) == m for k, m in match.items()))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Sample `name` summed by the value of `label`, over the series whose labels include `match`."""
        out: dict[str, float] = {}
        for labels, v in self.rows(name):
            if all(labels.get(k) == m for k, m in match.items()) and label in labels:
                out[labels[label]] = out.get(labels[label], 0.0) + v
        return out


def take_sample(families: Iterable[Any] | None = None, now: float | None = None) -> Sample:
    """A Sample of `families` (default: what /metrics shows, workers included)."""
    if families is None:
        families = metrics.exposition().collect()
    sample = Sample(time.time() if now is None else now)
    for family in families:
        for s in family.samples:
            if not s.name.endswith("_created"):
                sample.samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    _peers(sample)
    return sample


def _peers(sample: Sample) -> None:
    peers = sample.peers

    def peer(name: str) -> PeerSample:
        p = peers.get(name)
        if p is None:
            p = peers[name] = PeerSample(name)
        return p

    for labels, _ in sample.rows("chf_diameter_peer_info"):
        p = peer(labels["peer"])
        p.realm = labels.get("realm", "")
        p.address = labels.get("address", "")
        p.port = int(labels.get("port") or 0)
    for attr, name in (
        ("connections", "chf_diameter_peer_connections"),
        ("suspect", "chf_diameter_peer_suspect"),
        ("watchdog_failures", "chf_diameter_peer_watchdog_failures_total"),
    ):
        for identity, value in sample.by(name, "peer").items():
            setattr(peer(identity), attr, int(value))
    for identity, value in sample.by("chf_diameter_peer_open_since_seconds", "peer").items():
        peer(identity).open_since = value
