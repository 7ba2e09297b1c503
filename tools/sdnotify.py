"""The systemd notification protocol (sd_notify(3)), spoken by `chf serve` under `Type=notify` (deploy/chf.service).

systemd passes a Unix datagram socket in $NOTIFY_SOCKET (a path, or "@name" in the abstract namespace) and, with
`WatchdogSec=`, the watchdog interval in $WATCHDOG_USEC (and the process it is meant for in $WATCHDOG_PID). The
service sends `READY=1` once it serves, `WATCHDOG=1` at least once per interval (we send at half of it, as
sd_watchdog_enabled(3) advises), `STOPPING=1` when it begins to shut down, and `STATUS=...` lines for
`systemctl status`. Without $NOTIFY_SOCKET (started by hand, in tests, under another supervisor) every call is a
no-op.

The variables are removed from the environment when read, so the front-end workers that `chf serve` starts do not
inherit them: systemd listens to the main process only (`NotifyAccess=main`).

Sends never block: the socket is non-blocking, and a datagram systemd cannot take now is dropped (the next
watchdog ping follows within half an interval). A few syscalls per second, off the charging path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("chf.sdnotify")


class Notifier:
    """One service's end of the notification socket; inert when systemd did not ask for notifications."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address: str | bytes | None = None
        if address:
            # "@name": a socket of the abstract namespace, whose name starts with a NUL byte.
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = watchdog_usec / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier systemd asked for, taking the variables out of the environment (see the module's doc)."""
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec_text = os.environ.pop("WATCHDOG_USEC", None)
        pid_text = os.environ.pop("WATCHDOG_PID", None)
        usec: int | None = None
        if usec_text and usec_text.isdigit() and int(usec_text) > 0:
            usec = int(usec_text)
        if pid_text and pid_text.isdigit() and int(pid_text) != os.getpid():
            usec = None  # the watchdog is meant for another process
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` lines in one datagram; False when it could not be sent (or nobody listens)."""
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone, socket full: the service goes on
            log.warning("event=sd_notify_failed fields=%s error=%s", ",".join(f.split("=", 1)[0] for f in fields), exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "draining: Gy DPR, HTTP/2 GOAWAY, then the last commits") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping the watchdog from the event loop, at half the interval systemd set, while `healthy()`: a stalled
        loop or a dead store writer stops the pings, and systemd restarts the service (`Restart=on-failure`)."""
        interval = self.watchdog_interval
        if self.address is None or interval is None or self._watchdog is not None:
            return

        async def ping() -> None:
            while True:
                if healthy():
                    self.send("WATCHDOG=1")
                else:
                    log.error("event=watchdog_withheld reason=unhealthy")
                await asyncio.sleep(interval / 2)

        self._watchdog = asyncio.get_running_loop().create_task(ping(), name="chf-sd-watchdog")

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
