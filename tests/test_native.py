"""The hot path runs compiled where it was built so, and a stale compiled module is caught."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from pathlib import Path

import pytest

from tests.support import REPO, unavailable
from tools import native


def listed_modules() -> list[str]:
    lines = (REPO / "native-modules.txt").read_text().splitlines()
    paths = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [p.removesuffix(".py").replace("/", ".") for p in paths]


def test_listed_modules_exist() -> None:
    for module in listed_modules():
        assert (REPO / (module.replace(".", "/") + ".py")).exists(), module


@pytest.mark.skipif(os.environ.get("CHF_PURE_PYTHON") == "1", reason="pure-Python build asked for")
def test_listed_modules_run_compiled_under_ci() -> None:
    if not native.compiled():
        unavailable("no compiled modules in this checkout (`make test` builds them)")
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


def test_edited_declarations_make_a_compiled_module_stale(tmp_path: Path) -> None:
    """A .pxd beside the source decides how the module compiles (extension types, typed locals): editing it
    alone must also call for a rebuild."""
    package = tmp_path / "store"
    package.mkdir()
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (package / f"schema{suffix}").write_bytes(b"")
    (package / "schema.py").write_text("")
    (package / "schema.pxd").write_text("")
    os.utime(package / "schema.py", (1_000, 1_000))
    os.utime(package / f"schema{suffix}", (2_000, 2_000))
    assert native.stale(tmp_path) == ["store.schema"]  # the .pxd is newer than the build
    os.utime(package / "schema.pxd", (1_500, 1_500))
    assert native.stale(tmp_path) == []


@pytest.mark.skipif(os.environ.get("CHF_PURE_PYTHON") == "1", reason="pure-Python build asked for")
def test_records_are_extension_types_when_compiled() -> None:
    """The .pxd files make the per-request records extension types; in a pure-Python checkout they are the
    plain classes of the .py files, with the same fields."""
    from chf.core.context import Context
    from chf.core.engine import Engine
    from store.lmdbstore import Txn
    from store.schema import Account, BalanceSet, Bucket, Reservation, Session, Subscriber

    classes = (Account, BalanceSet, Bucket, Reservation, Session, Subscriber, Txn, Context, Engine)
    if not native.compiled():
        unavailable("no compiled modules in this checkout (`make test` builds them)")
    heap_type = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on classes made by a class statement, clear on extension types
    for cls in classes:
        assert cls.__flags__ & heap_type == 0, f"{cls.__name__} is a heap type: not compiled as an extension type"
    bucket = Bucket(1, "data", "plan", "bytes", None, 10, 100, 100, 0, 0, 2**40)
    with pytest.raises(AttributeError):
        bucket.extra = 1  # type: ignore[attr-defined]
