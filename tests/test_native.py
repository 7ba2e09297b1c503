"""The hot path runs compiled where it was built so, and a stale compiled module is caught."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from pathlib import Path

import pytest

from tools import native

ROOT = Path(__file__).resolve().parents[1]


def listed_modules() -> list[str]:
    lines = (ROOT / "native-modules.txt").read_text().splitlines()
    paths = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [p.removesuffix(".py").replace("/", ".") for p in paths]


def test_listed_modules_exist() -> None:
    for module in listed_modules():
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module


@pytest.mark.skipif(os.environ.get("CHF_PURE_PYTHON") == "1", reason="pure-Python build asked for")
def test_listed_modules_run_compiled_under_ci() -> None:
    if os.environ.get("CI") != "true" and not native.compiled():
        pytest.skip("no compiled modules in this checkout (not CI)")
    for module in listed_modules():
        origin = importlib.import_module(module).__file__ or ""
        assert origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), f"{module} runs from {origin}"


def test_stale_compiled_module_is_found(tmp_path: Path) -> None:
    package = tmp_path / "chf"
    package.mkdir()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / f"engine{suffix}").write_bytes(b"")
    (package / f"model{suffix}").write_bytes(b"")
    (package / "engine.py").write_text("")
    (package / "model.py").write_text("")
    os.utime(package / f"engine{suffix}", (1_000, 1_000))  # built before the source was edited
    os.utime(package / "model.py", (1_000, 1_000))
    assert native.compiled(tmp_path) == ["chf.engine", "chf.model"]
    assert native.stale(tmp_path) == ["chf.engine"]
