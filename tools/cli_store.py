"""`chf backup`, `chf restore`, `chf store copy|verify`: the store as a whole (README "Backup and restore").

- `chf backup DEST`: a consistent, compacted copy of the configured LMDB store while `chf serve` runs, verified
  before it takes its name (chf.runtime.storage.backup_store, store/lmdbbackup.py).
- `chf restore SRC`: refused while `chf serve` (or any process) has the store open; checks the backup, swaps it
  in atomically and keeps the previous store aside. `--check-only` checks a backup and changes nothing.
- `chf store copy --from A --to B`: everything of store A (one read snapshot; A may be serving) into the empty
  store B, through the store interface (any two backends), then a verification; `chf store verify` the
  verification alone (chf.runtime.storecopy).

A store is named as `lmdb:PATH`, an LMDB store directory, or a configuration file; `--from` defaults to the
configured store.
"""

from __future__ import annotations

import argparse
from typing import Any

from chf.core import provisioning
from chf.runtime import storage, storecopy
from tools.cli_admin import server_pid
from tools.cli_env import EXIT_FAILED, EXIT_OK, Env
from tools.progress import Progress, wanted

KIND_ORDER = ("events", "lines", "accounts", "sessions")


def _counts_text(counts: dict[str, int]) -> str:
    shown = {
        "events": counts.get("events", 0),
        "lines": counts.get("subscribers", 0),
        "accounts": counts.get("accounts", 0),
        "sessions": counts.get("sessions", 0),
    }
    return ", ".join(f"{shown[k]:,} {k}" for k in KIND_ORDER)


# ----------------------------------------------------------------------------------------------------------------------
# backup and restore
# ----------------------------------------------------------------------------------------------------------------------
def cmd_backup(env: Env) -> int:
    result = storage.backup_store(env.config, env.args.dest)

    def text() -> str:
        s = result["seconds"]
        return (
            f"backup {result['path']} of store {result['store_id']}: {result['bytes']:,} bytes "
            f"(the store file: {result['store_bytes']:,}), up to event {result['last_event_seq']:,}; "
            f"{_counts_text(result['counts'])}\n"
            f"copied and digested in {s['copy']:.2f} s, verified in {s['verify']:.2f} s"
        )

    env.out(result, text)
    return EXIT_OK


def cmd_restore(env: Env) -> int:
    a = env.args
    if a.check_only:
        summary, problems = storage.verify_backup(a.source)
        out = {"backup": a.source, "ok": not problems, "problems": problems, **summary}
        env.out(out, lambda: _check_text(a.source, summary, problems))
        return EXIT_OK if not problems else EXIT_FAILED
    pid, _ = server_pid(env)
    if pid is not None:
        raise provisioning.Conflict("server", f"chf serve (pid {pid}) is running on this store: stop it first")
    result = storage.restore_store(env.config, a.source, keep_id=a.keep_id)

    def text() -> str:
        aside = result["previous_store"]
        ident = (
            f"store id {result['store_id']} kept"
            if result["store_id"] == result["backup_store_id"]
            else f"new store id {result['store_id']} (the backup's was {result['backup_store_id']})"
        )
        return (
            f"restored {result['from']} into {result['restored']}: up to event {result['last_event_seq']:,}; "
            f"{_counts_text(result['counts'])}; {ident}\n"
            + (f"the previous store is kept in {aside}" if aside else "there was no store before")
        )

    env.out(result, text)
    return EXIT_OK


def _check_text(path: str, summary: dict[str, Any], problems: list[str]) -> str:
    if problems:
        return f"backup {path} is NOT good:\n  " + "\n  ".join(problems)
    return (
        f"backup {path} is good: store {summary['store_id']}, up to event {summary['last_event_seq']:,}; "
        f"{_counts_text(summary['counts'])}"
    )


