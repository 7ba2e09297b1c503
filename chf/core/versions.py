"""Effective-dated catalogue: the versions of the catalogue and the one in force at a time.

A *version* is one whole catalogue file (chf.core.catalogue_loader): its ``[settings] effective`` says when it
takes effect, and its name is the first 12 hex digits of the file's sha256 (``Catalogue.version``). The
configured catalogue is a file (one version) or a directory whose ``*.toml`` files are the versions. A version
is in force from its effective time until the next version's; the earliest one (or the one without
``effective``, of which there is at most one) is also in force before it.

How a request is priced (README, "Effective-dated catalogue"):

* The engine rates a request by the version in force at the request's time (``CatalogueVersions.at``).
* Usage is priced by the version its grant was made with (the reservation names its tariff as
  ``name@version``), and a grant never spans a change: its Validity-Time ends at the next version's effective
  time (RFC 4006 8.33 / TS 32.291 validityTime), so the client reports the usage of each version on its own. This
  is the version in force at the start of the usage. We chose it over splitting one report at the boundary
  (Tariff-Change-Usage, tariffTimeChange) because every client honours Validity-Time on both front-ends, while
  split reports need the client to support tariff changes and the answer to carry Tariff-Time-Change.
* Usage reported without a grant is priced by the version in force when it is reported; a period fee by the
  version in force when the period is renewed.
* Every event carries the version (``catalogue``) that priced it; ``chf serve`` keeps the text of every version
  it loaded in ``<data_dir>/catalogues/<version>.toml``, so that an event can be traced to its prices.

Sans-IO apart from ``load_versions``, which reads the files as ``load_catalogue`` does.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any, Final

from chf.core.catalogue import Catalogue, CatalogueError
from chf.core.catalogue_loader import check_replacement, load_catalogue

__all__ = ["FOREVER", "CatalogueVersions", "changes", "load_versions", "version_of_tariff"]

#: The end of the last version's time in force, and the start of the first one's (epoch seconds).
FOREVER: Final = 2**62


class CatalogueVersions:
    """The versions of the catalogue, ordered by effective time; immutable."""

    __slots__ = ("_starts", "versions")

    def __init__(self, versions: Iterable[Catalogue]) -> None:
        ordered = sorted(versions, key=_start)
        if not ordered:
            raise CatalogueError(["the catalogue has no version"])
        _check_versions(ordered)
        self.versions: tuple[Catalogue, ...] = tuple(ordered)
        self._starts = [_start(c) for c in ordered]
        self._starts[0] = -FOREVER  # the earliest version is in force before its effective time too

    @classmethod
    def of(cls, catalogue: Catalogue | CatalogueVersions) -> CatalogueVersions:
        return catalogue if isinstance(catalogue, CatalogueVersions) else cls([catalogue])

    def at(self, t: int) -> tuple[Catalogue, int, int]:
        """The version in force at ``t`` and the span [since, until) it is in force (+-FOREVER when open)."""
        i = bisect.bisect_right(self._starts, t) - 1
        until = self._starts[i + 1] if i + 1 < len(self._starts) else FOREVER
        return self.versions[i], self._starts[i], until

    def latest(self) -> Catalogue:
        """The version that takes effect last (what a reload's log line and the API name)."""
        return self.versions[-1]

    def by_version(self, version: str) -> Catalogue | None:
        for c in self.versions:
            if c.version == version:
                return c
        return None


def _start(c: Catalogue) -> int:
    return -FOREVER if c.effective is None else c.effective


def _check_versions(ordered: Sequence[Catalogue]) -> None:
    errors: list[str] = []
    seen: dict[str, str] = {}
    for i, c in enumerate(ordered):
        if c.version in seen:
            errors.append(f"{c.source}: the same text as {seen[c.version]} (one version, two files)")
        seen[c.version] = c.source
        if i == 0:
            continue
        prev = ordered[i - 1]
        if c.effective is None or _start(prev) == _start(c):
            when = "no effective time" if c.effective is None else "the same effective time"
            errors.append(f"{c.source}: settings: effective: {when} as {prev.source} (which takes effect when?)")
        try:
            check_replacement(prev, c)  # a plan keeps its currency from one version to the next
        except CatalogueError as exc:
            errors.extend(exc.errors)
    if errors:
        raise CatalogueError(errors)


def load_versions(path: str | os.PathLike[str]) -> CatalogueVersions:
    """The versions at ``path``: a catalogue file (one version) or a directory of them (its ``*.toml`` files).
    Every problem of every file is reported at once."""
    if not os.path.isdir(path):
        return CatalogueVersions([load_catalogue(path)])
    names = sorted(n for n in os.listdir(path) if n.endswith(".toml") and not n.startswith("."))
    if not names:
        raise CatalogueError([f"{os.path.basename(os.fspath(path))}: no *.toml catalogue in this directory"])
    loaded: list[Catalogue] = []
    errors: list[str] = []
    for name in names:
        try:
            loaded.append(load_catalogue(os.path.join(path, name)))
        except CatalogueError as exc:
            errors.extend(exc.errors)
    if errors:
        raise CatalogueError(errors)
    return CatalogueVersions(loaded)


def version_of_tariff(tariff_ref: str | None) -> str | None:
    """The version named by a reservation's tariff reference ``name@version``."""
    if tariff_ref is None:
        return None
    return tariff_ref.partition("@")[2] or None


# -- what changes at each date (`chf catalogue check`) --------------------------------------------------------------
def changes(old: Catalogue, new: Catalogue) -> list[str]:
    """What ``new`` changes from ``old``: tariffs and plans added, removed and changed (with the fields that
    changed; a changed tariff names the plans that use it), settings, grants and zones changed."""
    out: list[str] = []
    for name, tariff in new.tariffs.items():
        before = old.tariffs.get(name)
        if before is None:
            out.append(f"tariff {name!r} added")
        elif before != tariff:
            users = sorted(p.name for p in new.plans.values() if _tariff_names(p).count(name))
            used_by = f" (plans {', '.join(users)})" if users else ""
            out.append(f"tariff {name!r} changed: {', '.join(_changed_fields(before, tariff))}{used_by}")
    out.extend(f"tariff {name!r} removed" for name in old.tariffs if name not in new.tariffs)
    for name, plan in new.plans.items():
        was = old.plans.get(name)
        if was is None:
            out.append(f"plan {name!r} added")
            continue
        fields = _changed_fields(was, plan)
        if fields:
            out.append(f"plan {name!r} changed: {', '.join(fields)}")
    out.extend(f"plan {name!r} removed" for name in old.plans if name not in new.plans)
    for what in ("settings", "grants"):
        if getattr(old, what) != getattr(new, what):
            out.append(f"{what} changed: {', '.join(_changed_fields(getattr(old, what), getattr(new, what)))}")
    if dict(old._grants_by_rg) != dict(new._grants_by_rg):
        out.append("grants per rating group changed")
    if dict(old.zones) != dict(new.zones):
        out.append("zones changed")
    return out


def _tariff_names(plan: Any) -> list[str]:
    names = [t.name for t in plan.rating.values()]
    if plan.default_tariff is not None:
        names.append(plan.default_tariff.name)
    return names


def _changed_fields(a: Any, b: Any) -> list[str]:
    """The compared fields of two records of one dataclass that differ: ``field old -> new`` for plain values.
    A plan's tariffs are compared by name (a changed tariff is listed as such)."""
    out = []
    for f in dataclasses.fields(a):
        if not f.compare:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "rating":
            x, y = _rating_text(x), _rating_text(y)
        elif f.name == "default_tariff":
            x, y = getattr(x, "name", None), getattr(y, "name", None)
        if x == y:
            continue
        if isinstance(x, (int, str, bool, type(None))) and isinstance(y, (int, str, bool, type(None))):
            out.append(f"{f.name} {x!r} -> {y!r}")
        else:
            out.append(f.name)
    return out


def _rating_text(rating: Any) -> str:
    return "{" + ", ".join(f"{rg}: {t.name}" for rg, t in sorted(rating.items())) + "}"
