"""`make bench-chaos`: the chaos and fuzz suite against a real `chf serve`, one table of figures at the end.

    python -m loadtest.chaos                      # every section, full size (several minutes)
    python -m loadtest.chaos --short              # the suite's size (seconds per section)
    python -m loadtest.chaos --only overload kill --json

Sections: fuzz (Gy frames before and after CER, Nchf JSON bodies, HTTP/2 frames), atheris (coverage-guided, in
process), abuse (slow, no-read and idle peers with RSS), overload (3x the pinned capacity: goodput, refusal
latency, recovery), kill (SIGKILL under Gy + Nchf debits: lost, doubled). See loadtest/chaos/*.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from loadtest.chaos import suite


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="loadtest.chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--short", action="store_true", help="the test suite's size")
    p.add_argument("--only", nargs="+", choices=list(suite.SECTIONS), help="run these sections only")
    p.add_argument("--factor", type=float, help="overload as a multiple of the capacity (default 3)")
    p.add_argument("--kills", type=int, help="SIGKILLs of the kill section")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    p.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    args = p.parse_args(argv)
    settings = suite.SHORT if args.short else suite.FULL
    if args.factor:
        settings.overload_factor = args.factor
    if args.kills:
        settings.kills = args.kills
    server_cpu, generator_cpu = suite.placement()
    print(
        f"# chf serve on CPU {server_cpu}, the generator on CPU {generator_cpu}; load average "
        f"{os.getloadavg()[0]:.1f} at the start",
        file=sys.stderr,
    )
    rows = suite.run(args.only or list(suite.SECTIONS), settings)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], default=str))
    else:
        print(suite.table(rows))
    return 1 if args.strict and any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
