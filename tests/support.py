"""What many test modules need and no product module provides: the repository's paths, the fixture files, a free
port, and the one rule for what the suite needs from outside the repository (skip locally, fail under CI).

The benchmarks (loadtest/, run from a checkout) use it too, so it imports only the standard library up front."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# Material every developer and CI run has beside the checkout: 3GPP OpenAPI files, other vendors' captures.
SHARED = REPO.parent / "shared"
# Where daemons such as nats-server live: sbin, which a non-root PATH often lacks.
_SBIN = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))

# Set by tests/conftest.py around each test: require_tool() holds the test's markers to what it starts.
current_test: pytest.Item | None = None


def fixture_text(name: str) -> str:
    """A file of tests/fixtures (catalogues shared by the tests and the benchmarks)."""
    return (FIXTURES / name).read_text(encoding="utf-8")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the kernel's pick; a race only with other binds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(message: str) -> NoReturn:
    """Something the test needs from outside the repository is missing: a skip on a developer's machine, a
    failure under CI (.ci/run sets CI=true and installs everything), so that CI never passes by skipping."""
    import pytest

    if under_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """The path of the external program `name` (a peer, or an independent checker such as tshark), or
    unavailable(). Only tests marked interop may start one: `pytest -m "not interop"` then needs none."""
    import pytest

    if current_test is not None and current_test.get_closest_marker("interop") is None:
        pytest.fail(f"{current_test.nodeid} starts {name}: add it to INTEROP in tests/conftest.py")
    path = shutil.which(name) or shutil.which(name, path=_SBIN)
    if path is None:
        unavailable(f"{name} is not installed (.ci/system-deps lists the Debian packages the suite needs)")
    return path
