"""The [export] section of conf/chf.toml: exporter pacing and one sub-table per sink ([export.files],
[export.nats], [export.cdr]), as strict Structs. A sink runs when its table is present and not `enabled = false`."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from chf.core.validation import NonEmptyStr, expected
from chf.runtime.config import ConfigError, read_section


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


NodeId = Annotated[str, Meta(pattern="^[A-Za-z0-9-]{1,32}$", extra=expected("1 to 32 letters, digits or '-'"))]
Uuid = Annotated[
    str,
    Meta(
        pattern="^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        extra=expected("a UUID such as 3fa85f64-5717-4562-b3fc-2c963f66afa6"),
    ),
]


class CdrSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[export.cdr]: 3GPP CHF-CDR files (TS 32.298 CHFRecord in TS 32.297 files) in `directory` (default: cdr/ in
    [chf] data_dir). See chf/export/cdr.py."""

    enabled: bool = True
    directory: Annotated[str, Meta(min_length=1, extra=expected("a path"))] | None = None
    # The <node ID> of the file names; default "chf" + the store id, unique per store.
    node_id: NodeId | None = None
    # recordingNetworkFunctionID of every CDR: this CHF's NF instance id (a UUID, as registered in the NRF);
    # default: a random UUID made on first start and kept in the directory's state file.
    nf_instance_id: Uuid | None = None
    node_address: NonEmptyStr = "127.0.0.1"  # the file header's "IP address of node that generated file"
    max_bytes: Annotated[int, Meta(ge=4096, le=0xFFFFFFFF)] = 8 << 20
    max_records: Annotated[int, Meta(ge=1, le=0xFFFFFFFF)] = 100_000
    max_age: Annotated[float, Meta(ge=0.01)] = 300.0  # seconds


class ExportSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    batch: Annotated[int, Meta(ge=1)] = 500  # events per delivery
    poll_interval: Annotated[float, Meta(ge=0.001)] = 0.2  # seconds between looks at the spool when up to date
    backlog_limit: Annotated[int, Meta(ge=1)] = 10_000_000  # events behind before it is reported
    files: FilesSection | None = None
    nats: NatsSection | None = None
    cdr: CdrSection | None = None


@dataclass(slots=True)
class ExportConfig:
    batch: int = 500
    poll_interval: float = 0.2
    backlog_limit: int = 10_000_000
    files: dict[str, Any] | None = None  # FileSink keyword arguments, when [export.files] is enabled
    nats: dict[str, Any] | None = None  # NatsSink keyword arguments, when [export.nats] is enabled
    cdr: dict[str, Any] | None = None  # CdrSink keyword arguments, when [export.cdr] is enabled (node_id may be None)


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
    if s.cdr is not None and s.cdr.enabled:
        try:
            ipaddress.ip_address(s.cdr.node_address)
        except ValueError:
            raise ConfigError(
                [f"{source}: [export.cdr] node_address: must be an IPv4 or IPv6 address, got {s.cdr.node_address!r}"]
            ) from None
        cfg.cdr = {
            "directory": s.cdr.directory or os.path.join(data_dir, "cdr"),
            "node_id": s.cdr.node_id,
            "nf_instance_id": s.cdr.nf_instance_id,
            "node_address": s.cdr.node_address,
            "max_bytes": s.cdr.max_bytes,
            "max_records": s.cdr.max_records,
            "max_age": s.cdr.max_age,
        }
    return cfg
