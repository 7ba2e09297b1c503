"""3GPP CHF-CDR files ([export.cdr], chf/export/cdr.py and chfrecord.py) against readers that share nothing with
the writer (tests/cdr_support.py): the TS 32.297 headers parsed field by field, every CHFRecord decoded by
asn1tools and by pycrate's compiler from chf/export/asn1/chf-cdr.asn, and each compared with the JSON record of the
same event. The exporter is killed with SIGKILL mid-stream (tests/export_worker.py): afterwards every CDR-worthy
event of the spool is in the published files exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chf.core.model import EVENT, POST_EVENT, SUCCESS, ChargingRequest, UnitRequest, UsageReport
from chf.export import CdrSink, Exporter, parse_export_config, to_record
from chf.export.chfrecord import ChfRecordEncoder
from chf.runtime.config import ConfigError
from store.lmdbstore import Store
from tests.cdr_support import ASN1, CdrFile, UsageSpool, bcd_time, decode, read_cdr_file

ROOT = Path(__file__).resolve().parents[1]
NF = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
NAME = r"^{node}_-_(\d+)\.(\d{{8}})_-_(\d{{4}})\+0000$"

# What the spool's reporting reasons become (module docstring of chf/export/chfrecord.py): (trigger, cause).
REASONS = {
    ("quota_exhausted", "bytes"): (404, 1),  # volumeQuotaExhausted, partialRecord
    ("final", "bytes"): (503, 0),  # endOfPDUSession, normalRelease
    ("validity_time", "seconds"): (406, 1),  # expiryOfQuotaValidityTime, partialRecord
    ("final", "seconds"): (503, 0),
    ("DIRECT_DEBITING", "events"): (None, 0),
    ("REFUND_ACCOUNT", "events"): (None, 0),
    ("POST_EVENT", "events"): (None, 0),
}


def cdr_worthy(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["recordType"] in ("usage", "refund")]


def expected(record: dict[str, Any], nf: str = NF) -> dict[str, Any]:
    """The chargingFunctionRecord a JSON export record must become, field by field."""
    trigger, cause = REASONS[(record["reason"], record["ratedUnit"])]
    protocol, _, session = record["chargingSessionId"].partition(":")
    used = record.get("usedUnits") or {}
    container: dict[str, Any] = {}
    if "serviceIdentifier" in record:
        container["serviceIdentifier"] = record["serviceIdentifier"]
    names = {
        "timeUsage": "time",
        "totalVolume": "dataTotalVolume",
        "datavolumeUplink": "dataVolumeUplink",
        "datavolumeDownlink": "dataVolumeDownlink",
        "serviceSpecificUnits": "serviceSpecificUnits",
    }
    for key, value in used.items():
        container[names[key]] = value
    if "datavolumeUplink" in used and "totalVolume" not in used:
        container["dataTotalVolume"] = used["datavolumeUplink"] + used["datavolumeDownlink"]
    if not used:
        field = {"bytes": "dataTotalVolume", "seconds": "time", "events": "serviceSpecificUnits"}[record["ratedUnit"]]
        container[field] = record["ratedQuantity"]
    one_shot = "recordOpeningTime" not in record
    if trigger is not None:
        container["triggers"] = [("sMFTrigger", trigger)]
        container["triggerTimeStamp"] = record["time"]
    if one_shot:
        container["eventTimeStamp"] = record["time"]
    if record.get("tariff"):
        container["ratingIndicator"] = True
    subscriber = (
        {"subscriptionIDType": "eND-USER-IMSI", "subscriptionIDData": record["servedIMSI"]}
        if record.get("servedIMSI")
        else {"subscriptionIDType": "eND-USER-E164", "subscriptionIDData": record["servedMSISDN"]}
    )
    return {
        "recordType": 200,
        "recordingNetworkFunctionID": nf,
        "subscriberIdentifier": subscriber,
        "nFunctionConsumerInformation": {"networkFunctionality": "sMF" if protocol == "nchf" else "pGWCSMF"},
        "listOfMultipleUnitUsage": [{"ratingGroup": record["ratingGroup"], "usedUnitContainers": [container]}],
        "recordOpeningTime": record["time"] - record.get("duration", 0),
        "duration": record.get("duration", 0),
        "causeForRecClosing": cause,
        "localRecordSequenceNumber": record["recordSequenceNumber"] % 2**32,
        "chargingSessionIdentifier": session.encode(),
        "tenantIdentifier": record["tenant"].encode(),
    }


def readable(value: dict[str, Any]) -> dict[str, Any]:
    """A decoded record with its TimeStamps as UNIX times (and their offset checked: UTC)."""

    def stamp(raw: bytes) -> int:
        epoch, offset = bcd_time(raw)
        assert offset == "+0000"
        return epoch

    out = dict(value)
    out["recordOpeningTime"] = stamp(value["recordOpeningTime"])
    for mu in out["listOfMultipleUnitUsage"]:
        for c in mu["usedUnitContainers"]:
            for key in ("triggerTimeStamp", "eventTimeStamp"):
                if key in c:
                    c[key] = stamp(c[key])
    return out


def check_records(spool_records: list[dict[str, Any]], files: list[CdrFile], nf: str = NF) -> None:
    """Every CDR-worthy record of the spool is in the files once, in order, and decodes to what it says."""
    decoded = [readable(decode(cdr)) for f in files for cdr in f.cdrs]
    worthy = cdr_worthy(spool_records)
    assert [d["localRecordSequenceNumber"] for d in decoded] == [r["recordSequenceNumber"] for r in worthy]
    for record, value in zip(worthy, decoded, strict=True):
        assert value == expected(record, nf), record


def published(directory: Path, node: str = "chftest") -> list[CdrFile]:
    """The closed files, in RC order, each checked against the TS 32.297 layout chf writes."""
    files = []
    pattern = re.compile(NAME.format(node=re.escape(node)))
    names = {int(m[1]): p for p in directory.iterdir() if (m := pattern.match(p.name))}
    for i, rc in enumerate(sorted(names), 1):
        f = read_cdr_file(names[rc])
        h = f.header
        assert rc == h["sequence"] == i, "RCs run 1, 2, 3..."
        assert h["file_length"] == f.size and h["header_length"] == 62
        assert h["count"] == len(f.cdrs) > 0
        assert h["high"] == h["low"] == (16, 11), "TS 32.298 V16.11.0"
        assert h["address"] == b"\xff" * 4 + b"\x00" * 10 + b"\xff\xff" + bytes((127, 0, 0, 1))
        assert h["lost"] == 0 and h["routeing_filter"] == b"" and len(h["private"]) == 8
        assert h["opened"][4] == h["appended"][4] == "+0000"
        assert all(ch == {"release": 16, "version": 11, "format": 1, "ts": 20} for ch in f.cdr_headers)
        files.append(f)
    return files


async def drain(spool: UsageSpool, sink: CdrSink, batch: int = 50) -> None:
    exporter = Exporter(spool.store, sink, batch=batch)
    while await exporter.step():
        pass


# ------------------------------------------------------------------------------------------------------------------
# The record
# ------------------------------------------------------------------------------------------------------------------
def test_every_kind_of_rated_report_decodes_to_its_json_record(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "chf.lmdb")
    for _ in range(3):
        spool.round()
    # And an Nchf PEC one-time event: two SMS delivered, charged once.
    delivered = [UnitRequest(40, used=[UsageReport({"events": 2})])]
    pec = ChargingRequest(EVENT, "nchf:pec-1", 0, [("imsi", spool.imsis[0])], delivered, "nchf", POST_EVENT)
    assert spool.charge(pec).result == SUCCESS
    records = [to_record(e) for e in spool.events()]
    encoder = ChfRecordEncoder(NF)
    cdrs = [encoder.encode(r) for r in records]
    assert {r["recordType"] for r, c in zip(records, cdrs, strict=True) if c is None} == {
        "topup",
        "lifecycle",
        "plan_change",
        "renewal",
    }, "account management is no CDR"
    worthy = cdr_worthy(records)
    assert len(worthy) == 3 * 6 + 1
    assert {(r["reason"], r["ratedUnit"]) for r in worthy} == set(REASONS)
    for record in worthy:
        cdr = encoder.encode(record)
        assert cdr is not None
        assert readable(decode(cdr)) == expected(record)
    spool.close()


def test_record_edges_sequence_wrap_msisdn_no_rating_group() -> None:
    record = {
        "recordId": "s-1",
        "recordSequenceNumber": 2**32 + 7,
        "recordType": "usage",
        "time": 1_790_000_600,
        "tenant": "brand-ü",
        "servedMSISDN": "33612345678",
        "chargingSessionId": "nchf:ref-9",
        "ratingGroup": -1,
        "serviceIdentifier": 4_000_000_000,
        "usedUnits": {"totalVolume": 2**40, "datavolumeUplink": 1, "datavolumeDownlink": 2**40 - 1},
        "ratedUnit": "bytes",
        "ratedQuantity": 2**40,
        "causeForRecClosing": "final",
        "reason": "final",
        "recordOpeningTime": "2026-09-21T14:13:20Z",
        "duration": 600,
    }
    value = readable(decode(ChfRecordEncoder(NF).encode(record) or b""))
    assert value == expected(record)
    assert value["localRecordSequenceNumber"] == 7
    assert value["tenantIdentifier"].decode() == "brand-ü"
    assert value["recordOpeningTime"] == 1_790_000_000


# ------------------------------------------------------------------------------------------------------------------
# The files
# ------------------------------------------------------------------------------------------------------------------
async def test_files_hold_every_cdr_once_in_order_closed_by_count(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "chf.lmdb")
    for _ in range(10):
        spool.round()
    out = tmp_path / "cdr"
    sink = CdrSink(str(out), node_id="chftest", nf_instance_id=NF, max_records=7, max_age=3600)
    spool.store.start(asyncio.get_running_loop())
    try:
        await sink.open()
        await drain(spool, sink, batch=13)
        assert len(list(out.glob("*.tmp"))) == 1, "the last file stays open"
        await sink.close()
        assert not list(out.glob("*.tmp"))
        files = published(out)
        assert [f.header["count"] for f in files] == [7] * 8 + [4]  # 60 CDRs
        assert [f.header["reason"] for f in files] == [3] * 8 + [0]  # maximum number of CDRs, then normal closure
        check_records([to_record(e) for e in spool.events()], files)
        assert spool.cursor() == spool.last()
    finally:
        await spool.store.stop()
        spool.close()


async def test_files_close_by_size_and_by_time(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "chf.lmdb")
    for _ in range(8):
        spool.round()
    out = tmp_path / "cdr"
    now = [1_790_000_000.0]
    sink = CdrSink(str(out), node_id="chftest", nf_instance_id=NF, max_bytes=4096, max_age=60, clock=lambda: now[0])
    spool.store.start(asyncio.get_running_loop())
    exporter = Exporter(spool.store, sink, batch=1000)
    try:
        await sink.open()
        assert await exporter.step() > 0
        size_closed = published(out)
        assert size_closed and all(f.header["reason"] == 1 for f in size_closed)
        assert all(f.size <= 4096 for f in size_closed)
        assert all(f.size > 4096 - 300 for f in size_closed), "closed when the next CDR would not fit"
        now[0] += 61
        assert await exporter.step() == 0  # idle: the open file is older than max_age
        files = published(out)
        assert files[-1].header["reason"] == 2 and not list(out.glob("*.tmp"))
        assert files[0].name.split(".")[1] == "20260921_-_1413+0000", "named after the time it was opened"
        check_records([to_record(e) for e in spool.events()], files)
    finally:
        await exporter.stop()
        await spool.store.stop()
        spool.close()


async def test_a_crash_never_loses_nor_duplicates_a_cdr(tmp_path: Path) -> None:
    """The windows a crash can hit: CDRs fsync'd but the cursor not yet advanced (in an open file, and in a file
    already renamed into place), and a CDR torn in the middle of its write."""
    spool = UsageSpool(tmp_path / "chf.lmdb")
    for _ in range(5):
        spool.round()
    out = tmp_path / "cdr"
    spool.store.start(asyncio.get_running_loop())
    try:
        first = CdrSink(str(out), node_id="chftest", nf_instance_id=NF, max_records=12, max_age=3600)
        await first.open()
        await drain(spool, first)
        # The process dies: the open file stays .tmp, its last CDR half written; the cursor commits were lost.
        assert first._fd is not None
        os.close(first._fd)
        tmp = next(out.glob("*.tmp"))
        with open(tmp, "ab") as f:
            f.write(b"\x00\x90\xeb\x34\x06\xbf\x81\x48\x81\x8a\x80\x02\x00")
        spool.store.write(lambda txn: txn.put_cursor("export:cdr", 0))
        for _ in range(3):
            spool.round()
        second = CdrSink(str(out), node_id="chftest", max_records=12, max_age=3600)
        await second.open()  # publishes the .tmp without its torn tail, reason 128
        assert second.nf_instance_id == NF, "kept in the state file"
        await drain(spool, second)
        await second.close()
        files = published(out)
        assert [f.header["reason"] for f in files] == [3, 3, 128, 3, 0]
        check_records([to_record(e) for e in spool.events()], files)
    finally:
        await spool.store.stop()
        spool.close()


async def test_a_file_killed_before_its_first_cdr_leaves_no_gap_in_the_running_count(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "chf.lmdb")
    spool.round()
    out = tmp_path / "cdr"
    spool.store.start(asyncio.get_running_loop())
    try:
        sink = CdrSink(str(out), node_id="chftest", nf_instance_id=NF)
        await sink.open()
        await drain(spool, sink)
        await sink.close()
        # Killed between creating file 2 and writing its first CDR: a header cut short, nothing else.
        (out / "chftest_-_2.20260921_-_1413+0000.tmp").write_bytes(b"\x00\x00\x00\x3e\x00\x00")
        spool.round()
        again = CdrSink(str(out), node_id="chftest", nf_instance_id=NF)
        await again.open()
        assert not list(out.glob("*.tmp"))
        await drain(spool, again)
        await again.close()
        files = published(out)
        assert [f.header["sequence"] for f in files] == [1, 2]
        check_records([to_record(e) for e in spool.events()], files)
    finally:
        await spool.store.stop()
        spool.close()


async def test_the_records_of_a_new_store_are_not_taken_for_re_deliveries(tmp_path: Path) -> None:
    """A store made anew beside a kept CDR directory counts its sequence from 1 again."""
    out = tmp_path / "cdr"
    records = []
    for name, rounds in (("old.lmdb", 2), ("new.lmdb", 1)):
        spool = UsageSpool(tmp_path / name)
        for _ in range(rounds):
            spool.round()
        records.append([to_record(e) for e in spool.events()])
        spool.store.start(asyncio.get_running_loop())
        try:
            sink = CdrSink(str(out), node_id="chftest", nf_instance_id=NF)
            await sink.open()
            await drain(spool, sink)
            await sink.close()
            assert sink.store_id == spool.store.store_id
        finally:
            await spool.store.stop()
            spool.close()
    old, new = published(out)
    check_records(records[0], [old])
    check_records(records[1], [new])


async def test_a_state_file_lost_with_the_files_starts_again_without_reusing_a_name(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "chf.lmdb")
    spool.round()
    out = tmp_path / "cdr"
    spool.store.start(asyncio.get_running_loop())
    try:
        sink = CdrSink(str(out), node_id="chftest", nf_instance_id=NF)
        await sink.open()
        await drain(spool, sink)
        await sink.close()
        (out / ".chftest.state").unlink()
        spool.round()
        again = CdrSink(str(out), node_id="chftest", nf_instance_id=NF)
        await again.open()
        await drain(spool, again)
        await again.close()
        assert [f.header["sequence"] for f in published(out)] == [1, 2], "RC continues from the files present"
    finally:
        await spool.store.stop()
        spool.close()


# ------------------------------------------------------------------------------------------------------------------
# A killed exporter
# ------------------------------------------------------------------------------------------------------------------
def start_worker(*args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.export_worker", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"started", proc.stderr.read() if proc.stderr else line
    return proc


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def test_cdr_sink_survives_killed_exporters(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path / "chf.lmdb")
    out = tmp_path / "cdr"
    store = str(tmp_path / "chf.lmdb")

    def produce() -> None:
        for _ in range(120):
            spool.round()
            time.sleep(0.005)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    worker = start_worker(store, "cdr", str(out), "40")
    try:
        for target in (150, 400):
            wait_for(lambda t=target: spool.cursor() >= t, 60, f"the exporter to pass {target} events")
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            assert producer.is_alive(), "killed mid-stream: events are still being committed"
            worker = start_worker(store, "cdr", str(out), "40")
        producer.join(120)
        assert not producer.is_alive()
        wait_for(lambda: spool.cursor() == spool.last(), 60, "the exporter to catch up")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            worker.kill()
            worker.wait(10)
    files = published(out)
    assert not list(out.glob("*.tmp"))
    assert any(f.header["reason"] == 128 for f in files), "a kill left an open file, recovered on restart"
    nf = json.loads((out / ".chftest.state").read_text())["nf_instance_id"]
    check_records([to_record(e) for e in spool.events()], files, nf)
    spool.close()


async def test_chf_serve_writes_the_cdrs_of_nchf_sessions(tmp_path: Path) -> None:
    """`chf serve` with [nchf] and [export.cdr] (defaults: node id from the store id, a UUID made once): an SMF's
    create / update / release over HTTP/2 ends up in a CDR file, published when the server stops."""
    from nchf.client import H2Client
    from tests.nchf_harness import API, request_body
    from tests.support import free_port

    spool = UsageSpool(tmp_path / "chf.lmdb", lines=1)
    imsi = spool.imsis[0]
    node = "chf" + spool.store.store_id
    spool.close()
    port = free_port()
    config = tmp_path / "chf.toml"
    config.write_text(
        f'[chf]\ndata_dir = "{tmp_path}"\ncatalogue = "{ROOT / "tests" / "fixtures" / "core.toml"}"\n'
        f'[store]\npath = "{tmp_path / "chf.lmdb"}"\nmap_size_mb = 64\n'
        f'[nchf]\nlisten = "127.0.0.1"\nport = {port}\n'
        "[export]\npoll_interval = 0.05\n[export.cdr]\n"
    )
    command = [sys.executable, "-m", "tools.cli", "serve", "--config", str(config)]
    proc = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        while b"event=ready" not in (line := await asyncio.wait_for(proc.stderr.readline(), 30)):
            assert line, "chf serve exited before it was ready"
        client = await H2Client.connect("127.0.0.1", port)

        async def post(path: str, number: int, units: list[dict[str, Any]]) -> Any:
            body = request_body(number, supi="imsi-" + imsi, units=units)
            return await client.post_json(f"{API}/chargingdata{path}", json.dumps(body).encode())

        def trigger(kind: str) -> list[dict[str, str]]:
            return [{"triggerType": kind, "triggerCategory": "IMMEDIATE_REPORT"}]

        created = await post("", 1, [{"ratingGroup": 10, "requestedUnit": {}}])
        assert created.status == 201, created.body
        ref = created.headers["location"].rsplit("/", 1)[1]
        used = {
            "localSequenceNumber": 1,
            "uplinkVolume": 120,
            "downlinkVolume": 480,
            "triggers": trigger("QUOTA_EXHAUSTED"),
        }
        updated = await post(
            f"/{ref}/update", 2, [{"ratingGroup": 10, "requestedUnit": {}, "usedUnitContainer": [used]}]
        )
        assert updated.status == 200, updated.body
        final = {"localSequenceNumber": 2, "totalVolume": 50, "triggers": trigger("FINAL")}
        released = await post(f"/{ref}/release", 3, [{"ratingGroup": 10, "usedUnitContainer": [final]}])
        assert released.status == 204, released.body
        await client.close()
        await asyncio.sleep(0.5)  # the exporter's next look at the spool
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    out = tmp_path / "cdr"
    files = published(out, node)
    assert [f.header["reason"] for f in files] == [0], "closed when chf serve stopped"
    nf = json.loads((out / f".{node}.state").read_text())["nf_instance_id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", nf), "a UUID v4"
    store = Store(tmp_path / "chf.lmdb")
    with store.read() as txn:
        records = [to_record(e) for e in txn.events()]
    store.close()
    assert [r["chargingSessionId"] for r in cdr_worthy(records)] == ["nchf:" + ref] * 2
    check_records(records, files, nf)


# ------------------------------------------------------------------------------------------------------------------
# Configuration and the module's source
# ------------------------------------------------------------------------------------------------------------------
def test_cdr_config_defaults_and_errors() -> None:
    cfg = parse_export_config({"cdr": {}}, "var")
    assert cfg.cdr == {
        "directory": os.path.join("var", "cdr"),
        "node_id": None,
        "nf_instance_id": None,
        "node_address": "127.0.0.1",
        "max_bytes": 8 << 20,
        "max_records": 100_000,
        "max_age": 300.0,
    }
    assert parse_export_config({"cdr": {"enabled": False}}, "var").cdr is None
    with pytest.raises(ConfigError) as exc:
        parse_export_config(
            {"cdr": {"node_id": "a_-_b", "nf_instance_id": "x", "max_records": 0, "colour": 1}}, "var", "c.toml"
        )
    text = str(exc.value)
    for key in ("node_id", "nf_instance_id", "max_records", "colour"):
        assert f"c.toml: [export.cdr] {key}:" in text
    with pytest.raises(ConfigError, match=r"\[export.cdr\] node_address: must be an IPv4 or IPv6 address"):
        parse_export_config({"cdr": {"node_address": "cgf.example"}}, "var")


def test_asn1_module_cites_its_source_and_keeps_the_tags() -> None:
    text = ASN1.read_text(encoding="utf-8")
    assert "3GPP TS 32.298 V16.11.0" in text and "P1sec/pycrate" in text
    for line in (
        "chargingFunctionRecord                  [200] ChargingRecord",
        "localRecordSequenceNumber               [11] LocalSequenceNumber OPTIONAL",
        "chargingSessionIdentifier               [16] ChargingSessionIdentifier OPTIONAL",
        "tenantIdentifier                        [23] TenantIdentifier OPTIONAL",
        "ratingIndicator                         [10] RatingIndicator OPTIONAL",
    ):
        assert line in text


def test_generic_types_agree_with_pycrates_compile_of_the_full_specification() -> None:
    """The types chf-cdr.asn copies from GenericChargingDataTypes and GPRSChargingDataTypes encode as pycrate's
    own compile of the complete TS 32.298 modules does (pycrate_asn1dir.CDR, in another process: both register
    modules of the same names)."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from tests.cdr_support import pycrate_record
