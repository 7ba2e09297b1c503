"""The kept versions of the catalogue: every version `chf serve` loads (at start and on reload) is copied into
``<data_dir>/catalogues/<version>.toml``, written once and never changed, so that an event's ``catalogue`` field
names a text that can still be read after the file it came from was edited or removed (chf.core.versions)."""

from __future__ import annotations

import hashlib
import logging
import os

from chf.core.catalogue import Catalogue, CatalogueError
from chf.core.catalogue_loader import VERSION_DIGITS, load_catalogue
from chf.core.versions import CatalogueVersions

log = logging.getLogger("chf.catalogue")

ARCHIVE_DIR = "catalogues"


def version_files(path: str) -> list[str]:
    """The files holding the versions at ``path`` (a catalogue file, or a directory of them)."""
    if not os.path.isdir(path):
        return [path]
    return [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".toml") and not n.startswith(".")]


def archive_path(archive: str, version: str) -> str:
    return os.path.join(archive, f"{version}.toml")


def keep_versions(archive: str, path: str, versions: CatalogueVersions) -> list[str]:
    """Copy each version at ``path`` not yet kept into ``archive``; returns the versions written. A file whose
    text no longer has its version's digest (edited since it was loaded) is not kept: its next load keeps it."""
    wanted = {c.version for c in versions.versions}
    os.makedirs(archive, exist_ok=True)
    written = []
    for name in version_files(path):
        with open(name, "rb") as f:
            raw = f.read()
        version = hashlib.sha256(raw).hexdigest()[:VERSION_DIGITS]
        target = archive_path(archive, version)
        if version not in wanted or os.path.exists(target):
            continue
        tmp = f"{target}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)  # whole or absent: a version's text is never seen half written
        written.append(version)
        log.info("event=catalogue_version_kept version=%s file=%s", version, target)
    return written


def kept_versions(archive: str, running: CatalogueVersions, limit: int) -> list[Catalogue]:
    """The `limit` most recently kept versions that are not running, oldest first: after a restart, the open
    reservations granted in them are still priced by them. A kept file that no longer loads (a format this code
    refuses) is skipped and logged."""
    if not os.path.isdir(archive):
        return []
    names = {c.version for c in running.versions}
    found = []
    for name in os.listdir(archive):
        version, ext = os.path.splitext(name)
        if ext == ".toml" and len(version) == VERSION_DIGITS and version not in names:
            path = os.path.join(archive, name)
            found.append((os.stat(path).st_mtime, path))
    out = []
    for _, path in sorted(found)[-limit:] if limit > 0 else []:
        try:
            out.append(load_catalogue(path))
        except CatalogueError as exc:
            log.warning("event=catalogue_version_unreadable file=%s errors=%d", path, len(exc.errors))
    return out
