"""Nchf_ConvergedCharging front-end over real sockets: every response is checked against the 3GPP OpenAPI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chf.core import provisioning
from chf.export.records import to_record
from nchf.auth import make_jwt
from nchf.client import H2Client
from nchf.config import NchfSettings, parse_settings
from nchf.http import HttpServer, Request, Response
from tests import nchf_harness
from tests.nchf_harness import (
    API,
    IMSI,
    IMSI_BROKE,
    IMSI_CAPPED,
    IMSI_SUSPENDED,
    MSISDN,
    Chf,
    request_body,
    start_chf,
    stop_chf,
    usage,
)
from tests.nchf_openapi import check_response, schema_errors, specs_or_skip
from tests.support import free_port, require_tool


@pytest.fixture(autouse=True)
def store_backend(open_store: Any) -> Iterator[None]:
    """Every test here runs on LMDB and on the Redis cluster (tests/conftest.py: open_store)."""
    nchf_harness.STORE_OPENER = open_store
    yield
    nchf_harness.STORE_OPENER = None


MB = 1_000_000


@pytest.fixture
async def chf(tmp_path: Path) -> AsyncIterator[Chf]:
    specs_or_skip()
    running = await start_chf(tmp_path)
    try:
        yield running
    finally:
        await stop_chf(running)


async def test_create_update_release_flow(chf: Chf) -> None:
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
    assert created.status == 201
    assert created.headers["location"] == f"http://127.0.0.1:{chf.port}{API}/chargingdata/{created.ref}"
    assert created.body["invocationSequenceNumber"] == 1
    [mui] = created.body["multipleUnitInformation"]
    assert mui["resultCode"] == "SUCCESS" and mui["ratingGroup"] == 10
    assert mui["grantedUnit"] == {"totalVolume": 10 * MB}
    assert mui["validityTime"] == 3600 and mui["volumeQuotaThreshold"] == 2 * MB
    assert {t["triggerType"] for t in mui["triggers"]} >= {"VALIDITY_TIME", "QUOTA_THRESHOLD"}
    assert chf.bucket(IMSI) == (100 * MB, 10 * MB)
    for n in range(2, 7):
        updated = await chf.call(
            client, "update", request_body(n, units=[usage(10, {"totalVolume": 3 * MB}, seq=n)]), created.ref
        )
        assert updated.status == 200, updated.body
        assert updated.body["invocationSequenceNumber"] == n
        assert updated.body["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 10 * MB}
        assert chf.bucket(IMSI) == (100 * MB - 3 * MB * (n - 1), 10 * MB)
    # Usage split into uplink/downlink only, and the final report on release.
    released = await chf.call(
        client,
        "release",
        request_body(
            7, units=[usage(10, {"uplinkVolume": MB // 2, "downlinkVolume": MB // 2}, request=False, final=True)]
        ),
        created.ref,
    )
    assert released.status == 204 and released.raw == b""
    assert chf.bucket(IMSI) == (100 * MB - 16 * MB, 0)
    assert chf.wallet("acct-a") == (5_000_000, 0)  # all within the allowance
    # The resource is gone: a further update is a 404.
    again = await chf.call(client, "update", request_body(8, units=[usage(10)]), created.ref)
    assert again.status == 404 and again.body["cause"] == "CONTEXT_NOT_FOUND"
    await client.close()


async def test_voice_and_sms_units_and_gpsi(chf: Chf) -> None:
    client = await chf.client()
    body = request_body(
        0, supi=None, units=[usage(20), {"ratingGroup": 40, "requestedUnit": {"serviceSpecificUnits": 1}}]
    )
    body["pDUSessionChargingInformation"]["userInformation"] = {"servedGPSI": "msisdn-" + MSISDN}
    created = await chf.call(client, "create", body)
    assert created.status == 201, created.body
    by_rg = {m["ratingGroup"]: m for m in created.body["multipleUnitInformation"]}
    assert by_rg[20]["grantedUnit"] == {"time": 600} and by_rg[20]["timeQuotaThreshold"] == 120
    assert by_rg[40]["grantedUnit"] == {"serviceSpecificUnits": 1}
    before = chf.wallet("acct-a")[0]
    update = request_body(1, units=[usage(20, {"time": 90}), usage(40, {"serviceSpecificUnits": 1})])
    updated = await chf.call(client, "update", update, created.ref)
    assert updated.status == 200
    # 90 s = 2 started minutes at 0.10 EUR, one SMS at 0.08 EUR, from the wallet.
    assert chf.wallet("acct-a")[0] == before - 200_000 - 80_000
    await client.close()


async def test_repeated_sequence_number_charges_once(chf: Chf) -> None:
    client = await chf.client()
    created = await chf.call(client, "create", request_body(0, units=[usage(10)]))
    body = request_body(5, units=[usage(10, {"totalVolume": 4 * MB})])
    first = await chf.call(client, "update", body, created.ref)
    after_first = chf.bucket(IMSI)
    second = await chf.call(client, "update", body, created.ref)
    assert second.status == first.status == 200
    first.body.pop("invocationTimeStamp")
    second.body.pop("invocationTimeStamp")
    assert second.body == first.body
    assert chf.bucket(IMSI) == after_first == (96 * MB, 10 * MB)
    await client.close()


async def test_retransmitted_create_reserves_once(chf: Chf) -> None:
    client = await chf.client()
    body = request_body(0, units=[usage(10)])
    first = await chf.call(client, "create", body)
    again = await chf.call(client, "create", body)  # the SMF timed out and sent the same message again
    assert first.status == again.status == 201 and again.ref == first.ref
    assert chf.bucket(IMSI) == (100 * MB, 10 * MB)  # one reservation
    other = await chf.call(client, "create", {**body, "invocationTimeStamp": "2026-11-22T10:00:01Z"})
    assert other.status == 201 and other.ref != first.ref  # a new session: a second reservation
    assert chf.bucket(IMSI) == (100 * MB, 20 * MB)
    await client.close()


async def test_uplink_and_downlink_keep_their_direction(chf: Chf) -> None:
    """uplinkVolume is what the UE sent (TS 32.291 UsedUnitContainer; Gy's CC-Input-Octets, RFC 4006 8.24) and
    downlinkVolume what it received (CC-Output-Octets, 8.25): the spool and the export records keep them so, as
    they do for Gy, and a refusal names the field the client sent."""
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
    used = {"uplinkVolume": MB // 4, "downlinkVolume": 3 * MB // 4}
    updated = await chf.call(client, "update", request_body(2, units=[usage(10, used)]), created.ref)
    assert updated.status == 200, updated.body
    with chf.store.read() as txn:
        [rated] = [e for e in txn.events() if e["kind"] == "usage"]
    assert rated["units"] == {"bytes_in": MB // 4, "bytes_out": 3 * MB // 4}
    assert to_record(rated)["usedUnits"] == {"datavolumeUplink": MB // 4, "datavolumeDownlink": 3 * MB // 4}
    state = chf.bucket(IMSI)
    for name in ("uplinkVolume", "downlinkVolume"):
        implausible = {name: 2**41}
        refused = await chf.call(client, "update", request_body(3, units=[usage(10, implausible)]), created.ref)
        assert refused.status == 400, refused.body
        [param] = refused.body["invalidParams"]
        assert param["param"] == f"/multipleUnitUsage/0/usedUnitContainer/0/{name}"
    assert chf.bucket(IMSI) == state
    await client.close()


async def test_unnumbered_client_like_free5gc(chf: Chf) -> None:
    """free5GC's SMF sends Create with no multipleUnitUsage and leaves invocationSequenceNumber at 0."""
    client = await chf.client()
    created = await chf.call(client, "create", request_body(0, units=None))
    assert created.status == 201 and "multipleUnitInformation" not in created.body
    for _ in range(3):
        body = request_body(0, units=[usage(10, {"totalVolume": 2 * MB})])
        updated = await chf.call(client, "update", body, created.ref)
        assert updated.status == 200
        assert updated.body["invocationSequenceNumber"] == 0
    # Three separate reports of 2 MB each: all charged (none taken for a retransmission).
    assert chf.bucket(IMSI) == (94 * MB, 10 * MB)
    released = await chf.call(client, "release", request_body(0, units=None), created.ref)
    assert released.status == 204
    assert chf.bucket(IMSI) == (94 * MB, 0)
    await client.close()


async def test_partial_grant_final_unit_and_quota_limit(chf: Chf) -> None:
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, supi="imsi-" + IMSI_CAPPED, units=[usage(10)]))
    assert created.body["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 10 * MB}
    updated = await chf.call(
        client, "update", request_body(2, supi=None, units=[usage(10, {"totalVolume": 10 * MB})]), created.ref
    )
    [mui] = updated.body["multipleUnitInformation"]
    assert mui["grantedUnit"] == {"totalVolume": 5 * MB}
    assert mui["finalUnitIndication"] == {
        "finalUnitAction": "REDIRECT",
        "redirectServer": {"redirectAddressType": "URL", "redirectServerAddress": "http://topup.example/"},
    }
    # The allowance is gone and the plan redirects: the update still answers 200, the rating group carries
    # QUOTA_LIMIT_REACHED and the Final-Unit-Indication the SMF must apply.
    exhausted = await chf.call(
        client, "update", request_body(3, supi=None, units=[usage(10, {"totalVolume": 5 * MB})]), created.ref
    )
    assert exhausted.status == 200
    [mui] = exhausted.body["multipleUnitInformation"]
    assert mui["resultCode"] == "QUOTA_LIMIT_REACHED" and mui["grantedUnit"] == {"totalVolume": 0}
    assert mui["finalUnitIndication"]["finalUnitAction"] == "REDIRECT"
    assert chf.bucket(IMSI_CAPPED) == (0, 0)
    broke = await chf.call(client, "create", request_body(1, supi="imsi-" + IMSI_BROKE, units=[usage(10)]))
    assert broke.status == 403 and broke.body["cause"] == "QUOTA_LIMIT_REACHED"
    assert "location" not in broke.headers
    await client.close()


async def test_session_level_refusals(chf: Chf) -> None:
    client = await chf.client()
    unknown = await chf.call(client, "create", request_body(1, supi="imsi-999990000000001", units=[usage(10)]))
    assert unknown.status == 404 and unknown.body["cause"] == "USER_UNKNOWN"
    suspended = await chf.call(client, "create", request_body(1, supi="imsi-" + IMSI_SUSPENDED, units=[usage(10)]))
    assert suspended.status == 403 and suspended.body["cause"] == "END_USER_REQUEST_DENIED"
    roaming = await chf.call(client, "create", request_body(1, units=[usage(10)], plmn=("310", "260")))
    assert roaming.status == 403 and roaming.body["cause"] == "END_USER_REQUEST_DENIED"  # data barred in "world"
    nothing = await chf.call(client, "update", request_body(1, units=[usage(10)]), "no-such-ref")
    assert nothing.status == 404 and nothing.body["cause"] == "CONTEXT_NOT_FOUND"
    gone = await chf.call(client, "release", request_body(1), "no-such-ref")
    assert gone.status == 404
    assert chf.bucket(IMSI) == (100 * MB, 0)
    await client.close()


async def test_roaming_draws_only_on_allowances_of_its_zone(chf: Chf) -> None:
    """servingCNPlmnId picks the zone (chf/core/zones.py): the home-and-EU bundle pays nothing in the US, and the
    EU takes at most its fair use of it."""
    imsi = "001010000000009"

    def op(txn: Any, engine: Any, now: int) -> Any:
        provisioning.create_account(
            txn, engine, account_id="acct-r", tenant="mvno", payment="prepaid", now=now, balance=5_000_000
        )
        return provisioning.add_line(txn, engine, account="acct-r", imsi=imsi, now=now, plan="rlah")

    chf.lines[imsi] = (await chf.service.operate(op)).value["id"]
    client = await chf.client()
    supi = "imsi-" + imsi
    us = await chf.call(client, "create", request_body(1, supi=supi, units=[usage(10)], plmn=("310", "260")))
    assert us.status == 201 and us.body["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 10 * MB}
    assert chf.bucket(imsi) == (20 * MB, 0) and chf.wallet("acct-r") == (5_000_000, 2_000_000)
    done = request_body(2, supi=supi, units=[usage(10, {"totalVolume": 2 * MB}, request=False, final=True)])
    assert (await chf.call(client, "release", done, us.ref)).status == 204
    assert chf.wallet("acct-r") == (5_000_000 - 400_000, 0)  # 2 MB at the world price
    eu = await chf.call(client, "create", request_body(1, supi=supi, units=[usage(10)], plmn=("262", "01")))
    assert eu.body["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 10 * MB}
    assert chf.bucket(imsi) == (20 * MB, 10 * MB)  # the whole fair use, held
    more = request_body(2, supi=supi, units=[usage(10, {"totalVolume": 10 * MB})], plmn=("262", "01"))
    updated = await chf.call(client, "update", more, eu.ref)
    assert updated.body["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 10 * MB}
    assert chf.bucket(imsi) == (10 * MB, 0)  # beyond the fair use: the wallet holds the next grant
    assert chf.wallet("acct-r") == (5_000_000 - 400_000, 100_000)
    await client.close()


async def test_split_billing_routes_the_dnn_to_its_payer(chf: Chf) -> None:
    """dnnId picks the payer (chf/core/split.py): the car maker, the driver's account's parent, pays the telematics
    DNN from its bill; the driver's internet DNN is the driver's."""
    imsi = "001010000000010"

    def op(txn: Any, engine: Any, now: int) -> Any:
        provisioning.create_account(
            txn, engine, account_id="oem", tenant="mvno", payment="postpaid", now=now, credit_limit=100_000_000
        )
        provisioning.create_account(
            txn, engine, account_id="drv", tenant="mvno", payment="prepaid", now=now, balance=5_000_000, parent="oem"
        )
        return provisioning.add_line(txn, engine, account="drv", imsi=imsi, now=now, plan="car")

    chf.lines[imsi] = (await chf.service.operate(op)).value["id"]
    client = await chf.client()
    for dnn, payer in (("telematics.oem", "oem"), ("internet", "drv")):
        body = request_body(1, supi="imsi-" + imsi, units=[usage(10)])
        body["pDUSessionChargingInformation"]["pduSessionInformation"]["dnnId"] = dnn
        created = await chf.call(client, "create", body)
        assert created.status == 201
        assert chf.wallet(payer)[1] == 100_000  # 10 MB at 0.01 EUR, held in the payer's wallet
        done = request_body(2, supi=None, units=[usage(10, {"totalVolume": 3 * MB}, request=False, final=True)])
        assert (await chf.call(client, "release", done, created.ref)).status == 204
    assert chf.wallet("oem") == (-30_000, 0) and chf.wallet("drv") == (5_000_000 - 30_000, 0)
    await client.close()


async def test_invalid_requests_name_every_bad_field_and_change_nothing(chf: Chf) -> None:
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
    state = chf.bucket(IMSI)
    bad = request_body(
        2,
        units=[
            {"ratingGroup": "ten"},
            {"ratingGroup": 11, "requestedUnit": {"totalVolume": -5}},
            {"ratingGroup": 10, "usedUnitContainer": [{"totalVolume": 5, "triggers": [{"triggerType": "FINAL"}]}]},
        ],
    )
    del bad["invocationTimeStamp"]
    bad["nfConsumerIdentification"] = {}
    bad["oneTimeEvent"] = "yes"
    result = await chf.call(client, "update", bad, created.ref)
    assert result.status == 400 and result.body["cause"] == "CHARGING_FAILED"
    assert {p["param"] for p in result.body["invalidParams"]} == {
        "/invocationTimeStamp",
        "/nfConsumerIdentification/nodeFunctionality",
        "/oneTimeEvent",
        "/multipleUnitUsage/0/ratingGroup",
        "/multipleUnitUsage/1/requestedUnit/totalVolume",
        "/multipleUnitUsage/2/usedUnitContainer/0/localSequenceNumber",
        "/multipleUnitUsage/2/usedUnitContainer/0/triggers/0/triggerCategory",
    }
    not_json = await chf.call(client, "update", None, created.ref, raw=b"{not json")
    assert not_json.status == 400 and not_json.body["cause"] == "INVALID_MSG_FORMAT"
    array = await chf.call(client, "create", None, raw=b"[]")
    assert array.status == 400 and array.body["invalidParams"][0]["param"] == "/"
    no_identity = await chf.call(client, "create", request_body(1, supi=None, units=[usage(10)]))
    assert no_identity.status == 400 and no_identity.body["invalidParams"][0]["param"] == "/subscriberIdentifier"
    bad_supi = await chf.call(client, "create", request_body(1, supi="imsi-12ab"))
    assert bad_supi.status == 400 and bad_supi.body["invalidParams"][0]["param"] == "/subscriberIdentifier"
    huge = await chf.call(client, "update", None, created.ref, raw=b'{"x": "' + b"a" * 70000 + b'"}')
    assert huge.status == 413
    wrong_type = await client.request("POST", f"{API}/chargingdata", b"<xml/>", [("content-type", "text/xml")])
    check_response("create", wrong_type.status, wrong_type.headers, wrong_type.body)
    assert wrong_type.status == 400
    get = await client.request("GET", f"{API}/chargingdata")
    check_response("create", get.status, get.headers, get.body)
    assert get.status == 405 and get.headers["allow"] == "POST"
    elsewhere = await client.request("POST", "/nchf-convergedcharging/v2/chargingdata", b"{}")
    assert elsewhere.status == 404
    assert json.loads(elsewhere.body)["cause"] == "RESOURCE_URI_STRUCTURE_NOT_FOUND"
    assert chf.bucket(IMSI) == state
    # The connection survived every refusal.
    ok = await chf.call(client, "update", request_body(3, units=[usage(10, {"totalVolume": MB})]), created.ref)
    assert ok.status == 200
    await client.close()


async def test_overload_answers_503_with_retry_after(chf: Chf) -> None:
    chf.component.app.max_in_flight = 1
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
    # Sent together, the first waits for its group commit while the second arrives.
    results = await asyncio.gather(
        *[
            chf.call(client, "update", request_body(n, units=[usage(10, {"totalVolume": MB})]), created.ref)
            for n in (2, 3, 4)
        ]
    )
    statuses = sorted(r.status for r in results)
    assert statuses[0] == 200 and statuses[-1] == 503
    busy = next(r for r in results if r.status == 503)
    assert busy.headers["retry-after"] == "1" and busy.body["cause"] == "NF_CONGESTION"
    await client.close()


async def test_long_lived_connection_concurrent_streams_and_ping(chf: Chf) -> None:
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
    for batch in range(4):
        results = await asyncio.gather(
            *[
                chf.call(
                    client,
                    "update",
                    request_body(2 + batch * 50 + i, units=[usage(10, {"totalVolume": 1000})]),
                    created.ref,
                )
                for i in range(50)
            ]
        )
        assert all(r.status == 200 for r in results)
        # A PING is answered with a PING ACK; the connection stays open.
        client.conn.ping(b"12345678")
        client._flush()
    for _ in range(100):
        if client.pings_acknowledged == 4:
            break
        await asyncio.sleep(0.01)
    assert client.pings_acknowledged == 4
    assert client.usable
    assert chf.bucket(IMSI) == (100 * MB - 200 * 1000, 10 * MB)
    await client.close()


async def test_http1_on_the_same_port(chf: Chf) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", chf.port)
    body = json.dumps(request_body(1, units=[usage(10)])).encode()
    head = f"POST {API}/chargingdata HTTP/1.1\r\nHost: chf\r\nContent-Type: application/json\r\n"
    for _ in range(2):  # keep-alive: two requests on one connection
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        payload = await reader.readexactly(int(headers["content-length"]))
        assert status_line.startswith(b"HTTP/1.1 201"), status_line
        check_response("create", 201, headers, payload)
        assert headers["location"].startswith(f"http://chf{API}/chargingdata/")
    writer.close()
    await writer.wait_closed()


async def _http1_exchange(port: int, *parts: bytes) -> bytes:
    """Send `parts` (one write each, a moment apart) and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.02)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_http1_limits_and_framing_errors(chf: Chf) -> None:
    """HTTP/1.1 refusals: each answered with its status and a ProblemDetails, then the connection is closed."""
    create = f"POST {API}/chargingdata HTTP/1.1\r\nHost: chf\r\nContent-Type: application/json\r\n".encode()
    # A body over the limit is refused from its Content-Length, before it arrives.
    too_big = await _http1_exchange(chf.port, create + b"Content-Length: 70000\r\n\r\n")
    assert too_big.startswith(b"HTTP/1.1 413 ") and b'"cause":"REQUEST_TOO_LARGE"' in too_big
    chunked = await _http1_exchange(chf.port, create + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 411 ") and b'"cause":"LENGTH_REQUIRED"' in chunked
    not_a_number = await _http1_exchange(chf.port, create + b"Content-Length: 1e3\r\n\r\n")
    assert not_a_number.startswith(b"HTTP/1.1 400 ") and b'"cause":"INVALID_MSG_FORMAT"' in not_a_number
    # A header block over the limit that arrives in pieces (never complete) is refused as it grows.
    padding = b"X-Padding: " + b"p" * 10_000 + b"\r\n"
    pieces = await _http1_exchange(chf.port, create, padding, padding)
    assert pieces.startswith(b"HTTP/1.1 431 ") and b'"cause":"REQUEST_TOO_LARGE"' in pieces
    for answer in (too_big, chunked, not_a_number, pieces):
        assert b"\r\nconnection: close\r\n" in answer


async def test_curl_http2_prior_knowledge(chf: Chf, tmp_path: Path) -> None:
    curl = require_tool("curl")
    body = tmp_path / "create.json"
    body.write_text(json.dumps(request_body(1, units=[usage(10)])))
    headers_file = tmp_path / "headers.txt"
    proc = await asyncio.create_subprocess_exec(
        curl,
        "--silent",
        "--show-error",
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        f"@{body}",
        "-D",
        str(headers_file),
        "-w",
        "\n%{http_version} %{http_code}",
        f"http://127.0.0.1:{chf.port}{API}/chargingdata",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    payload, _, trailer = out.decode().rpartition("\n")
    assert trailer == "2 201", (trailer, err)
    headers = {}
    for line in headers_file.read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.lower()] = value.strip()
    check_response("create", 201, headers, payload.encode())


class NotifyReceiver:
    """The SMF side of ChargingNotify: a real h2c server that records what it receives."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.received: asyncio.Queue[tuple[Request, Any]] = asyncio.Queue()
        self.server = HttpServer(self.handle, port=0)

    async def handle(self, request: Request) -> Response:
        await self.received.put((request, json.loads(request.body)))
        return Response(self.status)


async def test_notify_reauthorization_and_abort_reach_the_smf(chf: Chf) -> None:
    receiver = NotifyReceiver()
    await receiver.server.start()
    client = await chf.client()
    uri = f"http://127.0.0.1:{receiver.server.port}/nsmf-callback/sm-contexts/7/charging-notify"
    created = await chf.call(client, "create", request_body(1, units=[usage(10), usage(20)], notify_uri=uri))
    assert created.status == 201
    await chf.service.operate(
        lambda txn, engine, now: provisioning.topup(
            txn, engine, "acct-a", 1_000_000, now=now, actor="test", reason="top-up"
        )
    )
    request, body = await asyncio.wait_for(receiver.received.get(), 5)
    assert request.http2 and request.method == "POST"
    assert request.path == "/nsmf-callback/sm-contexts/7/charging-notify"
    assert not schema_errors("TS32291_Nchf_ConvergedCharging.yaml#/components/schemas/ChargingNotifyRequest", body)
    assert body == {
        "notificationType": "REAUTHORIZATION",
        "reauthorizationDetails": [{"ratingGroup": 10}, {"ratingGroup": 20}],
    }
    await chf.service.operate(
        lambda txn, engine, now: provisioning.set_state(
            txn, engine, IMSI, "suspended", now=now, actor="test", reason="fraud check"
        )
    )
    _, body = await asyncio.wait_for(receiver.received.get(), 5)
    assert body == {"notificationType": "ABORT_CHARGING"}
    notifier = chf.component.notifier
    assert notifier is not None
    for _ in range(100):  # the notifier counts once the SMF's answer is in
        if notifier.delivered == 2:
            break
        await asyncio.sleep(0.01)
    assert notifier.delivered == 2
    await client.close()
    await receiver.server.stop()


async def test_notify_failure_is_bounded_and_never_blocks_charging(chf: Chf) -> None:
    notifier = chf.component.notifier
    assert notifier is not None
    notifier.settings.timeout, notifier.settings.retries, notifier.settings.backoff = 0.5, 1, 0.01
    receiver = NotifyReceiver(status=500)
    await receiver.server.start()
    client = await chf.client()
    dead = f"http://127.0.0.1:{receiver.server.port}/notify"
    created = await chf.call(client, "create", request_body(1, units=[usage(10)], notify_uri=dead))
    started = time.monotonic()
    await chf.service.operate(
        lambda txn, engine, now: provisioning.topup(
            txn, engine, "acct-a", 1_000_000, now=now, actor="test", reason="top-up"
        )
    )
    updated = await chf.call(client, "update", request_body(2, units=[usage(10, {"totalVolume": MB})]), created.ref)
    assert updated.status == 200 and time.monotonic() - started < 0.5
    for _ in range(2):  # the first attempt and one retry, then it gives up
        await asyncio.wait_for(receiver.received.get(), 5)
    for _ in range(100):
        if notifier.failed:
            break
        await asyncio.sleep(0.01)
    assert notifier.failed == 1 and notifier.delivered == 0
    await client.close()
    await receiver.server.stop()


async def test_bearer_token_and_jwt(tmp_path: Path) -> None:
    specs_or_skip()
    key = b"nrf-signing-key-for-tests"
    key_file = tmp_path / "jwt.key"
    key_file.write_bytes(key)
    settings = parse_settings({"port": 0, "auth_tokens": ["static-token"], "jwt_key_file": str(key_file)})
    chf = await start_chf(tmp_path, settings)
    try:
        client = await chf.client()
        body = request_body(1, units=[usage(10)])
        missing = await chf.call(client, "create", body)
        assert missing.status == 401 and missing.body["cause"] == "UNAUTHORIZED"
        wrong = await chf.call(client, "create", body, headers=[("authorization", "Bearer nope")])
        assert wrong.status == 401
        static = await chf.call(client, "create", body, headers=[("authorization", "Bearer static-token")])
        assert static.status == 201
        claims = {"scope": "nchf-convergedcharging", "exp": int(time.time()) + 60, "sub": "smf"}
        jwt = make_jwt(claims, key)
        signed = await chf.call(client, "create", body, headers=[("authorization", f"Bearer {jwt}")])
        assert signed.status == 201
        expired = make_jwt({**claims, "exp": int(time.time()) - 1}, key)
        late = await chf.call(client, "create", body, headers=[("authorization", f"Bearer {expired}")])
        assert late.status == 401 and "expired" in late.body["detail"]
        forged = make_jwt(claims, b"another key")
        assert (await chf.call(client, "create", body, headers=[("authorization", f"Bearer {forged}")])).status == 401
        await client.close()
    finally:
        await stop_chf(chf)


def test_settings_errors_name_the_field() -> None:
    with pytest.raises(Exception) as info:
        parse_settings({"port": "eight", "max_body_bytes": 10, "tls_cert": "a.pem", "colour": 1})
    text = str(info.value)
    for field in ("port", "max_body_bytes", "tls_cert", "colour"):
        assert f"[nchf] {field}:" in text
    assert parse_settings({}).port == 8000


async def test_tls_with_alpn_h2(tmp_path: Path) -> None:
    specs_or_skip()
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    chf = await start_chf(tmp_path, NchfSettings(port=0, tls_cert=str(cert), tls_key=str(key)))
    try:
        import ssl

        ctx = ssl.create_default_context(cafile=str(cert))
        client = await H2Client.connect("127.0.0.1", chf.port, tls=ctx)
        assert client.transport is not None
        assert client.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
        assert created.status == 201 and created.headers["location"].startswith("https://")
        await client.close()
    finally:
        await stop_chf(chf)


async def test_flow_control_windows_reopen_on_a_long_connection(tmp_path: Path) -> None:
    """Bodies totalling many times the connection window: the server keeps reopening it (in bulk)."""
    specs_or_skip()
    settings = NchfSettings(port=0)
    settings.limits.connection_window = 256 * 1024
    chf = await start_chf(tmp_path, settings)
    try:
        client = await chf.client()
        created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
        for n in range(2, 42):  # 40 x 30 KB = 1.2 MB through a 256 KB window
            body = request_body(n, units=[usage(10, {"totalVolume": 1000})])
            body["tenantIdentifier"] = "x" * 30_000  # an ignored field, to make the body large
            result = await asyncio.wait_for(chf.call(client, "update", body, created.ref), 5)
            assert result.status == 200
        assert chf.bucket(IMSI) == (100 * MB - 40 * 1000, 10 * MB)
        await client.close()
    finally:
        await stop_chf(chf)


async def test_callback_handler_answers_once_later_or_on_failure_over_h2_and_http1() -> None:
    """HttpServer's callback form (what the Nchf app uses): an answer given later from a callback, a handler that
    raises before answering (500), one that raises after answering (its answer stands), one that answers twice
    (the first counts), and a response larger than the client's flow-control window; the connection lives on."""
    loop = asyncio.get_running_loop()

    def on_request(request: Request, respond: Any) -> None:
        if request.path == "/later":
            loop.call_later(0.01, respond, Response(200, b"later", [("content-type", "text/plain")]))
        elif request.path == "/raise":
            raise RuntimeError("a bug before answering")
        elif request.path == "/raise-after":
            respond(Response(201, b"answered"))
            raise RuntimeError("a bug after answering")
        elif request.path == "/twice":
            respond(Response(200, b"first"))
            respond(Response(200, b"second"))
        else:
            respond(Response(200, request.body * 1000))  # 300 KB: beyond the client's 64 KiB window

    server = HttpServer(on_request=on_request, port=0)
    await server.start()
    try:
        client = await H2Client.connect("127.0.0.1", server.port)
        later, failed, after, twice, big = await asyncio.gather(
            client.request("POST", "/later", b"x"),
            client.request("POST", "/raise", b"x"),
            client.request("POST", "/raise-after", b"x"),
            client.request("POST", "/twice", b"x"),
            client.request("POST", "/big", b"0123456789" * 30),
        )
        assert (later.status, later.body) == (200, b"later")
        assert failed.status == 500
        assert (after.status, after.body) == (201, b"answered")
        assert (twice.status, twice.body) == (200, b"first")
        assert big.status == 200 and big.body == b"0123456789" * 30_000
        assert client.usable and server.in_flight == 0
        await client.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /twice HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        writer.write(b"POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.count(b"HTTP/1.1 200 OK") == 2 and b"first" in answer and b"second" not in answer
        assert answer.endswith(b"later")
        writer.close()
    finally:
        await server.stop()
    with pytest.raises(ValueError):
        HttpServer()


async def test_http1_expect_continue(chf: Chf, tmp_path: Path) -> None:
    curl = require_tool("curl")
    body = request_body(1, units=[usage(10)])
    body["tenantIdentifier"] = "x" * 2000  # over 1 KiB: curl sends Expect: 100-continue
    path = tmp_path / "create.json"
    path.write_text(json.dumps(body))
    started = time.monotonic()
    options = ["--silent", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"]
    options += ["-H", "content-type: application/json", "--data-binary", f"@{path}"]
    url = f"http://127.0.0.1:{chf.port}{API}/chargingdata"
    proc = await asyncio.create_subprocess_exec(curl, *options, url, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    assert out == b"201" and time.monotonic() - started < 0.9  # no one-second wait for 100 Continue


async def test_chf_serve_runs_the_nchf_front_end(tmp_path: Path) -> None:
    """`chf serve` with an [nchf] section: the factory registered in tools/serve.py starts the server."""
    specs_or_skip()
    import signal
    import sys

    repo = Path(__file__).resolve().parents[1]
    port = free_port()
    config = tmp_path / "chf.toml"
    config.write_text(
        f'[chf]\ndata_dir = "{tmp_path}"\ncatalogue = "{repo / "conf" / "catalogue.toml"}"\n'
        f'[store]\npath = "{tmp_path / "chf.lmdb"}"\nmap_size_mb = 64\n'
        f'[nchf]\nlisten = "127.0.0.1"\nport = {port}\n'
    )
    command = [sys.executable, "-m", "tools.cli", "serve", "--config", str(config)]
    proc = await asyncio.create_subprocess_exec(*command, cwd=repo, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 20)
            assert line, "chf serve exited before it was ready"
            if b"event=ready" in line:
                assert b"components=nchf" in line
                break
        client = await H2Client.connect("127.0.0.1", port)
        response = await client.post_json(f"{API}/chargingdata", json.dumps(request_body(1)).encode())
        check_response("create", response.status, response.headers, response.body)
        assert response.status == 404 and json.loads(response.body)["cause"] == "USER_UNKNOWN"  # empty store
        await client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_metrics_count_by_operation_and_never_name_a_subscriber(chf: Chf) -> None:
    from prometheus_client import generate_latest

    from chf.runtime.metrics import REGISTRY

    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
    await chf.call(client, "update", request_body(2, units=[usage(10, {"totalVolume": MB})]), created.ref)
    await chf.call(client, "update", request_body(2, units=[usage(10, {"totalVolume": MB})]), created.ref)
    await chf.call(client, "update", request_body(3, units=[usage(10)]), "no-such-ref")
    await client.close()
    text = generate_latest(REGISTRY).decode()
    assert 'chf_requests_total{interface="nchf",operation="create",result="SUCCESS"}' in text
    assert 'chf_requests_total{interface="nchf",operation="update",result="CONTEXT_NOT_FOUND"}' in text
    assert 'chf_duplicate_requests_total{interface="nchf"}' in text
    assert 'chf_request_duration_seconds_count{interface="nchf",operation="update"}' in text
    for secret in (IMSI, MSISDN, created.ref, "nchf:"):
        assert secret not in text


async def test_garbage_and_abrupt_disconnects_leave_the_server_serving(chf: Chf) -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for junk in (
        preface + b"\x00\x00\x04\x08\x00\x00\x00\x00\x00garbage-frames" * 3,  # bad WINDOW_UPDATE, then noise
        b"GET / HTTP/9\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"\x16\x03\x01\x02\x00" + b"\x00" * 64,  # a TLS hello on the cleartext port
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", chf.port)
        writer.write(junk)
        await writer.drain()
        await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
    # A client that sends an update and vanishes: the change is still made, once; nothing else breaks.
    client = await chf.client()
    created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
    await client.close()
    ghost = await chf.client()
    path = f"{API}/chargingdata/{created.ref}/update"
    body = json.dumps(request_body(2, units=[usage(10, {"totalVolume": MB})])).encode()
    pending = asyncio.ensure_future(ghost.post_json(path, body))
    await asyncio.sleep(0)
    assert ghost.transport is not None
    ghost.transport.abort()
    with pytest.raises(Exception):  # noqa: B017 - whichever way the connection loss surfaces
        await pending
    client = await chf.client()
    for _ in range(100):
        if chf.bucket(IMSI) == (99 * MB, 10 * MB):
            break
        await asyncio.sleep(0.01)
    again = await chf.call(client, "update", request_body(2, units=[usage(10, {"totalVolume": MB})]), created.ref)
    assert again.status == 200  # the stored answer: the retransmission charges nothing
    assert chf.bucket(IMSI) == (99 * MB, 10 * MB)
    await client.close()


async def test_a_request_that_never_completes_is_cut_off(tmp_path: Path) -> None:
    specs_or_skip()
    settings = NchfSettings(port=0)
    settings.limits.request_timeout = 0.3
    chf = await start_chf(tmp_path, settings)
    try:
        for start in (b"POST /nchf-convergedcharging/v3/chargingdata HTTP/1.1\r\nHost: x\r\n", b"PRI * HTTP/2.0\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", chf.port)
            writer.write(start)
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            assert 0.25 < time.monotonic() - started < 3
            writer.close()
        # Long-lived connections that complete their requests are never cut.
        client = await chf.client()
        created = await chf.call(client, "create", request_body(1, units=[usage(10)]))
        await asyncio.sleep(0.5)
        again = await chf.call(client, "update", request_body(2, units=[usage(10)]), created.ref)
        assert again.status == 200
        await client.close()
    finally:
        await stop_chf(chf)


async def test_oversized_headers_are_refused_and_the_server_stays_up(chf: Chf) -> None:
    client = await chf.client()
    body = json.dumps(request_body(1, units=[usage(10)])).encode()
    big = await client.post_json(f"{API}/chargingdata", body, [("x-padding", "p" * 40_000)], timeout=5)
    assert big.status == 431 and json.loads(big.body)["cause"] == "REQUEST_TOO_LARGE"
    ok = await chf.call(client, "create", request_body(1, units=[usage(10)]))  # the connection lives on
    assert ok.status == 201
    await client.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", chf.port)
    writer.write(b"POST / HTTP/1.1\r\nX-Padding: " + b"p" * 40_000 + b"\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    writer.close()
    fresh = await chf.client()
    ok = await chf.call(fresh, "create", request_body(1, units=[usage(10)]))
    assert ok.status == 201
    await fresh.close()


def test_unit_information_stays_in_range_for_any_grant() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from chf.core.model import FinalUnit, UnitAnswer
    from nchf.mapping import unit_information
    from tests.nchf_openapi import schema_errors

    ref = "TS32291_Nchf_ConvergedCharging.yaml#/components/schemas/MultipleUnitInformation"

    @settings(max_examples=150, deadline=None, database=None)
    @given(
        rg=st.integers(0, 2**32 - 1),
        unit=st.sampled_from(["bytes", "seconds", "events", "money", None]),
        granted=st.none() | st.integers(0, 2**64 - 1),
        validity=st.none() | st.integers(0, 2**31),
        threshold=st.none() | st.integers(0, 2**64 - 1),
        final=st.none() | st.sampled_from(["terminate", "redirect", "restrict_access"]),
        result=st.sampled_from(["success", "credit_limit_reached", "end_user_service_denied", "rating_failed"]),
    )
    def check(
        rg: int,
        unit: str | None,
        granted: int | None,
        validity: int | None,
        threshold: int | None,
        final: str | None,
        result: str,
    ) -> None:
        ua = UnitAnswer(rg, result, unit=unit, granted=granted, validity_time=validity)
        if unit == "bytes":
            ua.volume_threshold = threshold
        elif unit == "seconds":
            ua.time_threshold = threshold
        if final is not None:
            ua.final = FinalUnit(final, redirect_address="http://portal.example/", filter_id="restricted")
        assert not schema_errors(ref, unit_information(ua))

    specs_or_skip()
    check()


@pytest.mark.slow
def test_response_body_written_directly_equals_json_dumps_of_the_mapping() -> None:
    """charging_data_response_json writes the usual answer without json.dumps: it must be the very same text."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from chf.core.model import ChargingAnswer, FinalUnit, UnitAnswer
    from nchf.mapping import charging_data_response, charging_data_response_json

    units = st.builds(
        UnitAnswer,
        rating_group=st.integers(0, 2**32 - 1),
        result=st.sampled_from(["success", "credit_limit_reached", "user_unknown", "rating_failed", "odd"]),
        unit=st.sampled_from(["bytes", "seconds", "events", "money", None]),
        granted=st.none() | st.integers(0, 2**64 - 1),
        validity_time=st.none() | st.integers(0, 2**31),
        volume_threshold=st.none() | st.integers(0, 2**64 - 1),
        time_threshold=st.none() | st.integers(0, 2**33),
        quota_holding_time=st.none() | st.integers(0, 2**31),
        final=st.none() | st.builds(FinalUnit, st.sampled_from(["terminate", "redirect"]), st.just('http://x/"q"')),
    )

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        answer_units=st.lists(units, max_size=3),
        number=st.integers(0, 2**32 - 1),
        now=st.floats(0, 4e9, allow_nan=False) | st.integers(0, 4_000_000_000),
    )
    def check(answer_units: list[UnitAnswer], number: int, now: float) -> None:
        answer = ChargingAnswer("success", "nchf:x", number, answer_units)
        expected = json.dumps(charging_data_response(answer, number, now), separators=(",", ":")).encode()
        assert charging_data_response_json(answer, number, now) == expected

    check()
