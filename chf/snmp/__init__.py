"""SNMP: an AgentX subagent (RFC 2741) inside `chf serve` that serves CHF-MIB (mibs/CHF-MIB.txt) through the host's
master agent (net-snmp snmpd) and sends its alarms as notifications.

    agentx.py   the AgentX PDU codec, without I/O
    sample.py   one look at the process: the metric families (front-end workers' included)
    monitor.py  alarms, raised and cleared once per change of state, without I/O
    mib.py      CHF-MIB's object identifiers, the view of every instance, answers to Get / GetNext / GetBulk
    agent.py    the asyncio session with the master: connect, register, answer, notify, reconnect
    config.py   the [snmp] section

Everything the MIB shows comes from the process's metrics registry (chf/runtime/metrics.py, and the Diameter peer
table of chf/runtime/peers.py that the Gy front-end fills), so the agent needs no front-end and, with front-end
workers, runs in the core, which has every worker's metrics.
"""

from __future__ import annotations

from typing import Any

from chf.export.config import parse_export_config
from chf.runtime import peers as _peers  # noqa: F401 - registers the Diameter peer families in the core too
from chf.snmp.agent import SnmpAgent
from chf.snmp.config import SnmpSettings, parse_snmp_config

__all__ = ["SnmpAgent", "SnmpSettings", "parse_snmp_config", "snmp_components"]


def snmp_components(config: Any, service: Any) -> list[Any]:
    """`chf serve` factory: the subagent when [snmp] is present with `enabled = true` (in the core process only)."""
    if "snmp" not in config.raw:
        return []
    settings = parse_snmp_config(config.section("snmp"), config.source)
    if not settings.enabled or getattr(config, "role", "all") == "worker":
        return []
    export = parse_export_config(config.section("export"), config.data_dir, config.source)
    return [SnmpAgent(settings, workers_configured=config.frontend_workers, export_backlog_limit=export.backlog_limit)]
