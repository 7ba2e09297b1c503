"""The progress bar of the long `chf` commands (subscriber import, reconcile, report): one line on stderr, redrawn
at most 5 times a second, and only for a person watching: on a terminal, and not with --json (whose output a
program reads), unless --progress asks for it anyway (a benchmark's log)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

WIDTH = 30
REDRAW = 0.2  # seconds between two drawings


def wanted(json_output: bool, forced: bool = False, stream: TextIO | None = None) -> bool:
    """Whether to draw: --progress, or a terminal on stderr and no --json."""
    stream = sys.stderr if stream is None else stream
    return forced or (not json_output and stream.isatty())


class Progress:
    """`[#####...]  42.0%    123,456 rows 3 skipped    45,678 rows/s`: `done` out of `total` (bytes of a file,
    events of the spool, ...) fills the bar; `count` of `unit` is what was processed, at its rate since start."""

    def __init__(self, total: int, enabled: bool, *, unit: str = "rows", label: str = "") -> None:
        self.total = max(total, 1)
        self.enabled = enabled
        self.unit = unit
        self.label = f"{label:<11} " if label else ""
        self.started = time.perf_counter()
        self.drawn = 0.0

    def update(self, done: int, count: int, skipped: int | None = None, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.drawn < REDRAW:
            return
        self.drawn = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * WIDTH)
        rate = count / max(now - self.started, 1e-9)
        extra = f" {skipped:,} skipped" if skipped is not None else ""
        line = f"\r{self.label}[{bar:<{WIDTH}}] {frac:6.1%} {count:>10,} {self.unit}{extra} {rate:>9,.0f} {self.unit}/s"
        sys.stderr.write(line)
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def clear(self) -> None:
        """Erase the bar's line, before a message is printed on stderr."""
        if self.enabled:
            sys.stderr.write("\r\x1b[K")


def file_position(handle: Any) -> int:
    """Bytes read so far from a text file (its buffer's position: ahead by at most one read-ahead chunk)."""
    try:
        return int(handle.buffer.tell())
    except (AttributeError, OSError, ValueError):
        return 0
