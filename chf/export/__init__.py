"""The export stream: rated and audit events leave the spool for billing, finance and analytics.

One module per concern: the record format (`records`), the exporter loop and its durable cursor (`exporter`), and
one module per sink (`files`, `nats`). The names below are re-exported for callers of `chf.export`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from chf.export.exporter import Exporter, Sink, backlogs
from chf.export.files import FileSink
from chf.export.nats import NatsSink
from chf.export.records import encode_record, iso_time, to_record

__all__ = [
    "ExportConfig",
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
@dataclass(slots=True)
class ExportConfig:
    batch: int = 500
    poll_interval: float = 0.2
    backlog_limit: int = 10_000_000
    files: dict[str, Any] | None = None  # [export.files]
    nats: dict[str, Any] | None = None  # [export.nats]
    errors: list[str] = field(default_factory=list)


def parse_export_config(section: dict[str, Any], data_dir: str, source: str = "conf/chf.toml") -> ExportConfig:
    from chf.runtime.config import ConfigError

    errors: list[str] = []
    cfg = ExportConfig()

    def number(table: dict[str, Any], where: str, key: str, default: Any, minimum: float, kind: type) -> Any:
        value = table.get(key, default)
        ok = not isinstance(value, bool) and isinstance(value, int | float if kind is float else int)
        if not ok or value < minimum:
            what = "a number" if kind is float else "an integer"
            errors.append(f"{source}: [{where}] {key}: must be {what} >= {minimum}, got {value!r}")
            return default
        return kind(value)

    def unknown(table: dict[str, Any], where: str, known: set[str]) -> None:
        for key in table:
            if key not in known:
                errors.append(f"{source}: [{where}] {key}: unknown setting (known: {', '.join(sorted(known))})")

    unknown(section, "export", {"batch", "poll_interval", "backlog_limit", "files", "nats"})
    cfg.batch = number(section, "export", "batch", cfg.batch, 1, int)
    cfg.poll_interval = number(section, "export", "poll_interval", cfg.poll_interval, 0.001, float)
    cfg.backlog_limit = number(section, "export", "backlog_limit", cfg.backlog_limit, 1, int)
    files = section.get("files")
    if isinstance(files, dict) and files.get("enabled", True):
        unknown(files, "export.files", {"enabled", "directory", "prefix", "max_bytes", "max_age"})
        directory = files.get("directory", os.path.join(data_dir, "export"))
        if not isinstance(directory, str) or not directory:
            errors.append(f"{source}: [export.files] directory: must be a path, got {directory!r}")
        cfg.files = {
            "directory": directory,
            "prefix": files.get("prefix", "chf-events"),
            "max_bytes": number(files, "export.files", "max_bytes", 64 << 20, 1, int),
            "max_age": number(files, "export.files", "max_age", 300.0, 0.01, float),
        }
    nats_table = section.get("nats")
    if isinstance(nats_table, dict) and nats_table.get("enabled", True):
        unknown(nats_table, "export.nats", {"enabled", "servers", "stream", "subject", "ack_timeout"})
        servers = nats_table.get("servers", ["nats://127.0.0.1:4222"])
        if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
            errors.append(f"{source}: [export.nats] servers: must be a list of URLs such as nats://127.0.0.1:4222")
        cfg.nats = {
            "servers": servers,
            "stream": nats_table.get("stream", "CHF_EVENTS"),
            "subject": nats_table.get("subject", "chf.events"),
            "ack_timeout": number(nats_table, "export.nats", "ack_timeout", 5.0, 0.01, float),
        }
    if errors:
        raise ConfigError(errors)
    return cfg


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
    return [
        Exporter(service.store, sink, batch=cfg.batch, poll_interval=cfg.poll_interval, backlog_limit=cfg.backlog_limit)
        for sink in sinks
    ]
