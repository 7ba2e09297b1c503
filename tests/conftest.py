"""Refuse to test a stale build: a compiled module older than its source would test yesterday's code."""

from __future__ import annotations

import pytest

from tools import native


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = native.stale()
    if stale:
        pytest.exit(
            f"compiled modules are older than their source: {', '.join(stale)}. "
            "Rebuild them (`make test` does; or `python setup.py build_ext --inplace`), "
            "or remove them with `make pure`.",
            returncode=2,
        )
