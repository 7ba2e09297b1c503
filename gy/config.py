"""The [gy] section of conf/chf.toml: the Diameter Gy server's settings, as a strict Struct."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from chf.core.validation import NonEmptyStr, Port
from chf.runtime.config import ConfigError, read_section

Count = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(gt=0)]


class GyConfigError(ConfigError):
    """A bad [gy] section: every error names the file, the section and the field."""


class GyPeer(msgspec.Struct, forbid_unknown_fields=True):
    """A client admitted by Origin-Host, and by Origin-Realm unless realm is empty."""

    host: NonEmptyStr
    realm: str = ""


class GyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    listen: NonEmptyStr = "127.0.0.1"
    port: Port = 3868
    origin_host: NonEmptyStr = "chf.localdomain"
    origin_realm: NonEmptyStr = "localdomain"
    tw: Seconds = 30.0  # RFC 3539 watchdog interval
    peer_list: list[GyPeer] = msgspec.field(default_factory=list, name="peers")
    allow_unknown_peers: bool = False
    max_inflight_per_peer: Count = 2048
    max_inflight: Count = 16384
    # A request is taken only if those in flight are expected to be answered within this many milliseconds (in flight
    # / measured answer rate); beyond, 3004 at once. 0: the counts alone. (chf/runtime/admission.py)
    latency_budget_ms: Annotated[int, Meta(ge=0, le=600_000)] = 250
    # Per connection: answers waiting for a peer that does not read. Past output_buffer bytes the connection is not
    # read any more (its requests wait in TCP); still full after write_timeout seconds, it is closed. 16 KiB (about 80
    # answers) stopped reading a pipelining load client at every turn: at 3x its requests waited in its own socket,
    # unseen by the admission (0 x 3004, the server at 21 % CPU, accepted p50 1 s); 64 KiB: refused, 78 % CPU.
    output_buffer: Annotated[int, Meta(ge=4096, le=1 << 30)] = 65536
    write_timeout: Seconds = 30.0
    # A message longer than max_message bytes closes the connection (the stream cannot be framed any more); one
    # begun and not complete within message_timeout seconds too.
    max_message: Annotated[int, Meta(ge=4096, le=(1 << 24) - 1)] = 65536
    message_timeout: Seconds = 10.0
    duplicate_cache: Count = 65536
    duplicate_window: Seconds = 240.0  # seconds an answer is kept for retransmissions (RFC 6733 6.1.4: 4 minutes)
    # Credit-Control-Failure-Handling sent in CCAs (RFC 4006 section 8.14)
    ccfh: Literal["terminate", "continue", "retry_and_terminate"] = "retry_and_terminate"
    session_failover: bool = False
    product_name: NonEmptyStr = "chf"
    vendor_id: Count = 0
    drain_timeout: Seconds = 5.0

    @property
    def peers(self) -> dict[str, str]:
        """Admitted peers: Origin-Host -> Origin-Realm ("" admits any realm)."""
        return {p.host: p.realm for p in self.peer_list}

    @classmethod
    def from_section(cls, section: dict[str, Any], source: str = "conf/chf.toml") -> GyConfig:
        """Validate the [gy] section; every error names the field."""
        return read_section(cls, section, source, "gy", GyConfigError)
