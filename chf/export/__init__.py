"""The export stream: rated and audit events leave the spool for billing, finance and analytics.

One module per concern: the record format (`records`), the exporter loop and its durable cursor (`exporter`), one
module per sink (`files`, `nats`, and `cdr` with its record encoder `chfrecord`) and the [export] section
(`config`). The names below are re-exported for callers of `chf.export`.
"""

from __future__ import annotations

from typing import Any

from chf.export.cdr import CdrSink
from chf.export.config import parse_export_config
from chf.export.exporter import Exporter, Sink, backlogs
from chf.export.files import FileSink
from chf.export.nats import NatsSink
from chf.export.records import encode_record, iso_time, to_record
from chf.runtime.config import ConfigError

__all__ = [
    "CdrSink",
    "Exporter",
    "FileSink",
    "NatsSink",
    "Sink",
    "backlogs",
    "encode_record",
    "export_components",
    "iso_time",
    "parse_export_config",
    "to_record",
]


# ------------------------------------------------------------------------------------------------------------------
# Configuration and `chf serve` wiring
# ------------------------------------------------------------------------------------------------------------------
def export_components(config: Any, service: Any) -> list[Any]:
    """`chf serve` factory: one exporter per sink configured under `[export]`."""
    if "export" not in config.raw:
        return []
    cfg = parse_export_config(config.section("export"), config.data_dir, config.source)
    sinks: list[Sink] = []
    if cfg.files is not None:
        sinks.append(FileSink(**cfg.files))
    if cfg.nats is not None:
        sinks.append(NatsSink(**cfg.nats))
    if cfg.cdr is not None:
        if getattr(service.store, "event_feed", None) is not None:
            # The CDR files number CDRs by one spool sequence (their high-water mark de-duplicates after a
            # crash): a Redis store has one sequence per partition. Not supported there yet.
            raise ConfigError(
                [
                    f'{config.source}: [export.cdr]: needs [store] backend = "lmdb" (one event sequence); use '
                    "[export.files] or [export.nats] with a redis-cluster store"
                ]
            )
        kwargs = dict(cfg.cdr)
        kwargs["node_id"] = kwargs["node_id"] or "chf" + service.store.store_id
        sinks.append(CdrSink(**kwargs))
    return [
        Exporter(service.store, sink, batch=cfg.batch, poll_interval=cfg.poll_interval, backlog_limit=cfg.backlog_limit)
        for sink in sinks
    ]
