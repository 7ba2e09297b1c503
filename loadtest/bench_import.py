"""Benchmark `chf subscriber import`: generate a CSV of N lines in a temp directory and import it.

    python -m loadtest.bench_import                      # 1,000,000 lines on plan prepaid-s, 1000 accounts
    python -m loadtest.bench_import --lines 200000 --plan ''

Everything (configuration, store, CSV) lives in a fresh temp directory, removed afterwards unless --keep.
The import runs as the real `chf` command in a subprocess; its own summary line (read, imported, skipped,
seconds, lines/s) is printed, with the process's CPU time and the store size.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.gen_import import generate

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--plan", default="prepaid-s", help="plan of every line ('' for none)")
    p.add_argument("--batch", type=int, default=None, help="rows per transaction (default: chf's)")
    p.add_argument("--durability", choices=("fsync", "os"), default="fsync")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    a = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="chf-bench-import-"))
    try:
        shutil.copy(REPO / "conf" / "catalogue.toml", work / "catalogue.toml")
        (work / "chf.toml").write_text(
            f'[chf]\ndata_dir = "var"\ncatalogue = "catalogue.toml"\n\n'
            f'[store]\npath = "var/chf.lmdb"\ndurability = "{a.durability}"\n'
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cli = [sys.executable, "-m", "tools.cli", "--config", "chf.toml"]

        def chf(*args: str) -> None:
            subprocess.run([*cli, *args], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)

        chf("tenant", "create", "bench", "--currency", "EUR")
        # The accounts in one bulk step (the benchmark is about lines); through chf.core.provisioning like the CLI.
        setup = (
            "import sys, time\n"
            "from chf.core import provisioning\n"
            "from chf.core.catalogue_loader import load_catalogue\nfrom chf.core.engine import Engine\n"
            "from chf.runtime.config import load_config\nfrom tools.serve import open_store\n"
            "st = open_store(load_config('chf.toml')); eng = Engine(load_catalogue('catalogue.toml'))\n"
            "now = int(time.time())\n"
            f"st.run_batch([lambda t, i=i: provisioning.create_account(t, eng, account_id=f'mig-{{i}}', "
            f"tenant='bench', "
            f"payment='prepaid', now=now, balance=10**13) for i in range({a.accounts})])\n"
            "st.close()\n"
        )
        subprocess.run([sys.executable, "-c", setup], cwd=work, env=env, check=True)
        csv_path = work / "lines.csv"
        started = time.perf_counter()
        generate(str(csv_path), a.lines, a.accounts, a.plan or None, "csv", "mig-")
        size_mb = csv_path.stat().st_size / 1e6
        print(f"generated {a.lines:,} lines ({size_mb:.0f} MB) in {time.perf_counter() - started:.1f} s", flush=True)

        args = ["subscriber", "import", str(csv_path), "--progress"]
        if a.batch:
            args += ["--batch", str(a.batch)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([*cli, *args], cwd=work, env=env)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        size = sum(f.stat().st_size for f in (work / "var" / "chf.lmdb").iterdir())
        print(
            f"import: {a.lines:,} lines, plan {a.plan or '-'}, {a.accounts} accounts, durability {a.durability}: "
            f"wall {wall:.1f} s ({a.lines / wall:,.0f} lines/s), cpu {cpu:.1f} s, store {size / 1e6:.0f} MB, "
            f"exit {done.returncode}"
        )
        return done.returncode
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
