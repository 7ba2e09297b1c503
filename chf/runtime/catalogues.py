"""The kept versions of the catalogue: every version `chf serve` loads (at start and on reload) is copied into
``<data_dir>/catalogues/<version>.toml``, written once and never changed, so that an event's ``catalogue`` field
names a text that can still be read after the file it came from was edited or removed (chf.core.versions)."""

from __future__ import annotations

import hashlib
import logging
import os

from chf.core.catalogue_loader import VERSION_DIGITS
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
