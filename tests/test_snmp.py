"""The SNMP agent: the AgentX codec and the MIB view on their own, the alarms, the Diameter peer counts, the MIB
against smilint and snmptranslate, and `chf serve`'s subagent through a real net-snmp snmpd (snmpwalk / snmpget,
SNMPv2c and SNMPv3 authPriv) with its notifications received by a real snmptrapd."""

from __future__ import annotations

import asyncio
import os
import re
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chf.core.catalogue import CatalogueError
from chf.runtime import metrics
from chf.runtime.peers import DIAMETER_PEERS, PeerTable, result_code
from chf.snmp import agentx as ax
from chf.snmp import mib
from chf.snmp.config import SnmpConfigError, parse_snmp_config
from chf.snmp.mib import MibView, ViewBuilder, answer
from chf.snmp.monitor import (
    CATALOGUE_RELOAD_FAILED,
    EXPORT_BACKLOG,
    OVERLOAD,
    PEER_DOWN,
    STORE_FILL,
    WORKER_EXITED,
    Monitor,
    Thresholds,
)
from chf.snmp.sample import PeerSample, Sample, take_sample
from gy.client import Mscc, ccr_avps
from gy.codec import E, encode_message
from tests.gy_support import provision, running_server
from tests.snmp_support import MIB_DIRS, Snmpd, Snmptrapd
from tests.support import REPO, require_tool

ROOT = mib.DEFAULT_ARC


# ----------------------------------------------------------------------------------------------------------------------
# AgentX codec
# ----------------------------------------------------------------------------------------------------------------------
def test_open_pdu_bytes_follow_rfc2741() -> None:
    pdu = ax.Pdu(ax.OPEN, 0, 0, 7, timeout=5, oid=(1, 3, 6, 1, 4, 1, 32473), descr=b"chf")
    data = ax.encode(pdu)
    # header: version 1, type 1, flags NETWORK_BYTE_ORDER, reserved; session, transaction, packet ids; length
    assert data[:4] == bytes([1, 1, 0x10, 0])
    assert struct.unpack(">IIII", data[4:20]) == (0, 0, 7, len(data) - 20)
    # timeout + 3 reserved; OID with prefix 4 (1.3.6.1.4) and n_subid 2; octet string padded to 4
    assert data[20:24] == bytes([5, 0, 0, 0])
    assert data[24:28] == bytes([2, 4, 0, 0]) and struct.unpack(">II", data[28:36]) == (1, 32473)
    assert data[36:] == struct.pack(">I", 3) + b"chf\0"


