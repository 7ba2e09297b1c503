"""The process configuration: one TOML file, `conf/chf.toml` by default (DESIGN.md section 9).

Core sections ([chf], [store], [engine]) are validated here; each front-end or service validates its own
section ([gy], [nchf], [api], [export]) from `Config.section(name)`. Every error names the file, the section
and the field. Relative paths are relative to the working directory the process was started in.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONFIG = "conf/chf.toml"


class ConfigError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(slots=True)
class StoreConfig:
    path: str = "var/chf.lmdb"
    durability: str = "fsync"  # fsync | os
    map_size: int = 32 << 30
    max_batch: int = 4096
    max_queue: int = 65536
    sync_interval: float = 1.0
    writer: str = "inline"  # inline | thread


@dataclass(slots=True)
class EngineSettings:
    idempotency_window: int = 3600
    reap_factor: int = 2
    answers_kept: int = 4


@dataclass(slots=True)
class Config:
    source: str = "<defaults>"
    data_dir: str = "var"
    catalogue: str = "conf/catalogue.toml"
    log_level: str = "info"
    log_format: str = "kv"
    store: StoreConfig = field(default_factory=StoreConfig)
    engine: EngineSettings = field(default_factory=EngineSettings)
    # [server] frontend_workers: 0 runs everything in one process; N > 0 runs the Gy and Nchf front-ends in N
    # worker processes (SO_REUSEPORT) talking to the core in this process over a Unix socket (chf.corelink).
    frontend_workers: int = 0
    # Not read from the file: which part of the process layout this process is. "all" (single process),
    # "core" (store and services; front-ends in workers) or "worker" (front-ends only). Component factories
    # use it to build only their part.
    role: str = "all"
    raw: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        value = self.raw.get(name, {})
        return value if isinstance(value, dict) else {}


class _Reader:
    def __init__(self, source: str, section: str, data: Any, errors: list[str], allowed: set[str]) -> None:
        self.source = source
        self.section = section
        self.errors = errors
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        if data is not None and not isinstance(data, dict):
            errors.append(f"{source}: [{section}]: must be a table")
        for key in self.data:
            if key not in allowed:
                errors.append(f"{source}: [{section}] {key}: unknown setting (known: {', '.join(sorted(allowed))})")

    def _err(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.source}: [{self.section}] {key}: {msg}")

    def str(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value:
            self._err(key, f"must be a non-empty string, got {value!r}")
            return default
        if choices is not None and value not in choices:
            self._err(key, f"must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def int(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self._err(key, f"must be an integer >= {minimum}, got {value!r}")
            return default
        return value

    def float(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            self._err(key, f"must be a number >= {minimum}, got {value!r}")
            return default
        return float(value)


def parse_config(text: str, source: str = DEFAULT_CONFIG) -> Config:
    errors: list[str] = []
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from exc
    cfg = Config(source=source, raw=raw)
    chf = _Reader(source, "chf", raw.get("chf"), errors, {"data_dir", "catalogue", "log_level", "log_format"})
    cfg.data_dir = chf.str("data_dir", cfg.data_dir)
    cfg.catalogue = chf.str("catalogue", cfg.catalogue)
    cfg.log_level = chf.str("log_level", cfg.log_level, ("debug", "info", "warning", "error"))
    cfg.log_format = chf.str("log_format", cfg.log_format, ("kv", "json"))
    st = _Reader(
        source,
        "store",
        raw.get("store"),
        errors,
        {"path", "durability", "map_size_mb", "max_batch", "max_queue", "sync_interval", "writer"},
    )
    cfg.store.path = st.str("path", os.path.join(cfg.data_dir, "chf.lmdb"))
    cfg.store.durability = st.str("durability", "fsync", ("fsync", "os"))
    cfg.store.map_size = st.int("map_size_mb", cfg.store.map_size >> 20, 16) << 20
    cfg.store.max_batch = st.int("max_batch", cfg.store.max_batch, 1)
    cfg.store.max_queue = st.int("max_queue", cfg.store.max_queue, 1)
    cfg.store.sync_interval = st.float("sync_interval", cfg.store.sync_interval, 0.01)
    cfg.store.writer = st.str("writer", cfg.store.writer, ("thread", "inline"))
    en = _Reader(source, "engine", raw.get("engine"), errors, {"idempotency_window", "reap_factor", "answers_kept"})
    cfg.engine.idempotency_window = en.int("idempotency_window", cfg.engine.idempotency_window, 1)
    cfg.engine.reap_factor = en.int("reap_factor", cfg.engine.reap_factor, 1)
    cfg.engine.answers_kept = en.int("answers_kept", cfg.engine.answers_kept, 1)
    sv = _Reader(source, "server", raw.get("server"), errors, {"frontend_workers"})
    cfg.frontend_workers = sv.int("frontend_workers", cfg.frontend_workers, 0)
    if errors:
        raise ConfigError(errors)
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
