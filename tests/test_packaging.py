"""The source distribution carries what a build needs (every .pxd, every module setup.py compiles, the list of
them), and a wheel built from it installs the product packages only: not loadtest/, which runs from a checkout.

Both are built offline with the environment's setuptools, from a copy of the tree (a build writes egg-info and
build/ beside the sources), without compiling (CHF_PURE_PYTHON=1): what is checked is what gets packaged. The
wheel is then installed into a fresh virtual environment (offline, without its dependencies, which it finds in
this environment's site-packages) and its `chf` command runs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO, unavailable

PACKAGES = {"chf", "gy", "nchf", "store", "tools"}
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "var", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "*.so", "*.c"
)


def _build(hook: str, source: Path, out: Path) -> Path:
    """Run setuptools' PEP 517 hook `hook` (build_sdist, build_wheel) in `source`; the file it wrote in `out`."""
    code = f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))"
    env = {**os.environ, "CHF_PURE_PYTHON": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=source, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def _native_modules() -> list[str]:
    lines = (REPO / "native-modules.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sdist")
    shutil.copytree(REPO, tmp / "src", ignore=NOT_SOURCES)
    return _build("build_sdist", tmp / "src", tmp)


def test_the_sdist_has_every_pxd_and_every_compiled_module(sdist: Path) -> None:
    with tarfile.open(sdist) as archive:
        root, *_ = archive.getnames()
        names = {name.removeprefix(f"{root}/") for name in archive.getnames()}
    pxds = {str(p.relative_to(REPO)) for package in PACKAGES for p in (REPO / package).rglob("*.pxd")}
    assert pxds, "no .pxd found in the checkout"
    assert pxds <= names, f"missing from the sdist (MANIFEST.in): {sorted(pxds - names)}"
    native = set(_native_modules())
    assert native <= names, f"missing from the sdist: {sorted(native - names)}"
    needed = {"native-modules.txt", "setup.py", "pyproject.toml", "README.md", "conf/chf.toml", "conf/catalogue.toml"}
    needed |= {"deploy/chf.service", "deploy/grafana/chf-dashboard.json", "deploy/prometheus/chf-alerts.yml"}
    needed |= {"mibs/CHF-MIB.txt"}
    assert needed <= names, f"missing from the sdist: {sorted(needed - names)}"
    assert not {n for n in names if n.endswith((".so", ".c", ".pyc"))}


@pytest.fixture(scope="module")
def wheel(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # setuptools builds wheels itself from 70.1 on; before, it needs the wheel package ([test] extras pin 70.1).
    if importlib.util.find_spec("setuptools.command.bdist_wheel") is None and not importlib.util.find_spec("wheel"):
        unavailable("building a wheel needs setuptools>=70.1 (the [test] extras) or the wheel package")
    tmp = tmp_path_factory.mktemp("wheel")
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp, filter="data")
    (unpacked,) = tmp.iterdir()
    return _build("build_wheel", unpacked, tmp)


def test_a_wheel_built_from_the_sdist_installs_no_loadtest(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == PACKAGES
    assert set(_native_modules()) <= set(names)


def test_benchmarks_run_from_a_checkout() -> None:
    """Not installed, loadtest still runs as `python -m loadtest.X` from the repository's root."""
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_reconcile", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "reconciliation" in done.stdout


def test_the_wheel_installed_in_a_fresh_venv_gives_a_working_chf(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies (lmdb, msgspec, aiohttp, ...) from this environment, after the venv's own packages: a .pth
    # line adds a directory without running the .pth files in it (this environment's editable install of chf).
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet"]
    done = subprocess.run([*install, str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    chf = target / "bin" / "chf"
    done = subprocess.run([chf, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout and "reconcile" in done.stdout
    catalogue = REPO / "conf" / "catalogue.toml"
    done = subprocess.run(
        [chf, "catalogue", "check", str(catalogue)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # The packages come from the wheel, not from the checkout; loadtest is not installed.
    code = "import importlib.util as u, tools; print(tools.__file__); print(u.find_spec('loadtest'))"
    done = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    where, loadtest = done.stdout.split()
    assert Path(where).is_relative_to(site) and loadtest == "None"