def test_every_pdu_type_round_trips_and_splits_anywhere() -> None:
    vbs = [
        ax.VarBind(ax.INTEGER, (1, 3, 6, 1, 2, 1, 1, 7, 0), -5),
        ax.VarBind(ax.OCTET_STRING, (1, 3, 6, 1, 4, 1, 32473, 1), b"hello"),
        ax.VarBind(ax.NULL, (1, 2, 3)),
        ax.VarBind(ax.OBJECT_IDENTIFIER, (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), (1, 3, 6, 1, 4, 1, 32473, 0, 1)),
        ax.VarBind(ax.IP_ADDRESS, (1, 3, 6, 1, 9, 9), b"\x7f\0\0\1"),
        ax.VarBind(ax.COUNTER32, (1, 3, 6, 1, 9, 10), 2**32 - 1),
        ax.VarBind(ax.GAUGE32, (1, 3, 6, 1, 9, 11), 7),
        ax.VarBind(ax.TIME_TICKS, (1, 3, 6, 1, 9, 12), 100),
        ax.VarBind(ax.OPAQUE, (1, 3, 6, 1, 9, 13), b"\x01\x02"),
        ax.VarBind(ax.COUNTER64, (1, 3, 6, 1, 9, 14), 2**64 - 1),
        ax.VarBind(ax.NO_SUCH_OBJECT, (1, 3, 6, 1, 9, 15)),
        ax.VarBind(ax.NO_SUCH_INSTANCE, (1, 3, 6, 1, 9, 16)),
        ax.VarBind(ax.END_OF_MIB_VIEW, (1, 3, 6, 1, 9, 17)),
    ]
    ranges = [ax.SearchRange((1, 3, 6, 1, 4, 1, 32473), (1, 3, 6, 1, 4, 1, 32474), True), ax.SearchRange((1, 3))]
    pdus = [
        ax.Pdu(ax.OPEN, 1, 2, 3, timeout=5, oid=ROOT, descr=b"x"),
        ax.Pdu(ax.CLOSE, 1, 2, 3, reason=ax.REASON_SHUTDOWN),
        ax.Pdu(ax.REGISTER, 1, 2, 3, timeout=4, priority=100, oid=ROOT),
        ax.Pdu(ax.REGISTER, 1, 2, 3, oid=(1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 7), range_subid=11, upper_bound=9),
        ax.Pdu(ax.UNREGISTER, 1, 2, 3, oid=ROOT, context=b"ctx"),
        ax.Pdu(ax.GET, 1, 2, 3, ranges=[ax.SearchRange((1, 3, 6, 1, 2, 1, 1, 3, 0))]),
        ax.Pdu(ax.GET_NEXT, 1, 2, 3, ranges=ranges, context=b"c"),
        ax.Pdu(ax.GET_BULK, 1, 2, 3, non_repeaters=1, max_repetitions=10, ranges=ranges),
        ax.Pdu(ax.TEST_SET, 1, 2, 3, varbinds=vbs[:2]),
        ax.Pdu(ax.COMMIT_SET, 1, 2, 3),
        ax.Pdu(ax.UNDO_SET, 1, 2, 3),
        ax.Pdu(ax.CLEANUP_SET, 1, 2, 3),
        ax.Pdu(ax.NOTIFY, 1, 2, 3, varbinds=vbs),
        ax.Pdu(ax.PING, 1, 2, 3),
        ax.Pdu(ax.ADD_AGENT_CAPS, 1, 2, 3, oid=ROOT, descr=b"CHF-MIB"),
        ax.Pdu(ax.REMOVE_AGENT_CAPS, 1, 2, 3, oid=ROOT),
        ax.Pdu(ax.RESPONSE, 1, 2, 3, sys_uptime=99, error=ax.NOT_WRITABLE, index=2, varbinds=vbs),
    ]
    stream = b"".join(ax.encode(p) for p in pdus)
    for cut in (1, 3, 19, 20, 21, 57, len(stream) // 2):
        decoder = ax.Decoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [replace(p, flags=0) for p in got] == [replace(p, flags=0) for p in pdus]
        assert [ax.encode(p) for p in got] == [ax.encode(p) for p in pdus]
    assert len(ax.Decoder().feed(stream[:-1])) == len(pdus) - 1


def test_decoder_reads_little_endian_pdus() -> None:
    """The master may send in host byte order (NETWORK_BYTE_ORDER clear): a GetNext as net-snmp on x86 may."""
    oid = struct.pack("<BBBx3I", 3, 4, 1, 1, 32473, 1)  # 1.3.6.1.4.1.32473.1, include
    end = struct.pack("<BBBx", 0, 0, 0)
    payload = oid + end
    header = struct.pack("<BBBxIIII", 1, ax.GET_NEXT, 0, 5, 6, 7, len(payload))
    (pdu,) = ax.Decoder().feed(header + payload)
    assert (pdu.session_id, pdu.transaction_id, pdu.packet_id) == (5, 6, 7)
    assert pdu.ranges == [ax.SearchRange((1, 3, 6, 1, 4, 1, 32473, 1), (), True)]


@pytest.mark.parametrize(
    "data",
    [
        bytes([2, 1, 0x10, 0]) + bytes(16),  # version 2
        bytes([1, 1, 0x10, 0]) + bytes(12) + struct.pack(">I", 6),  # length not a multiple of 4
        bytes([1, 99, 0x10, 0]) + bytes(16),  # unknown type
        bytes([1, ax.CLOSE, 0x10, 0]) + bytes(12) + struct.pack(">I", 8) + bytes(8),  # bytes left over
        bytes([1, ax.RESPONSE, 0x10, 0]) + bytes(12) + struct.pack(">I", 4) + bytes(4),  # payload cut short
    ],
)
def test_malformed_pdus_are_parse_errors(data: bytes) -> None:
    with pytest.raises(ax.ParseError):
        ax.Decoder().feed(data)


# ----------------------------------------------------------------------------------------------------------------------
# MIB view: Get, GetNext, GetBulk
# ----------------------------------------------------------------------------------------------------------------------
def small_view() -> MibView:
    values = {
        (*ROOT, 1, 4, 1, 0): (ax.GAUGE32, 1),
        (*ROOT, 1, 4, 2, 0): (ax.GAUGE32, 2),
        (*ROOT, 1, 5, 1, 1, 2, 5, 102, 105, 108, 101, 115): (ax.GAUGE32, 3),
    }
    return MibView(values, {(*ROOT, 1, 4, 1), (*ROOT, 1, 4, 2), (*ROOT, 1, 5, 1, 1, 2)})


def test_get_getnext_getbulk_follow_rfc2741() -> None:
    view = small_view()
    rng = ax.SearchRange
    got = answer(
        ax.Pdu(ax.GET, 9, 8, 7, ranges=[rng((*ROOT, 1, 4, 1, 0)), rng((*ROOT, 1, 4, 1, 1)), rng((*ROOT, 9))]), view
    )
    assert (got.session_id, got.transaction_id, got.packet_id) == (9, 8, 7)
    assert [vb.type for vb in got.varbinds] == [ax.GAUGE32, ax.NO_SUCH_INSTANCE, ax.NO_SUCH_OBJECT]
    got = answer(
        ax.Pdu(
            ax.GET_NEXT,
            ranges=[
                rng(ROOT),
                rng((*ROOT, 1, 4, 1, 0), include=True),
                rng((*ROOT, 1, 4, 2, 0), (*ROOT, 1, 5)),
                rng((*ROOT, 2)),
            ],
        ),
        view,
    )
    assert [vb.name for vb in got.varbinds[:2]] == [(*ROOT, 1, 4, 1, 0)] * 2
    assert [vb.type for vb in got.varbinds[2:]] == [ax.END_OF_MIB_VIEW] * 2  # bounded by its end; past the last
    got = answer(ax.Pdu(ax.GET_BULK, non_repeaters=1, max_repetitions=5, ranges=[rng(ROOT), rng((*ROOT, 1, 4))]), view)
    assert [vb.value for vb in got.varbinds] == [1, 1, 2, 3, None]
    assert got.varbinds[-1].type == ax.END_OF_MIB_VIEW


def test_string_index_and_date_and_time() -> None:
    assert mib.string_index("nats") == (4, 110, 97, 116, 115)
    assert mib.date_and_time(0) == bytes(8)
    assert mib.date_and_time(1_700_000_000.5) == bytes([7, 231, 11, 14, 22, 13, 20, 5]) + b"+\0\0"
    assert mib.inet_address("127.0.0.1") == (1, b"\x7f\0\0\x01") and mib.inet_address("::1")[0] == 2


# ----------------------------------------------------------------------------------------------------------------------
# Alarms: raised once, cleared once
# ----------------------------------------------------------------------------------------------------------------------
def sample(t: float, peers: dict[str, int] | None = None, **series: dict[tuple[tuple[str, str], ...], float]) -> Sample:
    s = Sample(t)
    for name, rows in series.items():
        s.samples[name] = [(dict(labels), value) for labels, value in rows.items()]
    for identity, connections in (peers or {}).items():
        s.peers[identity] = PeerSample(identity, connections=connections, address="127.0.0.1")
    return s


def test_each_alarm_is_raised_once_and_cleared_once() -> None:
    monitor = Monitor(Thresholds(store_fill_percent=80, export_backlog_limit=100, overload_hold=5))
    gy = (("interface", "gy"),)
    files = (("sink", "files"),)
    w0 = (("worker", "0"),)

    def step(
        t: float,
        *,
        peer: float,
        overload: float,
        used: float,
        backlog: float,
        exits: float,
        up: float,
        failures: float,
        failed: float,
    ) -> list[tuple[int, str, str]]:
        s = sample(
            t,
            {"pgw": int(peer)},
            chf_overload_rejections_total={gy: overload},
            chf_store_used_bytes={(): used},
            chf_store_map_size_bytes={(): 100.0},
            chf_export_backlog_events={files: backlog},
            chf_export_delivered_events_total={files: t},
            chf_frontend_worker_exits_total={w0: exits},
            chf_frontend_worker_up={w0: up},
            chf_catalogue_reloads_total={(("result", "failed"),): failures},
            chf_catalogue_reload_failed={(): failed},
        )
        names = {1: "raise", 0: "clear"}
        return sorted((n.alarm.type, n.alarm.resource, names[n.number % 2]) for n in monitor.update(s))

    normal = {
        "peer": 1,
        "overload": 3.0,
        "used": 10.0,
        "backlog": 0.0,
        "exits": 0.0,
        "up": 1.0,
        "failures": 0.0,
        "failed": 0.0,
    }
    assert step(0, **normal) == []  # counts there at start are the baseline
    trouble = {
        **normal,
        "peer": 0,
        "overload": 4.0,
        "used": 85.0,
        "backlog": 101.0,
        "exits": 1.0,
        "up": 0.0,
        "failures": 1.0,
        "failed": 1.0,
    }
    assert step(1, **trouble) == sorted(
        [
            (PEER_DOWN, "pgw", "raise"),
            (OVERLOAD, "gy", "raise"),
            (STORE_FILL, "store", "raise"),
            (EXPORT_BACKLOG, "files", "raise"),
            (WORKER_EXITED, "0", "raise"),
            (CATALOGUE_RELOAD_FAILED, "catalogue", "raise"),
        ]
    )
    assert len(monitor.alarms) == 6
    assert step(2, **{**trouble, "overload": 5.0}) == []  # still in trouble: nothing new
    assert step(3, **{**normal, "overload": 5.0, "exits": 1.0, "failures": 1.0}) == sorted(
        [
            (PEER_DOWN, "pgw", "clear"),
            (STORE_FILL, "store", "clear"),
            (EXPORT_BACKLOG, "files", "clear"),
            (WORKER_EXITED, "0", "clear"),
            (CATALOGUE_RELOAD_FAILED, "catalogue", "clear"),
        ]
    )
    assert step(6.9, **{**normal, "overload": 5.0, "exits": 1.0, "failures": 1.0}) == []  # overload held 5 s
    assert step(7, **{**normal, "overload": 5.0, "exits": 1.0, "failures": 1.0}) == [(OVERLOAD, "gy", "clear")]
    assert monitor.alarms == {}
    assert monitor.last_delivery["files"] == 7


# ----------------------------------------------------------------------------------------------------------------------
# Diameter peer counts from the bytes
# ----------------------------------------------------------------------------------------------------------------------
def diameter_stream() -> bytes:
    ident = [E("Origin-Host").octets(b"pgw"), E("Origin-Realm").octets(b"r")]
    return b"".join(
        [
            encode_message(257, 0x80, 0, 1, 1, ident),  # CER
            encode_message(280, 0x80, 0, 2, 2, ident),  # DWR
            encode_message(258, 0x40, 4, 3, 3, [E("Session-Id").text("s"), E("Result-Code").u32(2001), *ident]),
            encode_message(274, 0x40, 4, 4, 4, [E("Session-Id").text("s"), E("Result-Code").u32(5002), *ident]),
            encode_message(272, 0xC0, 4, 5, 5, [E("Session-Id").text("s" * 3000), *ident]),  # a long CCR
        ]
    )


def test_peer_counts_do_not_depend_on_how_the_stream_is_cut() -> None:
    stream = diameter_stream()
    expected: dict[Any, int] | None = None
    for cut in [*range(1, 60), *range(60, len(stream), 97)]:
        table = PeerTable()
        conn = table.connection(("127.0.0.1", 40000))
        conn.received(stream[:cut])
        conn.received(stream[cut:])
        conn.opened("pgw", "r", now=1.0)
        peer = table.peers["pgw"]
        got: dict[Any, int] = {**peer.messages}
        got.update({("class", *k): n for k, n in peer.results.items()})
        assert expected is None or got == expected, cut
        expected = got
    assert expected == {
        ("in", 257, "request"): 1,
        ("in", 280, "request"): 1,
        ("in", 258, "answer"): 1,
        ("in", 274, "answer"): 1,
        ("in", 272, "request"): 1,
        ("class", "in", 2): 1,
        ("class", "in", 5): 1,
    }


def test_sent_answers_are_counted_by_result_code() -> None:
    table = PeerTable()
    conn = table.connection(("::1", 3868, 0, 0))
    conn.opened("pgw", "r", now=100.0)
    cca = encode_message(272, 0x40, 4, 1, 1, [E("Session-Id").text("s"), E("Result-Code").u32(4012)])
    assert result_code(cca, 0, len(cca)) == 4012
    conn.sent(cca + encode_message(258, 0xC0, 4, 2, 2, [E("Session-Id").text("s")]))
    conn.set_suspect(True)
    conn.set_suspect(True)
    peer = table.peers["pgw"]
    assert peer.messages == {("out", 272, "answer"): 1, ("out", 258, "request"): 1}
    assert peer.results == {("out", 4): 1} and table.answers == {("out", 272, 4012): 1}
    assert (peer.address, peer.port, peer.connections, peer.suspect, peer.watchdog_failures) == ("::1", 3868, 1, 1, 1)
    conn.closed(now=200.0)
    assert (peer.connections, peer.suspect, peer.open_since, peer.down_since) == (0, 0, 0.0, 200.0)


def test_config_errors_name_the_field() -> None:
    assert parse_snmp_config({}).enabled is False and parse_snmp_config({}).arc == ROOT
    with pytest.raises(SnmpConfigError) as err:
        parse_snmp_config({"enterprise_arc": "iso.org", "timeout": 0, "colour": 1}, "x.toml")
    text = "\n".join(err.value.errors)
    assert "x.toml: [snmp] enterprise_arc: must be an OBJECT IDENTIFIER in dotted form" in text
    assert "x.toml: [snmp] timeout: must be an integer from 1 to 255, got 0" in text
    assert "x.toml: [snmp] colour: unknown setting" in text


# ----------------------------------------------------------------------------------------------------------------------
# The MIB against libsmi and net-snmp
# ----------------------------------------------------------------------------------------------------------------------
MIB_FILE = REPO / "mibs" / "CHF-MIB.txt"


def mib_env() -> dict[str, str]:
    return {**os.environ, "SMIPATH": f":{REPO / 'tests' / 'mibs'}", "MIBS": "", "MIBDIRS": MIB_DIRS[1:]}


def test_mib_passes_smilint_level_3() -> None:
    smilint = require_tool("smilint")
    out = subprocess.run([smilint, "-l", "3", "-s", str(MIB_FILE)], capture_output=True, text=True, env=mib_env())
    # smilint exits 0 whatever it finds: its output is the verdict
    assert out.stdout + out.stderr == "", out.stdout + out.stderr


def mib_names() -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, OID) of every object the agent serves, as chf/snmp/mib.py spells its OIDs."""
    yield "chfNotifications", (*ROOT, *mib.NOTIFICATIONS)
    yield "chfDiameterPeerTable", (*ROOT, *mib.PEER_TABLE)
    yield "chfDiameterPeerIdentity", (*ROOT, *mib.PEER_TABLE, 1, mib.PEER_IDENTITY)
    yield "chfDiameterPeerUpTime", (*ROOT, *mib.PEER_TABLE, 1, mib.PEER_UPTIME)
    yield "chfDiameterPeerAnswersIn", (*ROOT, *mib.PEER_TABLE, 1, mib.PEER_ANSWERS_IN)
    yield "chfDiameterPeerCmdAnswersOut", (*ROOT, *mib.PEER_CMD_TABLE, 1, 5)
    yield "chfDiameterPeerResultAnswersOut", (*ROOT, *mib.PEER_RESULT_TABLE, 1, 3)
    yield "chfDiameterPeersUp", (*ROOT, *mib.PEERS_UP)
    yield "chfCcrIn", (*ROOT, *mib.CCR_TABLE, 1, 2)
    yield "chfCcaOut", (*ROOT, *mib.CCA_TABLE, 1, 2)
    yield "chfNchfOperationSuccesses", (*ROOT, *mib.NCHF_OP_TABLE, 1, 3)
    yield "chfNchfProblems", (*ROOT, *mib.NCHF_PROBLEM_TABLE, 1, 2)
    yield "chfNchfNotifyDropped", (*ROOT, *mib.NCHF_NOTIFY_DROPPED)
    yield "chfStoreFillThreshold", (*ROOT, *mib.STORE, 8)
    yield "chfExportLastDelivery", (*ROOT, *mib.EXPORT_TABLE, 1, 6)
    yield "chfWorkersUp", (*ROOT, *mib.WORKERS_UP)
    yield "chfWorkerExits", (*ROOT, *mib.WORKER_TABLE, 1, 3)
    yield "chfAlarmsActive", (*ROOT, *mib.ALARMS_ACTIVE)
    yield "chfAlarmText", (*ROOT, *mib.ALARM_TABLE, 1, mib.ALARM_TEXT)
    yield "chfCatalogueReloadSucceeded", (*ROOT, *mib.NOTIFICATIONS, 12)


def test_mib_loads_in_snmptranslate_with_the_agents_oids() -> None:
    snmptranslate = require_tool("snmptranslate")
    names = dict(mib_names())
    out = subprocess.run(
        [snmptranslate, "-m", "CHF-MIB", "-On", *(f"CHF-MIB::{n}" for n in names)],
        capture_output=True,
        text=True,
        env=mib_env(),
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    got = [line for line in out.stdout.split() if line]
    assert got == ["." + ".".join(map(str, oid)) for oid in names.values()]


# ----------------------------------------------------------------------------------------------------------------------
# chf serve's subagent through a real snmpd
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def net_snmp(tmp_path: Path) -> Iterator[tuple[Snmpd, Snmptrapd]]:
    trapd = Snmptrapd(tmp_path)
    trapd.start()
    snmpd = Snmpd(tmp_path, trapd.port)
    snmpd.start()
    try:
        yield snmpd, trapd
    finally:
        snmpd.stop()
        trapd.stop()


def walk_values(text: str) -> dict[str, str]:
    """`snmpwalk -On` output as {numeric OID: value text}."""
    out = {}
    for line in text.splitlines():
        oid, sep, value = line.partition(" = ")
        if sep:
            out[oid] = value
    return out


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def traps_of(trapd: Snmptrapd, notification: int) -> list[str]:
    trap_oid = f".1.3.6.1.6.3.1.1.4.1.0 = OID: .{'.'.join(map(str, ROOT))}.0.{notification}\t"
    return [line for line in trapd.traps() if trap_oid in line]


async def test_chf_serve_agent_through_snmpd(tmp_path: Path, net_snmp: tuple[Snmpd, Snmptrapd]) -> None:
    snmpd, trapd = net_snmp
    section = f"""
