"""The process configuration: one TOML file, `conf/chf.toml` by default (docs/architecture.md).

Core sections ([chf], [store], [engine], [server]) are read here; each front-end or service reads its own
section ([gy], [nchf], [api], [export]) from `Config.section(name)` with `read_section`. A section is a strict
`msgspec.Struct` decoded by chf.core.validation, so every error names the file, the section and the field
("conf/chf.toml: [store] max_batch: must be an integer >= 1, got 0"), all of them at once. Relative paths are
relative to the working directory the process was started in.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from chf.core.engine import EngineConfig
from chf.core.validation import CONFIG, Invalid, NonEmptyStr, config_errors, decode, expected

DEFAULT_CONFIG = "conf/chf.toml"

T = TypeVar("T")


class ConfigError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def read_section(type_: type[T], data: Any, source: str, name: str, error: type[ConfigError] = ConfigError) -> T:
    """Section `name` of `source` as a `type_`, or `error` listing every problem as "file: [name] key: message"."""
    try:
        return decode(type_, data, CONFIG)
    except Invalid as exc:
        raise error(config_errors(exc.problems, source, name)) from None


class ChfSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[chf]"""

    data_dir: NonEmptyStr = "var"
    catalogue: NonEmptyStr = "conf/catalogue.toml"  # a file, or a directory of its versions (chf.core.versions)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["kv", "json"] = "kv"


Secret = Annotated[str, Meta(min_length=1, extra=expected("a non-empty string", secret=True))]


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[store]: the backend. "lmdb" (the default): one LMDB file and its group-commit writer (store/lmdbstore.py);
    "redis-cluster": a Redis Cluster shared by several `chf serve` nodes (store/redisstore.py)."""

    backend: Literal["lmdb", "redis-cluster"] = "lmdb"
    # -- lmdb --
    path: NonEmptyStr = "var/chf.lmdb"  # when not set in the file: chf.lmdb in [chf] data_dir
    durability: Literal["fsync", "os"] = "fsync"
    map_size_mb: Annotated[int, Meta(ge=16)] = 32 << 10
    max_batch: Annotated[int, Meta(ge=1)] = 4096
    max_queue: Annotated[int, Meta(ge=1)] = 65536
    sync_interval: Annotated[float, Meta(ge=0.01)] = 1.0
    writer: Literal["thread", "inline"] = "inline"
    # -- redis-cluster --
    nodes: list[NonEmptyStr] = []  # "host:port" of some cluster nodes (the others are discovered)
    namespace: NonEmptyStr = "chf"  # key prefix: several stores may share a cluster
    partitions: Annotated[int, Meta(ge=1, le=16384)] = 256  # fixed when the store is created
    username: NonEmptyStr | None = None  # Redis ACL user (AUTH username password)
    password: Secret | None = None
    tls: bool = False
    tls_ca: NonEmptyStr | None = None
    tls_cert: NonEmptyStr | None = None
    tls_key: NonEmptyStr | None = None
    min_replicas_acked: Annotated[int, Meta(ge=0)] = 1  # WAIT for this many replicas before answering
    wait_timeout: Annotated[float, Meta(gt=0)] = 1.0  # seconds WAIT waits; fewer replicas: "too busy"
    workers: Annotated[int, Meta(ge=1, le=256)] = 4  # threads running operations in batches (their round trips overlap)
    op_timeout: Annotated[float, Meta(gt=0)] = 5.0  # seconds an operation may spend retrying before "too busy"

    @property
    def map_size(self) -> int:
        """Bytes."""
        return self.map_size_mb << 20


class EngineSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[engine]"""

    idempotency_window: Annotated[int, Meta(ge=1)] = 3600
    reap_factor: Annotated[int, Meta(ge=1)] = 2
    answers_kept: Annotated[int, Meta(ge=1)] = 4
    refund_window: Annotated[int, Meta(ge=0, le=366 * 86_400)] = 7 * 86_400
    # Days after a line's termination before its identities may go to a new line (README, "Currencies and reused
    # numbers").
    msisdn_quarantine_days: Annotated[int, Meta(ge=0, le=36500)] = 90
    imsi_quarantine_days: Annotated[int, Meta(ge=0, le=36500)] = 90
    iccid_quarantine_days: Annotated[int, Meta(ge=0, le=36500)] = 90
    # The most one request may report used, summed over its rating groups and reports; more is refused whole
    # (Gy 5004 with Failed-AVP, Nchf 400 naming the JSON pointer) and changes nothing.
    max_report_octets: Annotated[int, Meta(ge=1, le=(1 << 62) - 1)] = 1 << 40
    max_report_seconds: Annotated[int, Meta(ge=1, le=(1 << 62) - 1)] = 7 * 86_400
    max_report_events: Annotated[int, Meta(ge=1, le=(1 << 62) - 1)] = 1_000_000

    def engine_config(self) -> EngineConfig:
        """The engine's settings, as `chf serve` and the `chf` commands both run it."""
        return EngineConfig(
            idempotency_window=self.idempotency_window,
            reap_factor=self.reap_factor,
            answers_kept=self.answers_kept,
            refund_window=self.refund_window,
            identity_quarantine={
                "msisdn": self.msisdn_quarantine_days * 86400,
                "imsi": self.imsi_quarantine_days * 86400,
                "iccid": self.iccid_quarantine_days * 86400,
            },
            max_report={
                "bytes": self.max_report_octets,
                "seconds": self.max_report_seconds,
                "events": self.max_report_events,
            },
        )


class ServerSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[server] frontend_workers: 0 runs everything in one process; N > 0 runs the Gy and Nchf front-ends in N
    worker processes (SO_REUSEPORT) talking to the core in this process over a Unix socket (chf.runtime.corelink)."""

    frontend_workers: Annotated[int, Meta(ge=0)] = 0


@dataclass(slots=True)
class Config:
    source: str = "<defaults>"
    chf: ChfSection = field(default_factory=ChfSection)
    store: StoreConfig = field(default_factory=StoreConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    server: ServerSection = field(default_factory=ServerSection)
    # Not read from the file: which part of the process layout this process is. "all" (single process),
    # "core" (store and services; front-ends in workers) or "worker" (front-ends only). Component factories
    # use it to build only their part.
    role: str = "all"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> str:
        return self.chf.data_dir

    @property
    def catalogue(self) -> str:
        return self.chf.catalogue

    @property
    def log_level(self) -> str:
        return self.chf.log_level

    @property
    def log_format(self) -> str:
        return self.chf.log_format

    @property
    def frontend_workers(self) -> int:
        return self.server.frontend_workers

    def section(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name, {})
        return value if isinstance(value, dict) else {}


def parse_config(text: str, source: str = DEFAULT_CONFIG) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from exc
    errors: list[str] = []

    def read(type_: type[T], name: str) -> T:  # every core section's errors before one ConfigError
        try:
            return read_section(type_, raw.get(name, {}), source, name)
        except ConfigError as exc:
            errors.extend(exc.errors)
            return type_()

    cfg = Config(
        source=source,
        chf=read(ChfSection, "chf"),
        store=read(StoreConfig, "store"),
        engine=read(EngineSettings, "engine"),
        server=read(ServerSection, "server"),
        raw=raw,
    )
    if cfg.store.backend == "redis-cluster" and not cfg.store.nodes:
        errors.append(f'{source}: [store] nodes: must list at least one "host:port" with backend = "redis-cluster"')
    for i, node in enumerate(cfg.store.nodes):
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            errors.append(f"{source}: [store] nodes[{i}]: must be host:port, got {node!r}")
    if errors:
        raise ConfigError(errors)
    if "path" not in (raw.get("store") or {}):
        cfg.store.path = os.path.join(cfg.data_dir, "chf.lmdb")
    return cfg


def load_config(path: str | None = None) -> Config:
    """Load `path`, or conf/chf.toml when it exists, or the built-in defaults."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return Config()
        path = DEFAULT_CONFIG
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    return parse_config(text, path)
