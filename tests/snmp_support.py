"""A net-snmp master agent (snmpd) and trap receiver (snmptrapd) of the test's own: their own configuration files,
AgentX socket and persistent directory in a temporary directory, UDP ports on 127.0.0.1, foreground, logging to a
file. The system's own snmpd and its configuration are never read or touched (-C: only the given file)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support import REPO, free_port, require_tool

COMMUNITY = "chf-test-community"
V3_USER = "chfops"
V3_AUTH = "auth-pass-0123"
V3_PRIV = "priv-pass-0123"
V3_ARGS = ["-v3", "-u", V3_USER, "-l", "authPriv", "-a", "SHA", "-A", V3_AUTH, "-x", "AES", "-X", V3_PRIV]
V2C_ARGS = ["-v2c", "-c", COMMUNITY]
MIB_DIRS = f"+{REPO / 'mibs'}:{REPO / 'tests' / 'mibs'}"  # the system's MIB directories first, then ours


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(persist: Path) -> dict[str, str]:
    return {**os.environ, "SNMP_PERSISTENT_DIR": str(persist), "MIBS": "", "MIBDIRS": MIB_DIRS[1:]}


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Snmptrapd:
    def __init__(self, tmp: Path) -> None:
        self.binary = require_tool("snmptrapd")
        self.dir = tmp / "snmptrapd"
        self.dir.mkdir()
        self.port = free_udp_port()
        self.log = self.dir / "traps.log"
        self.conf = self.dir / "snmptrapd.conf"
        self.conf.write_text(
            f"authCommunity log {COMMUNITY}\n"
            f'createUser {V3_USER} SHA "{V3_AUTH}" AES "{V3_PRIV}"\n'
            f"authUser log {V3_USER} priv\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        fmt = "TRAP %P|%v\n"  # one line per notification: the security model and user or community, the varbinds
        cmd = [self.binary, "-f", "-C", "-c", str(self.conf), "-Lf", str(self.log), "-On", "-F", fmt]
        cmd.append(f"udp:127.0.0.1:{self.port}")
        self.proc = subprocess.Popen(
            cmd, env=_env(self.dir / "persist"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: self.log.exists() and "NET-SNMP" in self.log.read_text(), 10, "snmptrapd to start")

    def traps(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith("TRAP ")]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


class Snmpd:
    def __init__(self, tmp: Path, trap_port: int) -> None:
        self.binary = require_tool("snmpd")
        self.dir = tmp / "snmpd"
        self.dir.mkdir()
        self.port = free_udp_port()
        self.socket = self.dir / "agentx.sock"
        self.log = self.dir / "snmpd.log"
        self.conf = self.dir / "snmpd.conf"
        self.conf.write_text(
            "master agentx\n"
            f"agentXSocket {self.socket}\n"
            "agentXPerms 0600 0700\n"
            "agentXTimeout 5\n"
            f"agentaddress udp:127.0.0.1:{self.port}\n"
            f"rocommunity {COMMUNITY} 127.0.0.1\n"
            f'createUser {V3_USER} SHA "{V3_AUTH}" AES "{V3_PRIV}"\n'
            f"rouser {V3_USER} priv\n"
            # SNMPv2c traps, and SNMPv3 authPriv informs (the receiver is then the authoritative engine)
            f"trap2sink 127.0.0.1:{trap_port} {COMMUNITY}\n"
            f"trapsess -v 3 -u {V3_USER} -l authPriv -a SHA -A {V3_AUTH} -x AES -X {V3_PRIV} -Ci "
            f"127.0.0.1:{trap_port}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [self.binary, "-f", "-Lo", "-C", "-c", str(self.conf), "-p", str(self.dir / "snmpd.pid")]
        with open(self.log, "ab") as log:
            # snmpd writes its persistent state (snmpd.conf) there on exit: not over the configuration above
            self.proc = subprocess.Popen(cmd, env=_env(self.dir / "persist"), stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.socket.exists, 10, "snmpd's AgentX socket")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None
        self.socket.unlink(missing_ok=True)

    @property
    def target(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    async def tool(self, name: str, *args: str, v3: bool = False, timeout: float = 20) -> str:
        """snmpwalk / snmpget / snmpbulkwalk against this snmpd (asynchronously: the agent answers on this loop)."""
        binary = require_tool(name)
        cmd = [binary, *(V3_ARGS if v3 else V2C_ARGS), "-t", "3", "-r", "1", self.target, *args]
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=_env(self.dir / "client"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode == 0, f"{name} {' '.join(args)}: {err.decode()}"
        return out.decode()


__all__ = ["Snmpd", "Snmptrapd", "free_port"]
