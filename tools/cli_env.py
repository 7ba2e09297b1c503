"""What every `chf` subcommand is given: the parsed arguments and, opened on first use, the configuration, the
catalogue's engine and the store; plus the exit statuses and the audit actor they share.

Its own module so that tools.cli (which registers the subcommand groups) and the groups (tools.cli_admin,
tools.cli_import, tools.reconcile, tools.reports) import it without importing each other in a circle.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
from collections.abc import Callable
from typing import Any

from chf.core.engine import Engine
from chf.core.versions import load_versions
from chf.runtime.config import Config, load_config
from chf.runtime.storage import Store, open_store

EXIT_OK = 0
EXIT_FAILED = 1  # the operation could not be carried out (not found, conflict)
EXIT_USAGE = 2  # bad input: nothing was written


def actor() -> str:
    """Who made a change, for the audit events: the operator's login on this host."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return f"cli:uid{os.getuid()}"


class Env:
    """What a subcommand needs, opened lazily: configuration, catalogue, store and engine."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = bool(getattr(args, "json", False))
        self._config: Config | None = None
        self._store: Store | None = None
        self._engine: Engine | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.args.config)
        return self._config

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(load_versions(self.config.catalogue), self.config.engine.engine_config())
        return self._engine

    @property
    def store(self) -> Store:
        """The configured store (created on first use). Commands that change data write through it while
        `chf serve` runs: the store serialises writers and commits durably before a command reports success."""
        if self._store is None:
            self._store = open_store(self.config)
        return self._store

    def now(self) -> int:
        return int(time.time())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def out(self, value: Any, text: str | Callable[[], str] | None = None) -> None:
        if self.json or text is None:
            print(json.dumps(value, indent=2, sort_keys=True, default=str))
        else:
            print(text() if callable(text) else text)
