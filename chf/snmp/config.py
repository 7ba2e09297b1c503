"""The [snmp] section of conf/chf.toml: the AgentX subagent (chf/snmp/agent.py). Off unless the section is present
and `enabled = true`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from chf.core.validation import expected
from chf.runtime.config import ConfigError, read_section

OID_PATTERN = r"^[0-9]+(\.[0-9]+){1,100}$"


class SnmpConfigError(ConfigError):
    """A bad [snmp] section: every error names the file, the section and the field."""


class SnmpSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[snmp]"""

    enabled: bool = False
    # The master agent's AgentX socket: a Unix socket path (net-snmp's default on Debian), or tcp:HOST:PORT.
    agentx_socket: Annotated[
        str, Meta(min_length=1, extra=expected("a socket path, or tcp:HOST:PORT such as tcp:127.0.0.1:705"))
    ] = "/var/agentx/master"
    # Where CHF-MIB sits. The default is the enterprise number IANA reserves for documentation (RFC 5612), a
    # placeholder until the project has its own; mibs/CHF-MIB.txt names the same arc.
    enterprise_arc: Annotated[
        str, Meta(pattern=OID_PATTERN, extra=expected("an OBJECT IDENTIFIER in dotted form, such as 1.3.6.1.4.1.32473"))
    ] = "1.3.6.1.4.1.32473"
    description: Annotated[str, Meta(max_length=255)] = "chf online charging function"
    timeout: Annotated[int, Meta(ge=1, le=255)] = 5  # seconds: each side's wait for an answer (AgentX Open timeout)
    ping_interval: Annotated[float, Meta(ge=0.1)] = 15.0  # seconds between AgentX Pings to the master
    reconnect_interval: Annotated[float, Meta(ge=0.1)] = 2.0  # seconds between attempts while the master is away
    poll_interval: Annotated[float, Meta(ge=0.1, le=60)] = 1.0  # seconds between looks at the metrics (alarms, MIB)
    store_fill_threshold: Annotated[int, Meta(ge=1, le=100)] = 80  # percent of the store map: chfStoreFillHigh
    overload_hold: Annotated[float, Meta(ge=0)] = 10.0  # seconds without a "too busy" answer before chfOverloadLeft
    notify_queue: Annotated[int, Meta(ge=0)] = 256  # notifications kept while the master is away (the newest)

    @property
    def arc(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.enterprise_arc.split("."))


def parse_snmp_config(section: dict[str, Any], source: str = "conf/chf.toml") -> SnmpSettings:
    settings = read_section(SnmpSettings, section, source, "snmp", SnmpConfigError)
    if len(settings.arc) > 100 or any(part > 0xFFFFFFFF for part in settings.arc):
        raise SnmpConfigError([f"{source}: [snmp] enterprise_arc: sub-identifiers must be below 2^32"])
    return settings