# ----------------------------------------------------------------------------------------------------------------------
# store copy and verify
# ----------------------------------------------------------------------------------------------------------------------
class Bars:
    """One progress bar per kind of record, drawn on stderr when wanted (tools.progress)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Progress] = {}

    def __call__(self, kind: str, done: int, expected: int, final: bool) -> None:
        bar = self.bars.get(kind)
        if bar is None:
            bar = self.bars[kind] = Progress(expected, self.enabled, unit="records", label=kind[:11])
        # `expected` comes from Store.stat() before the snapshot: a serving source may have grown since.
        bar.total = max(expected, done, 1)
        bar.update(done, done, final=final)
        if final:
            del self.bars[kind]


def _open(env: Env, spec: str | None, create: bool) -> tuple[storage.Store, str]:
    if spec is None:
        if not storage.store_exists(env.config):
            raise provisioning.NotFound("from", f"the configured store {env.config.store.path} does not exist")
        return storage.open_store(env.config), f"{env.config.source} (lmdb:{env.config.store.path})"
    return storage.open_store_at(spec, create=create)


def _report_text(report: dict[str, Any], source: str, dest: str) -> str:
    lines = [f"{source} -> {dest}: store {report['store_id']['destination']}"]
    if "copied" in report:
        lines.append(f"copied up to event {report['last_event_seq']['source']:,} in {report['seconds']['copy']:.2f} s")
    width = max(len(name) for name in report["counts"])
    for name, c in report["counts"].items():
        mark = "ok" if c["equal"] else "DIFFERENT"
        lines.append(f"  {name:<{width}} {c['source']:>12,} {c['destination']:>12,}  {mark}")
    lines.append("verified: identical" if report["ok"] else "verified: the stores DIFFER")
    lines += ["  " + d for d in report["differences"]]
    return "\n".join(lines)


def _compare(env: Env, copy: bool) -> int:
    a = env.args
    source, source_name = _open(env, a.source, create=False)
    try:
        dest, dest_name = _open(env, a.dest, create=copy)
        try:
            bars = Bars(wanted(env.json, a.progress))
            if copy:
                report = storecopy.copy_store(source, dest, batch=a.batch, progress=bars)
            else:
                report = storecopy.verify_stores(source, dest, progress=bars)
        finally:
            dest.close()
    finally:
        source.close()
    report = {"from": source_name, "to": dest_name, **report}
    env.out(report, lambda: _report_text(report, source_name, dest_name))
    return EXIT_OK if report["ok"] else EXIT_FAILED


def cmd_store_copy(env: Env) -> int:
    return _compare(env, copy=True)


def cmd_store_verify(env: Env) -> int:
    return _compare(env, copy=False)


# ----------------------------------------------------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------------------------------------------------
STORE_HELP = f"a store: {storage.STORE_FORMS}"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "backup",
        parents=[common],
        help="a consistent, compacted, verified copy of the LMDB store, also while chf serve runs",
    )
    p.add_argument("dest", help="the backup directory to create (it must not exist)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore", parents=[common], help="put a backup in place of the store (chf serve stopped); keeps the old one"
    )
    p.add_argument("source", help="a backup directory made by chf backup")
    p.add_argument(
        "--keep-id",
        action="store_true",
        help="keep the backup's store id (only when nothing ran on the store after the backup)",
    )
    p.add_argument("--check-only", action="store_true", help="check the backup against its manifest; change nothing")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("store", parents=[common], help="the store as a whole: copy between stores, compare")
    g = p.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    for name, func, text in (
        ("copy", cmd_store_copy, "copy everything of a store (one read snapshot) into an empty one, then verify"),
        ("verify", cmd_store_verify, "compare two stores: counts, records, balances, event sequence"),
    ):
        p = g.add_parser(name, parents=[common], help=text)
        p.add_argument("--from", dest="source", help=f"{STORE_HELP} (default: the configured store)")
        p.add_argument("--to", dest="dest", required=True, help=STORE_HELP)
        p.add_argument("--progress", action="store_true", help="progress bars on stderr even when not a terminal")
        if name == "copy":
            p.add_argument("--batch", type=int, default=2000, help="records per durable write (default 2000)")
        p.set_defaults(func=func)
