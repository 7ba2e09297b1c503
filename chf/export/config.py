"""The [export] section of conf/chf.toml: exporter pacing and one sub-table per sink ([export.files],
[export.nats]), as strict Structs. A sink runs when its table is present and not `enabled = false`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from chf.core.validation import NonEmptyStr, expected
from chf.runtime.config import read_section


class FilesSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[export.files]: JSON Lines files in `directory` (default: export/ in [chf] data_dir)."""

    enabled: bool = True
    directory: Annotated[str, Meta(min_length=1, extra=expected("a path"))] | None = None
    prefix: NonEmptyStr = "chf-events"
    max_bytes: Annotated[int, Meta(ge=1)] = 64 << 20
    max_age: Annotated[float, Meta(ge=0.01)] = 300.0  # seconds


class NatsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[export.nats]: NATS JetStream."""

    enabled: bool = True
    servers: Annotated[
        list[NonEmptyStr], Meta(min_length=1, extra=expected("a list of URLs such as nats://127.0.0.1:4222"))
    ] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    stream: NonEmptyStr = "CHF_EVENTS"
    subject: NonEmptyStr = "chf.events"
    ack_timeout: Annotated[float, Meta(ge=0.01)] = 5.0  # seconds


class ExportSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    batch: Annotated[int, Meta(ge=1)] = 500  # events per delivery
    poll_interval: Annotated[float, Meta(ge=0.001)] = 0.2  # seconds between looks at the spool when up to date
    backlog_limit: Annotated[int, Meta(ge=1)] = 10_000_000  # events behind before it is reported
    files: FilesSection | None = None
    nats: NatsSection | None = None


@dataclass(slots=True)
class ExportConfig:
    batch: int = 500
    poll_interval: float = 0.2
    backlog_limit: int = 10_000_000
    files: dict[str, Any] | None = None  # FileSink keyword arguments, when [export.files] is enabled
    nats: dict[str, Any] | None = None  # NatsSink keyword arguments, when [export.nats] is enabled


def parse_export_config(section: dict[str, Any], data_dir: str, source: str = "conf/chf.toml") -> ExportConfig:
    """Validate [export]; every error names the file, the table and the field."""
    s = read_section(ExportSection, section, source, "export")
    cfg = ExportConfig(batch=s.batch, poll_interval=s.poll_interval, backlog_limit=s.backlog_limit)
    if s.files is not None and s.files.enabled:
        cfg.files = {
            "directory": s.files.directory or os.path.join(data_dir, "export"),
            "prefix": s.files.prefix,
            "max_bytes": s.files.max_bytes,
            "max_age": s.files.max_age,
        }
    if s.nats is not None and s.nats.enabled:
        cfg.nats = {
            "servers": s.nats.servers,
            "stream": s.nats.stream,
            "subject": s.nats.subject,
            "ack_timeout": s.nats.ack_timeout,
        }
    return cfg
