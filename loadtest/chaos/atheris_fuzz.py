"""Coverage-guided fuzzing (atheris, libFuzzer) of the decoders a peer's bytes reach, in process.

    python -m loadtest.chaos.atheris_fuzz TARGET CORPUS_DIR [libFuzzer options, e.g. -runs=20000 -max_total_time=10]

Targets:
  gy    bytes -> Diameter header -> the CCR decoders (gy/ccr_fast.py's walker and gy/ccr_reference.py): a
        DecodeError is the only allowed failure (it becomes a Result-Code with Failed-AVP).
  nchf  bytes -> JSON -> the ChargingDataRequest mapping (create and update): ValueError, UnicodeDecodeError and
        RecursionError of the JSON decoder (400 INVALID_MSG_FORMAT) and InvalidRequest (400 with invalidParams).
  h2    bytes after the connection preface -> the server's h2 connection (the Nchf server's configuration and
        patches): h2's own errors (GOAWAY) only.

The modules the project compiles (native-modules.txt) are loaded from their Python source here, so that atheris
can see their branches. Anything else raised is a finding: libFuzzer prints it with the input and exits non-zero.
Run as a child process (libFuzzer ends the process when it is done); loadtest.chaos runs each target this way.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the compiled modules of native-modules.txt from their .py source instead."""

    def __init__(self) -> None:
        lines = (REPO / "native-modules.txt").read_text().splitlines()
        self.sources = {
            line.strip()[:-3].replace("/", "."): REPO / line.strip() for line in lines if line.strip().endswith(".py")
        }

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        return importlib.util.spec_from_file_location(fullname, source) if source is not None else None


def gy_target() -> Callable[[bytes], None]:
    from gy.ccr_fast import parse_ccr
    from gy.ccr_reference import parse_ccr_reference
    from gy.codec import DecodeError, decode_header

    def one(data: bytes) -> None:
        if len(data) < 20:
            return
        buf = data[:1] + len(data).to_bytes(3, "big") + data[4:]
        try:
            decode_header(buf)
        except DecodeError:
            return
        for parse in (parse_ccr, parse_ccr_reference):
            with contextlib.suppress(DecodeError):
                parse(decode_header(buf))

    return one


def nchf_target() -> Callable[[bytes], None]:
    from nchf.mapping import InvalidRequest, parse_request

    def one(data: bytes) -> None:
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        for creating in (True, False):
            with contextlib.suppress(InvalidRequest):
                parse_request(body, creating=creating)

    return one


def h2_target() -> Callable[[bytes], None]:
    import h2.exceptions

    from nchf.h2connection import ServerH2Connection, server_h2_config

    config = server_h2_config()

    def one(data: bytes) -> None:
        conn = ServerH2Connection(config=config)
        conn.initiate_connection()
        with contextlib.suppress(h2.exceptions.H2Error):
            conn.receive_data(PREFACE + data)

    return one


TARGETS = {
    "gy": (gy_target, ["gy"]),
    "nchf": (nchf_target, ["nchf", "json"]),
    "h2": (h2_target, ["nchf", "h2", "hpack", "hyperframe"]),
}


def seed_inputs(name: str) -> list[bytes]:
    """Well-formed inputs for libFuzzer to start from (random bytes alone rarely get past the first check)."""
    if name == "gy":
        from loadtest.chaos.gyfuzz import seeds

        return seeds("fuzz.chaos", "chaos", "208990000000001")
    if name == "nchf":
        from loadtest.chaos.nchffuzz import seeds as nchf_seeds

        return [json.dumps(doc).encode() for doc in nchf_seeds("208990000000001")]
    from loadtest.chaos.nchffuzz import client_bytes

    return [client_bytes("208990000000001")[len(PREFACE) :]]


def main(argv: list[str]) -> None:
    import atheris

    name, corpus = argv[1], argv[2]
    build, packages = TARGETS[name]
    sys.meta_path.insert(0, _SourceFirst())
    with atheris.instrument_imports(include=packages):
        one = build()
    for n, data in enumerate(seed_inputs(name)):
        Path(corpus, f"seed{n}").write_bytes(data)
    atheris.Setup([argv[0], *argv[3:], corpus], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
