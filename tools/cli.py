"""The `chf` command: one console script with subcommands.

Every subcommand prints readable output, or JSON with `--json`; bad input gives a message naming the field and a
non-zero exit status, with nothing written. Commands that change data open the store themselves (it takes
writers beside a running `chf serve`) and commit durably before they report success. What a subcommand is given
is in tools.cli_env; the subcommand groups register here (SUBCOMMANDS).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable
from typing import Any

from chf.core import provisioning
from chf.core.catalogue import CatalogueError
from chf.core.model import RequestError
from chf.runtime.config import DEFAULT_CONFIG, ConfigError
from chf.runtime.storage import StoreError
from tools import cli_admin, cli_store, reconcile, reports
from tools.cli_env import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Env


# ----------------------------------------------------------------------------------------------------------------------
# init and serve
# ----------------------------------------------------------------------------------------------------------------------
def load_demo(env: Env, path: str) -> dict[str, int]:
    """Load tenants, accounts and lines from a demo TOML file; entries that already exist are skipped."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    engine = env.engine
    now = env.now()
    counts = {"tenants": 0, "accounts": 0, "lines": 0, "skipped": 0}

    def apply(txn: Any) -> None:
        for t in data.get("tenants", []):
            if txn.get_tenant(t["id"]) is not None:
                counts["skipped"] += 1
                continue
            provisioning.create_tenant(
                txn,
                t["id"],
                t.get("name", t["id"]),
                t.get("currency", "EUR"),
                now,
                parent=t.get("parent"),
                tax_profile=t.get("tax_profile"),
                catalogue=engine.catalogue,
            )
            counts["tenants"] += 1
        for a in data.get("accounts", []):
            if txn.get_account(a["id"]) is not None:
                counts["skipped"] += 1
                continue
            provisioning.create_account(
                txn,
                engine,
                account_id=a["id"],
                tenant=a["tenant"],
                payment=a["payment"],
                now=now,
                currency=a.get("currency"),
                balance=a.get("balance", 0),
                credit_limit=a.get("credit_limit", 0),
                cycle_day=a.get("cycle_day", 1),
                parent=a.get("parent"),
                plan=a.get("plan"),
                actor="demo",
                price_list=a.get("price_list"),
                tax_profile=a.get("tax_profile"),
            )
            counts["accounts"] += 1
        for line in data.get("lines", []):
            if txn.subscriber_id_by("imsi", line["imsi"]) is not None:
                counts["skipped"] += 1
                continue
            provisioning.add_line(
                txn,
                engine,
                account=line["account"],
                imsi=line["imsi"],
                msisdn=line.get("msisdn"),
                iccid=line.get("iccid"),
                eid=line.get("eid"),
                plan=line.get("plan"),
                state=line.get("state", "active"),
                now=now,
                actor="demo",
            )
            counts["lines"] += 1

    env.store.write(apply)
    return counts


def cmd_init(env: Env) -> int:
    store = env.store  # creates the environment and its sub-databases
    result: dict[str, Any] = {"store": env.config.store.path, "store_id": store.store_id}
    if env.args.demo:
        with store.read() as txn:
            empty = txn.subscriber_count() == 0 and next(txn.tenants(), None) is None
        if empty or not env.args.if_empty:
            result["demo"] = load_demo(env, env.args.demo_file)
        else:
            result["demo"] = "store not empty: demo data not loaded"
    env.out(result, lambda: "\n".join(f"{k}: {v}" for k, v in result.items()))
    return EXIT_OK


def cmd_serve(env: Env) -> int:
    from tools.serve import serve

    config = env.config
    env.close()
    return serve(config, worker=env.args.worker)


# ----------------------------------------------------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before and after the subcommand. Their defaults are SUPPRESS (filled in
    # by main): a subparser's own default would otherwise overwrite the value of `chf --json account show ...`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=argparse.SUPPRESS, help=f"configuration file (default {DEFAULT_CONFIG} if present)"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of text")
    parser = argparse.ArgumentParser(prog="chf", description="Online charging function", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="create the store; --demo loads the demo tenant and lines")
    p.add_argument("--demo", action="store_true", help="load demo tenants, accounts and lines")
    p.add_argument("--demo-file", default="conf/demo.toml")
    p.add_argument("--if-empty", action="store_true", help="with --demo: only into an empty store")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", parents=[common], help="run the charging function in the foreground")
    # Internal: `chf serve` starts its front-end workers ([server] frontend_workers) with it.
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_serve)

    for register in SUBCOMMANDS:
        register(sub, common)
    return parser


# Further subcommand groups (subscriber, account, catalogue, events, ...) register here.
# cli_admin: tenant, account, subscriber (with import), catalogue, events; cli_store: backup, restore, store.
SUBCOMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    reconcile.register,
    reports.register,
    cli_admin.register,
    cli_store.register,
]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (("config", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    env = Env(args)
    try:
        return int(args.func(env))
    except RequestError as exc:
        print(f"chf: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, provisioning.NotFound | provisioning.Conflict) else EXIT_USAGE
    except (ConfigError, CatalogueError) as exc:
        print("chf: " + "\nchf: ".join(exc.errors), file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"chf: store: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # the reader went away (`chf events tail | head`): not a failure of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        print(f"chf: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    finally:
        env.close()


if __name__ == "__main__":
    sys.exit(main())
