"""The floors of the house hold: imports point down only (the import-linter contracts in pyproject.toml), and
every package and every room of chf/ is on a floor, so that a new one cannot escape the contracts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from typing import Any

from tests.support import REPO, unavailable


def _linter() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return config["tool"]["importlinter"]


def _floors(contract: dict[str, Any]) -> set[str]:
    return {room.strip() for layer in contract["layers"] for room in layer.split("|")}


def test_every_package_and_every_room_of_chf_is_on_a_floor() -> None:
    linter = _linter()
    contracts = {c["name"]: c for c in linter["contracts"]}
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert set(linter["root_packages"]) == packages
    assert _floors(contracts["floors"]) == packages
    rooms = {p.parent.name for p in (REPO / "chf").glob("*/__init__.py")}
    assert _floors(contracts["chf rooms"]) == rooms


def test_imports_point_down_only() -> None:
    if importlib.util.find_spec("importlinter") is None:
        unavailable("import-linter is not installed (the [test] extras)")
    run = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    done = subprocess.run([sys.executable, "-c", run], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
