"""`chf backup`, `chf restore`: the store as a whole (README "Backup and restore").

- `chf backup DEST`: a consistent, compacted copy of the configured LMDB store while `chf serve` runs, verified
  before it takes its name (chf.runtime.storage.backup_store, store/lmdbbackup.py).
- `chf restore SRC`: refused while `chf serve` (or any process) has the store open; checks the backup, swaps it
  in atomically and keeps the previous store aside. `--check-only` checks a backup and changes nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from chf.core import provisioning
from chf.runtime import storage
from tools.cli_admin import server_pid
from tools.cli_env import EXIT_FAILED, EXIT_OK, Env

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
            f"copied in {s['copy']:.2f} s, digested in {s['digest']:.2f} s, verified in {s['verify']:.2f} s"
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
# argument parsing
# ----------------------------------------------------------------------------------------------------------------------
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
