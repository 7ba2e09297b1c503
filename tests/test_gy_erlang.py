"""Interop with another implementation: Erlang/OTP's `diameter` application as the PGW (tests/erlang/).

OTP performs CER/CEA and the RFC 3539 watchdog itself; tests/erlang/gy_interop.erl drives CCR-I, CCR-U, CCR-E
and CCR-T with the RFC 4006 dictionary that ships with OTP's diameter examples (rfc4006_cc.dia, compiled here
with diameterc), answers our RAR (after a top-up) and ASR (after a suspension), and ends with DPR/DPA.
Debian packages: erlang-base erlang-diameter erlang-dev erlang-examples (.ci/run installs them).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from chf.core import provisioning
from gy import grammar
from tests.gy_support import REPO, provision, running_server
from tests.support import require_tool, unavailable

ERLANG_DIR = REPO / "tests" / "erlang"
TOOLS = ("erl", "erlc", "diameterc")
IMSI = "208010000000001"


def _tools_or_skip() -> None:
    for tool in TOOLS:
        require_tool(tool)


def _build(out: Path) -> None:
    """rfc4005_nas (rfc4006_cc takes Filter-Id from it) and rfc4006_cc from OTP's examples, our Gy dictionary on
    top of them, and the peer module. The examples say `@inherits common`: that is OTP's base dictionary."""
    lib = subprocess.run(
        ["erl", "-noshell", "-eval", 'io:format("~s", [code:lib_dir(diameter)]), halt().'],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    examples = Path(lib) / "examples" / "dict"
    if not (examples / "rfc4006_cc.dia").exists():
        unavailable(f"{examples / 'rfc4006_cc.dia'} is missing (Debian package erlang-examples)")
    base = ["--inherits", "common/diameter_gen_base_rfc6733"]
    steps = [
        ["diameterc", "-o", str(out), *base, str(examples / "rfc4005_nas.dia")],
        ["erlc", "-o", str(out), str(out / "rfc4005_nas.erl")],
        ["diameterc", "-o", str(out), "-i", str(out), *base, str(examples / "rfc4006_cc.dia")],
        ["erlc", "-o", str(out), str(out / "rfc4006_cc.erl")],
        ["diameterc", "-o", str(out), "-i", str(out), str(ERLANG_DIR / "gy_test.dia")],
        ["erlc", "-o", str(out), str(out / "gy_test.erl")],
        ["erlc", "-o", str(out), str(ERLANG_DIR / "gy_interop.erl")],
        ["erlc", "-o", str(out), str(ERLANG_DIR / "gy_grammar_dump.erl")],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=120, cwd=out)
        assert done.returncode == 0, f"{' '.join(step)}: {done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def otp_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dictionaries and modules of tests/erlang/, compiled once for the tests of this file."""
    _tools_or_skip()
    build = tmp_path_factory.mktemp("erl")
    _build(build)
    return build


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


async def test_otp_diameter_peer(tmp_path: Path, otp_build: Path) -> None:
    build = otp_build
    async with running_server(tmp_path, gy="allow_unknown_peers = true\ntw = 3.0") as srv:
        await srv.op(provision(imsi=IMSI, balance=15_000))
        peer = await asyncio.create_subprocess_exec(
            "erl",
            "-noshell",
            "-pa",
            str(build),
            "-run",
            "gy_interop",
            "main",
            "127.0.0.1",
            str(srv.gy.port),
            IMSI,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert peer.stdout is not None
        lines: dict[str, dict[str, str]] = {}
        transcript: list[str] = []

        async def until(step: str) -> dict[str, str]:
            while step not in lines:
                raw = await asyncio.wait_for(peer.stdout.readline(), 30)  # type: ignore[union-attr]
                if not raw:
                    raise AssertionError(f"the Erlang peer ended before {step!r}:\n" + "".join(transcript))
                line = raw.decode(errors="replace")
                transcript.append(line)
                name, _, rest = line.strip().partition(" ")
                lines[name] = _fields(rest)
            return lines[step]

        try:
            await until("cea")
            assert srv.gy.by_host.keys() == {"erl.test"}
            # CCR-I: 1 MB granted on rating group 10 (0.01 EUR of the 0.015 EUR balance reserved)
            assert await until("ccr_i") == {
                "rc": "2001",
                "mscc_rc": "2001",
                "granted": "1000000",
                "validity": "600",
                "volume_threshold": "200000",
            }
            # CCR-U: the MB used; 0.005 EUR left is not a whole MB: 4012 (CREDIT_LIMIT_REACHED)
            assert await until("ccr_u") == {"rc": "4012", "mscc_rc": "4012"}
            # CCR-E price enquiry: 2 SMS at 0.08 EUR = 160,000 x 10^-6 EUR (978)
            assert await until("ccr_e") == {
                "rc": "2001",
                "cost_digits": "160000",
                "cost_exponent": "-6",
                "currency": "978",
            }
            session = (await until("ready"))["session"]
            await srv.service.operate(
                lambda txn, engine, now: provisioning.topup(
                    txn, engine, "a1", 5_000_000, now=now, actor="t", reason="t"
                )
            )
            # AUTHORIZE_ONLY, every rating group of the session (no Rating-Group)
            assert await until("rar") == {"session": session, "type": "0", "rating_group": "undefined"}
            await srv.service.operate(
                lambda txn, engine, now: provisioning.set_state(
                    txn, engine, IMSI, "suspended", now=now, actor="t", reason="t"
                )
            )
            assert await until("asr") == {"session": session}
            assert (await until("ccr_t"))["rc"] == "2001"
            watchdog = await until("watchdog")
            assert int(watchdog["dwr_received"]) >= 1 and int(watchdog["dwa_received"]) >= 1, watchdog
            await until("dpr")
            assert await asyncio.wait_for(peer.wait(), 30) == 0, "".join(transcript)
        finally:
            if peer.returncode is None:
                peer.kill()
                await peer.wait()
        for _ in range(50):  # the server closes its side after the DPA
            if not srv.gy.connections:
                break
            await asyncio.sleep(0.1)
        assert not srv.gy.connections and not srv.gy.by_host
        assert srv.gy.pending_signals == {}  # the RAA and ASA were matched to our RAR and ASR


def test_the_grammar_table_is_otp_s(otp_build: Path) -> None:
    """gy/grammar.py against OTP's compiled dictionaries: the RFC 6733 base messages (CER/CEA, DWR/DWA, DPR/DPA,
    answer-message) as OTP ships them, the credit-control ones as tests/erlang/gy_test.dia compiles, and the M bit
    of every IETF AVP of FLAG_RULES as OTP's base, rfc4006_cc and rfc4005_nas dictionaries set it."""
    ietf = [name for name in grammar.FLAG_RULES if not grammar.avp(name).vendor]
    out = subprocess.run(
        ["erl", "-noshell", "-pa", str(otp_build), "-run", "gy_grammar_dump", "main", *ietf],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    messages = {**grammar.MESSAGES, "answer-message": grammar.ERROR_ANSWER}
    seen = set()
    for line in out.splitlines():
        kind, name, *rest = line.split()
        if kind == "msg":
            cmd = messages[name]
            seen.add(name)
            code, flags, app = (int(x) for x in rest[:3])
            error = 0x20 if cmd is grammar.ERROR_ANSWER else 0
            assert (code, flags, app) == (cmd.code, 0x80 * cmd.request | 0x40 * cmd.proxiable | error, cmd.app), name
            theirs = {}
            for rule in rest[3:]:
                avp, _, arity = rule.partition("=")
                low, _, high = arity.partition(":")
                theirs[avp] = (int(low), grammar.MANY if high == "*" else int(high))
            ours = {r.name: (r.min, r.max) for r in cmd.rules if r.name == grammar.ANY or not r.definition.vendor}
            assert theirs == ours, name
        else:
            assert rest != ["none"], f"{name}: in no OTP dictionary"
            code, flags = int(rest[0]), int(rest[1])
            assert code == grammar.avp(name).code, name
            rule = grammar.FLAG_RULES[name]
            # OTP encodes an AVP whose M bit is MAY without it, as we do
            assert bool(flags & 0x40) == (rule == grammar.M), f"{name}: OTP flags {flags}, our rule {rule}"
    assert seen == set(messages)
