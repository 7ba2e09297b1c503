"""The Nchf front-end as a `chf serve` component: the `[nchf]` section of conf/chf.toml, server and notifier."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from chf.runtime.config import Config, ConfigError
from chf.runtime.corelink import ASSIGN_NUMBER
from chf.runtime.port import ChargingPort
from nchf.app import NchfApp, transport_error
from nchf.auth import BearerAuth
from nchf.config import NchfSettings, parse_settings
from nchf.http import HttpServer, server_ssl_context
from nchf.notify import Notifier

log = logging.getLogger("nchf")


class NchfComponent:
    name = "nchf"

    def __init__(self, service: ChargingPort, settings: NchfSettings) -> None:
        self.service = service
        self.settings = settings
        auth = None
        if settings.auth_tokens or settings.jwt_key is not None:
            auth = BearerAuth(settings.auth_tokens, settings.jwt_key)
        self.app = NchfApp(service, auth=auth, max_in_flight=settings.max_in_flight)
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
        )
        self.notifier = Notifier(settings.notify)
        self.worker = False

    def as_worker(self) -> None:
        """Run in a front-end worker: share the port, leave notifications to the core, and let the core number the
        requests that come without a number (one counter for all workers: the engine needs them to grow per
        session, and the updates of one session may arrive through different workers)."""
        self.worker = True
        self.server.reuse_port = True
        self.app._unnumbered = itertools.repeat(ASSIGN_NUMBER)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        if not self.worker:  # in worker mode the core sends the notifications (NchfNotifierComponent): once
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
        if not self.worker:
            await self.notifier.stop()


class NchfNotifierComponent:
    """The core's part of Nchf when the front-ends run in workers: notifications to the SMF (re-auth, abort) go
    from the core, which publishes them, so each is sent once whatever the number of workers."""

    name = "nchf-notify"

    def __init__(self, service: ChargingPort, settings: NchfSettings) -> None:
        self.service = service
        self.notifier = Notifier(settings.notify)

    async def start(self) -> None:
        await self.notifier.start()
        self.service.subscribe("nchf", self.notifier.on_signal)

    async def stop(self) -> None:
        await self.notifier.stop()


def nchf_components(config: Config, service: ChargingPort) -> list[Any]:
    """`chf serve` factory: an Nchf front-end when conf/chf.toml has an enabled [nchf] section."""
    if "nchf" not in config.raw:
        return []
    settings = parse_settings(config.section("nchf"), config.source)
    if not settings.enabled:
        return []
    if config.role == "core":
        if settings.port == 0:  # each worker would listen on a port of its own
            raise ConfigError([f"{config.source}: [nchf] port: must be a fixed port with [server] frontend_workers"])
        return [NchfNotifierComponent(service, settings)]
    component = NchfComponent(service, settings)
    if config.role == "worker":
        component.as_worker()
    return [component]