[snmp]
enabled = true
agentx_socket = "{snmpd.socket}"
poll_interval = 0.1
reconnect_interval = 0.2
ping_interval = 1.0
overload_hold = 0.5
"""
    DIAMETER_PEERS.clear()  # the process's peer table: other tests' peers are not this server's
    async with running_server(tmp_path, gy=section) as srv:
        await registered(snmpd)
        await srv.op(provision())
        client = await srv.client()
        ccr = ccr_avps("pgw.test;1;1", 1, 0, origin_host=HOST, origin_realm="test", imsi=IMSI, mscc=[Mscc(10, {})])
        result = (await client.ccr(ccr)).find(268)
        assert result is not None and result.u32() == 2001
        await asyncio.sleep(0.3)  # a poll interval or two
        await check_v2c_walks(snmpd)
        await check_v3_by_name(snmpd)
        await check_peer_down_and_up(srv, client, snmpd, trapd)
        await check_catalogue_reloads(srv, trapd)
        # snmpd restarts: the agent registers again, and the MIB answers again
        snmpd.stop()
        snmpd.start()
        await registered(snmpd)
        again = walk_values(await snmpd.tool("snmpwalk", "-On", f"{DOTTED}.1.1.1.1.2"))
        assert again == {f"{PEER_ENTRY}.2.1": f'STRING: "{HOST}"'}
        assert len(traps_of(trapd, 1)) == 2  # nothing raised twice


HOST, IMSI = "pgw.test", "208010000000001"
DOTTED = ".".join(map(str, ROOT))
PEER_ENTRY = f".{DOTTED}.1.1.1.1"


async def check_v2c_walks(snmpd: Snmpd) -> None:
    """SNMPv2c walks of the Diameter peer table and the credit-control counters, numeric OIDs."""
    peers = walk_values(await snmpd.tool("snmpwalk", "-On", f"{DOTTED}.1.1"))
    expected = {
        f"{PEER_ENTRY}.2.1": f'STRING: "{HOST}"',
        f"{PEER_ENTRY}.3.1": 'STRING: "test"',
        f"{PEER_ENTRY}.4.1": "INTEGER: 6",  # rOpen
        f"{PEER_ENTRY}.5.1": "INTEGER: 1",  # watchdog okay
        f"{PEER_ENTRY}.6.1": "INTEGER: 1",  # ipv4
        f"{PEER_ENTRY}.7.1": "Hex-STRING: 7F 00 00 01 ",
        f"{PEER_ENTRY}.11.1": "Gauge32: 1",
        f"{PEER_ENTRY}.12.1": "Counter64: 2",  # requests in: CER, CCR-I
        f".{DOTTED}.1.1.2.1.2.1.272": "Counter64: 1",  # CCR in
        f".{DOTTED}.1.1.2.1.5.1.257": "Counter64: 1",  # CEA out
        f".{DOTTED}.1.1.3.1.3.1.2": "Counter64: 2",  # 2xxx answers out
        f".{DOTTED}.1.1.4.0": "Gauge32: 1",  # peers up
    }
    assert {oid: peers.get(oid) for oid in expected} == expected
    cc = walk_values(await snmpd.tool("snmpwalk", "-On", f"{DOTTED}.1.2"))
    ccr_i = take_sample().total("chf_requests_total", interface="gy", operation="CCR-I")  # other tests' too
    assert cc[f".{DOTTED}.1.2.1.1.2.1"] == f"Counter64: {int(ccr_i)}"  # CCR-I
    assert cc[f".{DOTTED}.1.2.2.1.2.2001"] == "Counter64: 1"  # CCA 2001


async def check_v3_by_name(snmpd: Snmpd) -> None:
    """SNMPv3 authPriv, objects by name through mibs/CHF-MIB.txt, and a GetBulk walk."""
    names = ["CHF-MIB::chfStoreMapSize.0", "CHF-MIB::chfStoreMapFillPercent.0", "CHF-MIB::chfStoreCommits.0"]
    store = await snmpd.tool("snmpget", "-m", "CHF-MIB", "-M", MIB_DIRS, *names, v3=True)
    assert "CHF-MIB::chfStoreMapSize.0 = Gauge32: 65536 kilobytes" in store
    assert re.search(r"chfStoreCommits.0 = Counter64: [1-9]", store), store
    bulk = await snmpd.tool("snmpbulkwalk", "-On", f"{DOTTED}.1.4", v3=True)
    assert len(walk_values(bulk)) == 8


async def check_peer_down_and_up(srv: Any, client: Any, snmpd: Snmpd, trapd: Snmptrapd) -> None:
    """One chfPeerDown, one chfPeerUp, each as an SNMPv2c trap and an SNMPv3 authPriv inform."""
    client.close()
    await wait_until(lambda: len(traps_of(trapd, 1)) == 2, 10, "chfPeerDown")
    down = traps_of(trapd, 1)
    assert any(t.startswith("TRAP TRAP2, SNMP v2c") for t in down)
    assert any(t.startswith("TRAP INFORM, SNMP v3, user chfops") for t in down)
    assert f'.{DOTTED}.1.7.2.1.3.1 = STRING: "{HOST}"' in down[0]  # chfAlarmResource
    assert f".{DOTTED}.1.7.2.1.2.1 = INTEGER: 1" in down[0]  # chfAlarmType peerDown
    alarms = walk_values(await snmpd.tool("snmpwalk", "-On", f"{DOTTED}.1.7"))
    assert alarms[f".{DOTTED}.1.7.1.0"] == "Gauge32: 1"
    await srv.client()
    await wait_until(lambda: len(traps_of(trapd, 2)) == 2, 10, "chfPeerUp")


async def check_catalogue_reloads(srv: Any, trapd: Snmptrapd) -> None:
    """A catalogue reload that fails, then one that succeeds: chfCatalogueReloadFailed, then ...Succeeded."""
    catalogue = Path(srv.config.catalogue)
    good = catalogue.read_text()
    catalogue.write_text("[plans.broken\n")
    with pytest.raises(CatalogueError):
        srv.service.reload_catalogue()
    await wait_until(lambda: len(traps_of(trapd, 11)) == 2, 10, "chfCatalogueReloadFailed")
    catalogue.write_text(good)
    srv.service.reload_catalogue()
    await wait_until(lambda: len(traps_of(trapd, 12)) == 2, 10, "chfCatalogueReloadSucceeded")


async def registered(snmpd: Snmpd, timeout: float = 15) -> None:
    """Until the agent's subtree answers through snmpd (chfStoreFillThreshold.0 is always there)."""
    oid = ".".join(map(str, (*ROOT, *mib.STORE, 8, 0)))
    deadline = asyncio.get_running_loop().time() + timeout
    while "Gauge32: 80" not in await snmpd.tool("snmpget", "-On", oid):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the agent did not register with snmpd")
        await asyncio.sleep(0.1)