from pycrate_asn1dir import CDR
samples = {{
    ("GenericChargingDataTypes", "SubscriptionID"): {{
        "subscriptionIDType": "eND-USER-IMSI", "subscriptionIDData": "001010123456789"
    }},
    ("GenericChargingDataTypes", "RecordType"): 200,
    ("GenericChargingDataTypes", "TimeStamp"): b"\\x26\\x09\\x21\\x14\\x13\\x20+\\x00\\x00",
    ("GenericChargingDataTypes", "CallDuration"): 600,
    ("GenericChargingDataTypes", "CauseForRecClosing"): 1,
    ("GenericChargingDataTypes", "LocalSequenceNumber"): 4294967295,
    ("GenericChargingDataTypes", "DataVolumeOctets"): 2**40,
    ("GenericChargingDataTypes", "IPAddress"): ("iPBinaryAddress", ("iPBinV4Address", b"\\x7f\\x00\\x00\\x01")),
    ("GenericChargingDataTypes", "NodeAddress"): ("domainName", "chf.example"),
    ("GenericChargingDataTypes", "PLMN-Id"): b"\\x02\\xf8\\x10",
    ("GPRSChargingDataTypes", "RatingGroupId"): 10,
    ("GPRSChargingDataTypes", "ServiceIdentifier"): 4000000000,
}}
pycrate_record()
ours = sys.modules["chf_cdr_pycrate"]
for (module, name), value in samples.items():
    mine = getattr(getattr(ours, module.replace("-", "_")), name.replace("-", "_"))
    full = getattr(getattr(CDR, module.replace("-", "_")), name.replace("-", "_"))
    mine.set_val(value)
    full.set_val(value)
    assert mine.to_ber() == full.to_ber(), (name, mine.to_ber(), full.to_ber())
print("agree", len(samples))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.strip() == b"agree 12"
