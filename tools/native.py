"""Which modules of the hot path run compiled (see setup.py), and whether any compiled one is stale.

An editable checkout keeps each compiled module beside its source, and Python imports the compiled file
first: after an edit of the source, the old compiled code would still run. `stale()` finds those, so that the
tests refuse to run and `chf serve` says so.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

_PACKAGES = ("store", "chf", "gy", "nchf", "tools")
_ROOT = Path(__file__).resolve().parents[1]


def _compiled_files(root: Path) -> list[tuple[str, Path, Path]]:
    found = []
    for package in _PACKAGES:
        directory = root / package
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            for compiled in directory.rglob(f"*{suffix}"):
                name = compiled.name[: -len(suffix)]
                if "." in name:  # "x.cpython-311-….so" also ends in ".so": counted under its own suffix
                    continue
                dotted = ".".join(compiled.parent.relative_to(root).parts)
                found.append((f"{dotted}.{name}", compiled, compiled.parent / f"{name}.py"))
    return found


def compiled(root: Path = _ROOT) -> list[str]:
    """Modules that import from a compiled file."""
    return sorted(module for module, _, _ in _compiled_files(root))


def stale(root: Path = _ROOT) -> list[str]:
    """Compiled modules older than their source (the .py file, or the .pxd declaring its extension types)."""
    out = []
    for module, binary, source in _compiled_files(root):
        built = binary.stat().st_mtime
        declarations = source.with_suffix(".pxd")
        if (source.exists() and source.stat().st_mtime > built) or (
            declarations.exists() and declarations.stat().st_mtime > built
        ):
            out.append(module)
    return sorted(out)