def test_take_sample_reads_the_registry() -> None:
    metrics.OVERLOAD.labels("snmp-test").inc()
    sample = take_sample()
    assert sample.by("chf_overload_rejections_total", "interface")["snmp-test"] >= 1
    builder = ViewBuilder(ROOT)
    view = builder.build(sample, Monitor(Thresholds()))
    assert view.get((*ROOT, *mib.STORE, 8, 0)).value == 80


def test_peer_table_of_front_end_workers_reaches_the_core() -> None:
    """With front-end workers the Gy peers live in the workers: their samples, shipped over the core link and
    summed into the core's exposition, are what the agent (in the core) reads."""
    table = PeerTable()
    conn = table.connection(("127.0.0.1", 41000))
    conn.opened("pgw.worker", "r", now=1000.0)
    conn.received(encode_message(280, 0x80, 0, 1, 1, []))
    from prometheus_client import CollectorRegistry

    from chf.runtime.peers import DiameterPeerCollector

    registry = CollectorRegistry()
    registry.register(DiameterPeerCollector(table))
    snapshot = metrics.snapshot(registry)
    metrics.REMOTE_SAMPLES.append(lambda: [snapshot, snapshot])  # two workers' worth, as the core link keeps them
    try:
        got = take_sample()
    finally:
        metrics.REMOTE_SAMPLES.clear()
    peer = got.peers["pgw.worker"]
    assert (peer.connections, peer.open_since, peer.address, peer.port) == (2, 2000.0, "127.0.0.1", 41000)
    assert got.total("chf_diameter_peer_messages_total", peer="pgw.worker", command="280") == 2
