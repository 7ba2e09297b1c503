"""The Nchf front-end as `chf serve` components: the `[nchf]` section of conf/chf.toml, the server and the notifier.

Which components a process runs (one process, or a core with front-end workers) is decided in tools/serve.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from chf.runtime.config import ConfigError
from chf.runtime.port import ChargingPort
from nchf.app import NchfApp, transport_error
from nchf.auth import BearerAuth
from nchf.http import HttpServer, Limits, server_ssl_context
from nchf.notify import Notifier, NotifySettings

log = logging.getLogger("nchf")

_KEYS = {
    "enabled",
    "listen",
    "port",
    "tls_cert",
    "tls_key",
    "max_concurrent_streams",
    "max_header_bytes",
    "max_body_bytes",
    "max_connections",
    "max_in_flight",
    "request_timeout",
    "idle_timeout",
    "connection_window",
    "stream_reset_burst",
    "stream_reset_rate",
    "control_frame_burst",
    "control_frame_rate",
    "auth_tokens",
    "jwt_key_file",
    "notify_timeout",
    "notify_retries",
    "notify_queue",
}


@dataclass(slots=True)
class NchfSettings:
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = 8000
    tls_cert: str | None = None
    tls_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_in_flight: int = 8192
    auth_tokens: list[str] = field(default_factory=list)
    jwt_key: bytes | None = None
    notify: NotifySettings = field(default_factory=NotifySettings)


def parse_settings(section: dict[str, Any], source: str = "conf/chf.toml") -> NchfSettings:
    """Read and check the [nchf] section; every error names the file, the section and the field."""
    errors: list[str] = []
    s = NchfSettings()

    def err(key: str, msg: str) -> None:
        errors.append(f"{source}: [nchf] {key}: {msg}")

    for key in section:
        if key not in _KEYS:
            err(key, f"unknown setting (known: {', '.join(sorted(_KEYS))})")

    def integer(key: str, default: int, minimum: int, maximum: int = 2**31) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            err(key, f"must be an integer from {minimum} to {maximum}, got {value!r}")
            return default
        return value

    def text(key: str) -> str | None:
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            err(key, f"must be a non-empty string, got {value!r}")
            return None
        return value

    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        err("enabled", f"must be true or false, got {enabled!r}")
    else:
        s.enabled = enabled
    s.listen = text("listen") or s.listen
    s.port = integer("port", s.port, 0, 65535)
    s.tls_cert, s.tls_key = text("tls_cert"), text("tls_key")
    if (s.tls_cert is None) != (s.tls_key is None):
        err("tls_cert", "tls_cert and tls_key go together")
    lim = s.limits
    lim.max_concurrent_streams = integer("max_concurrent_streams", lim.max_concurrent_streams, 1, 65535)
    lim.max_header_bytes = integer("max_header_bytes", lim.max_header_bytes, 1024)
    lim.max_body_bytes = integer("max_body_bytes", lim.max_body_bytes, 1024)
    lim.max_connections = integer("max_connections", lim.max_connections, 1)
    s.max_in_flight = integer("max_in_flight", s.max_in_flight, 1)
    lim.connection_window = integer("connection_window", lim.connection_window, 65535)
    lim.stream_reset_burst = integer("stream_reset_burst", lim.stream_reset_burst, 1)
    lim.control_frame_burst = integer("control_frame_burst", lim.control_frame_burst, 1)
    _positive_numbers(section, lim, ("idle_timeout", "stream_reset_rate", "control_frame_rate"), err)
    request_timeout = section.get("request_timeout", lim.request_timeout)
    if isinstance(request_timeout, bool) or not isinstance(request_timeout, int | float) or request_timeout <= 0:
        err("request_timeout", f"must be a positive number of seconds, got {request_timeout!r}")
    else:
        lim.request_timeout = float(request_timeout)
    tokens = section.get("auth_tokens", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        err("auth_tokens", "must be a list of non-empty strings")
    else:
        s.auth_tokens = tokens
    key_file = text("jwt_key_file")
    if key_file is not None:
        try:
            with open(key_file, "rb") as f:
                s.jwt_key = f.read().strip()
        except OSError as exc:
            err("jwt_key_file", f"cannot read {key_file}: {exc.strerror}")
    timeout = section.get("notify_timeout", s.notify.timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        err("notify_timeout", f"must be a positive number of seconds, got {timeout!r}")
    else:
        s.notify.timeout = float(timeout)
    s.notify.retries = integer("notify_retries", s.notify.retries, 0, 10)
    s.notify.queue_size = integer("notify_queue", s.notify.queue_size, 1)
    if errors:
        raise ConfigError(errors)
    return s


def _positive_numbers(section: dict[str, Any], limits: Limits, keys: tuple[str, ...], err: Any) -> None:
    for key in keys:
        value = section.get(key, getattr(limits, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            err(key, f"must be a positive number, got {value!r}")
        else:
            setattr(limits, key, float(value))


class NchfComponent:
    """The Nchf server as a `chf serve` component, with the notifier that sends the core's signals to the SMFs."""

    name = "nchf"

    def __init__(
        self,
        service: ChargingPort,
        settings: NchfSettings,
        *,
        reuse_port: bool = False,
        send_notifications: bool = True,
        request_numbers: Iterator[int] | None = None,
    ) -> None:
        """`reuse_port`: other processes serve the same port (SO_REUSEPORT). `send_notifications`: False where
        another process sends the ChargingNotify requests (NchfNotifierComponent, so each goes out once).
        `request_numbers`: see NchfApp."""
        self.service = service
        self.settings = settings
        auth = None
        if settings.auth_tokens or settings.jwt_key is not None:
            auth = BearerAuth(settings.auth_tokens, settings.jwt_key)
        self.app = NchfApp(service, auth=auth, max_in_flight=settings.max_in_flight, request_numbers=request_numbers)
        ssl_context = None
        if settings.tls_cert and settings.tls_key:
            ssl_context = server_ssl_context(settings.tls_cert, settings.tls_key)
        self.server = HttpServer(
            on_request=self.app.handle_soon,
            host=settings.listen,
            port=settings.port,
            ssl_context=ssl_context,
            limits=settings.limits,
            error_responder=transport_error,
            reuse_port=reuse_port,
        )
        self.notifier = Notifier(settings.notify) if send_notifications else None

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        if self.notifier is not None:
            await self.notifier.start()
            self.service.subscribe("nchf", self.notifier.on_signal)
        await self.server.start()
        log.info(
            "event=nchf_listening address=%s port=%d tls=%s auth=%s",
            self.settings.listen,
            self.server.port,
            "on" if self.server.ssl_context else "off",
            "on" if self.app.auth else "off",
        )

    async def stop(self) -> None:
        await self.server.stop()
        if self.notifier is not None:
            await self.notifier.stop()


class NchfNotifierComponent:
    """The notifications of Nchf alone, for the process that holds the core while other processes serve the
    Nchf port: each notification to an SMF (re-auth, abort) goes out once, whatever the number of servers."""

    name = "nchf-notify"

    def __init__(self, service: ChargingPort, settings: NchfSettings) -> None:
        self.service = service
        self.notifier = Notifier(settings.notify)

    async def start(self) -> None:
        await self.notifier.start()
        self.service.subscribe("nchf", self.notifier.on_signal)

    async def stop(self) -> None:
        await self.notifier.stop()
