"""The [nchf] section of conf/chf.toml: the Nchf front-end's settings.

`NchfSection` is what the file may say (a strict Struct; a setting left out keeps the default of the object it
configures: `NchfSettings`, nchf.http.Limits, nchf.notify.NotifySettings); `parse_settings` turns it into the
`NchfSettings` the component runs with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from chf.core.validation import CONFIG, Invalid, NonEmptyStr, Port, Problem, config_errors, decode, expected
from chf.runtime.config import ConfigError
from nchf.http import Limits
from nchf.notify import NotifySettings

_MAX = 2**31


Seconds = Annotated[float, Meta(gt=0, extra=expected("a positive number of seconds"))]
Token = Annotated[str, Meta(min_length=1, extra=expected("a non-empty string", secret=True))]


@dataclass(slots=True)
class NchfSettings:
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = 8000
    tls_cert: str | None = None
    tls_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_in_flight: int = 8192
    latency_budget: float = 0.25  # seconds ([nchf] latency_budget_ms)
    auth_tokens: list[str] = field(default_factory=list)
    jwt_key: bytes | None = None
    notify: NotifySettings = field(default_factory=NotifySettings)


class NchfSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool | None = None
    listen: NonEmptyStr | None = None
    port: Port | None = None
    tls_cert: NonEmptyStr | None = None
    tls_key: NonEmptyStr | None = None
    max_concurrent_streams: Annotated[int, Meta(ge=1, le=65535)] | None = None
    max_header_bytes: Annotated[int, Meta(ge=1024, le=_MAX)] | None = None
    max_body_bytes: Annotated[int, Meta(ge=1024, le=_MAX)] | None = None
    max_connections: Annotated[int, Meta(ge=1, le=_MAX)] | None = None
    max_in_flight: Annotated[int, Meta(ge=1, le=_MAX)] | None = None
    latency_budget_ms: Annotated[int, Meta(ge=0, le=600_000)] | None = None
    request_timeout: Seconds | None = None
    idle_timeout: Seconds | None = None
    connection_window: Annotated[int, Meta(ge=65535, le=_MAX)] | None = None
    stream_reset_burst: Annotated[int, Meta(ge=1, le=_MAX)] | None = None
    stream_reset_rate: Annotated[float, Meta(gt=0)] | None = None
    control_frame_burst: Annotated[int, Meta(ge=1, le=_MAX)] | None = None
    control_frame_rate: Annotated[float, Meta(gt=0)] | None = None
    overload_pause: Annotated[float, Meta(ge=0, le=10)] | None = None
    auth_tokens: Annotated[list[Token], Meta(extra=expected("a list of non-empty strings", secret=True))] | None = None
    jwt_key_file: NonEmptyStr | None = None  # HS256 key of the NRF
    notify_timeout: Seconds | None = None
    notify_retries: Annotated[int, Meta(ge=0, le=10)] | None = None
    notify_queue: Annotated[int, Meta(ge=1, le=_MAX)] | None = None


# Where each setting goes: NchfSettings itself, its Limits (same names) or its NotifySettings.
_OWN = ("enabled", "listen", "port", "tls_cert", "tls_key", "max_in_flight", "auth_tokens")
_LIMITS = (
    "max_concurrent_streams",
    "max_header_bytes",
    "max_body_bytes",
    "max_connections",
    "request_timeout",
    "idle_timeout",
    "connection_window",
    "stream_reset_burst",
    "stream_reset_rate",
    "control_frame_burst",
    "control_frame_rate",
    "overload_pause",
)
_NOTIFY = {"notify_timeout": "timeout", "notify_retries": "retries", "notify_queue": "queue_size"}


def parse_settings(section: dict[str, Any], source: str = "conf/chf.toml") -> NchfSettings:
    """Read and check the [nchf] section; every error names the file, the section and the field."""
    problems: list[Problem] = []
    if ("tls_cert" in section) != ("tls_key" in section):
        problems.append(Problem(("tls_cert",), "tls_cert and tls_key go together"))
    try:
        given = decode(NchfSection, section, CONFIG)
    except Invalid as exc:
        raise ConfigError(config_errors(exc.problems + problems, source, "nchf")) from None
    s = NchfSettings()
    for targets, target in ((_OWN, s), (_LIMITS, s.limits)):
        for name in targets:
            if (value := getattr(given, name)) is not None:
                setattr(target, name, value)
    for name, attribute in _NOTIFY.items():
        if (value := getattr(given, name)) is not None:
            setattr(s.notify, attribute, value)
    if given.latency_budget_ms is not None:
        s.latency_budget = given.latency_budget_ms / 1000
    if given.jwt_key_file is not None:
        try:
            with open(given.jwt_key_file, "rb") as f:
                s.jwt_key = f.read().strip()
        except OSError as exc:
            problems.append(Problem(("jwt_key_file",), f"cannot read {given.jwt_key_file}: {exc.strerror}"))
    if problems:
        raise ConfigError(config_errors(problems, source, "nchf"))
    return s
