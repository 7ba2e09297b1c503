"""The Nchf front-end as `chf serve` components: the server and the notifier (settings: nchf/config.py).

Which components a process runs (one process, or a core with front-end workers) is decided in tools/serve.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from chf.runtime.port import ChargingPort
from nchf.app import NchfApp, transport_error
from nchf.auth import BearerAuth
from nchf.config import NchfSettings
from nchf.http import HttpServer, server_ssl_context
from nchf.notify import Notifier

log = logging.getLogger("nchf")


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
        self.app = NchfApp(
            service,
            auth=auth,
            max_in_flight=settings.max_in_flight,
            latency_budget=settings.latency_budget,
            request_numbers=request_numbers,
        )
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
