"""The long commands (`chf subscriber import`, `chf reconcile`, `chf report`) draw a progress bar on stderr when
it is a terminal (a real pseudo-terminal here), and never with --json or when stderr is a pipe: their output stays
what a program reads."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO
from tools.progress import Progress, wanted

IMSI = "208019000000001"  # a line of conf/demo.toml
BAR = "] 100.0%"


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="chf-progress-") as name:
        path = Path(name)
        shutil.copy(REPO / "conf" / "catalogue.toml", path / "catalogue.toml")
        (path / "chf.toml").write_text(
            '[chf]\ndata_dir = "var"\ncatalogue = "catalogue.toml"\n[store]\npath = "var/chf.lmdb"\nmap_size_mb = 64\n'
        )
        (path / "mno.csv").write_text(
            "imsi,start,end,rating_group,bytes_up,bytes_down\n"
            f"{IMSI},2026-11-02T10:00:00Z,2026-11-02T11:00:00Z,10,1000,2000\n"
            "12,2026-11-02T10:00:00Z,2026-11-02T11:00:00Z,10,1000,2000\n"
        )
        (path / "lines.csv").write_text("imsi,account\n208019000000901,alice\n208019000000902,alice\n")
        status, _, err = run(path, ["init", "--demo", "--demo-file", str(REPO / "conf" / "demo.toml")], tty=False)
        assert status == 0, err
        yield path


def run(home: Path, args: list[str], *, tty: bool) -> tuple[int, str, str]:
    """`chf ARGS` with stdout to a file and stderr on a pseudo-terminal (tty) or a pipe: (status, stdout, stderr)."""
    cmd = [sys.executable, "-m", "tools.cli", "--config", "chf.toml", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile("w+") as out:
        if not tty:
            done = subprocess.run(cmd, cwd=home, env=env, stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
            out.seek(0)
            return done.returncode, out.read(), done.stderr
        master, slave = pty.openpty()
        proc = subprocess.Popen(cmd, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=slave)
        os.close(slave)
        chunks = []
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1.0)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the command closed the terminal (it exited)
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(master)
        status = proc.wait(30)
        out.seek(0)
        return status, out.read(), b"".join(chunks).decode()


def test_progress_draws_only_when_enabled(capsys: pytest.CaptureFixture[str]) -> None:
    Progress(100, False).update(100, 5, final=True)
    assert capsys.readouterr().err == ""
    bar = Progress(200, True, unit="events", label="spool")
    bar.update(50, 10)
    bar.update(60, 12)  # within 0.2 s of the last drawing: not redrawn
    bar.update(200, 40, 2, final=True)
    err = capsys.readouterr().err
    assert err.count("\r") == 2 and err.endswith("\n")
    assert "spool       [#######                       ]  25.0%         10 events" in err
    assert f"[{'#' * 30}] 100.0%         40 events 2 skipped" in err and "events/s" in err
    assert not wanted(False)  # pytest's stderr is no terminal
    assert wanted(True, forced=True)


def test_report_bar_on_a_terminal_only(home: Path) -> None:
    args = ["report", "usage", "--from", "2026-01-01", "--to", "2026-12-31"]
    status, out, err = run(home, args, tty=True)
    assert status == 0 and "usage 2026-01-01" in out
    assert "spool" in err and BAR in err and "events/s" in err
    status, out, err = run(home, ["--json", *args], tty=True)
    assert status == 0 and json.loads(out)["report"] == "usage" and err == ""
    status, out, err = run(home, args, tty=False)
    assert status == 0 and err == ""
    status, out, err = run(home, [*args, "--progress"], tty=False)  # asked for: drawn into the pipe too
    assert BAR in err


def test_reconcile_bars_on_a_terminal_only(home: Path) -> None:
    args = ["reconcile", "--wholesale", "mno.csv", "--from", "2026-11-01", "--to", "2026-11-30", "--out", "rec"]
    status, out, err = run(home, args, tty=True)
    assert status == 1 and "wholesale reconciliation" in out  # discrepancies: a malformed row, usage we never rated
    for phase in ("our usage", "wholesale", "compare"):
        assert any(line.lstrip("\r").startswith(phase) and BAR in line for line in err.splitlines()), (phase, err)
    assert "1 skipped" in err  # the malformed row
    assert "mno.csv:3: imsi: must be 6 to 15 digits" in err  # the message after the bars, on its own line
    status, out, err = run(home, ["--json", *args], tty=True)
    assert status == 1 and json.loads(out)["malformed"] == 1
    assert BAR not in err and "mno.csv:3: imsi" in err
    status, out, err = run(home, args, tty=False)
    assert BAR not in err and "mno.csv:3: imsi" in err


def test_import_bar_on_a_terminal_only(home: Path) -> None:
    status, out, err = run(home, ["subscriber", "import", "lines.csv"], tty=True)
    assert status == 0 and "imported 2" in out
    assert BAR in err and "rows/s" in err
    status, out, err = run(home, ["--json", "subscriber", "import", "lines.csv"], tty=True)
    assert status == 1 and json.loads(out)["skipped"] == 2 and err == ""  # again: duplicates, quietly
