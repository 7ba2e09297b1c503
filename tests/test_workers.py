"""`chf serve` with `[server] frontend_workers = 2`: the core in this process (tools.serve.run), the Gy and Nchf
front-ends in two real worker processes on shared ports, real Diameter and HTTP/2 clients over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chf.core.model import ChargingRequest, RequestError, Signal, UnitRequest, UsageReport
from chf.runtime import metrics
from chf.runtime.config import ConfigError, load_config, parse_config
from chf.runtime.corelink import RemoteService
from chf.runtime.service import ChargingService
from gy.client import DiameterClient, Mscc, ccr_avps
from gy.codec import find
from nchf.client import H2Client
from tests.gy_support import CATALOGUE, free_port, provision
from tests.nchf_harness import API, request_body, usage
from tools.serve import run

TOKEN = "workers-test-token-0123456789"
IMSI1, IMSI2, IMSI3 = "208010000000001", "208010000000002", "208010000000003"


def test_charging_request_round_trip() -> None:
    request = ChargingRequest(
        "update",
        "gy:s;1",
        7,
        [("imsi", IMSI1), ("msisdn", "33600000001")],
        [
            UnitRequest(10, 3, {}, [UsageReport({"bytes": 5, "bytes_in": 2}, "quota_exhausted")], "threshold"),
            UnitRequest(20, None, None, [], None),
        ],
        protocol="gy",
        action=None,
        serving_network="20801",
        rat="EUTRAN",
        apn="internet",
        notify=["pgw", "realm"],
        idempotency_key="k",
        currency="USD",
    )
    import msgpack

    wire = msgpack.unpackb(msgpack.packb(request.pack()))  # what crosses the link: lists, not tuples
    assert ChargingRequest.unpack(wire) == request
    # A worker of the release before names no currency: the account's.
    request.currency = None
    assert ChargingRequest.unpack(wire[:13]) == request
    signal_ = Signal("reauth", "gy:s;1", "gy", ["pgw", "realm"], (10, 20))
    assert Signal.unpack(msgpack.unpackb(msgpack.packb(signal_.pack()))) == signal_
    with pytest.raises(ValueError):
        ChargingRequest.unpack([99, *wire[1:]])


@pytest.mark.parametrize("value", [-1, "2", True, 1.5])
def test_frontend_workers_is_validated(value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"[server]\nfrontend_workers = {json.dumps(value)}\n", "x.toml")
    assert "x.toml: [server] frontend_workers: must be an integer >= 0" in str(err.value)
    with pytest.raises(ConfigError, match=r"\[server\] workers: unknown setting"):
        parse_config("[server]\nworkers = 2\n", "x.toml")
    assert parse_config("", "x.toml").frontend_workers == 0


def test_worker_metrics_are_summed_into_the_core_exposition() -> None:
    from prometheus_client import generate_latest

    metrics.REQUESTS.labels("gy", "CCR-Z", "success").inc(2)

    def requests(labels: dict[str, str], value: float) -> list[Any]:
        """A worker's snapshot of chf_requests: [[family, type, [[sample, labels, value]]]]."""
        return [["chf_requests", "counter", [["chf_requests_total", labels, value]]]]

    snap = requests({"interface": "gy", "operation": "CCR-Z", "result": "success"}, 3.0)
    other = requests({"interface": "nchf", "operation": "create-z", "result": "SUCCESS"}, 4.0)
    metrics.REMOTE_SAMPLES.append(lambda: [snap, other])
    try:
        text = generate_latest(metrics.exposition()).decode()
    finally:
        metrics.REMOTE_SAMPLES.clear()
    assert 'chf_requests_total{interface="gy",operation="CCR-Z",result="success"} 5.0' in text
    assert 'chf_requests_total{interface="nchf",operation="create-z",result="SUCCESS"} 4.0' in text
    assert text.count("# TYPE chf_requests_total counter") == 1


def write_config(tmp: Path, gy_port: int, nchf_port: int, api_port: int) -> Path:
    (tmp / "catalogue.toml").write_text(CATALOGUE)
    path = tmp / "chf.toml"
    path.write_text(
        f"""
[chf]
data_dir = "{tmp}"
catalogue = "{tmp / "catalogue.toml"}"
log_level = "info"

[server]
frontend_workers = 2

[store]
path = "{tmp / "chf.lmdb"}"
durability = "fsync"
map_size_mb = 64

[gy]
listen = "127.0.0.1"
port = {gy_port}
origin_host = "chf.test"
origin_realm = "test"
peers = [{{ host = "pgw1.test", realm = "test" }}, {{ host = "pgw2.test", realm = "test" }}]

[nchf]
listen = "127.0.0.1"
port = {nchf_port}

[api]
listen = "127.0.0.1"
port = {api_port}
tokens = {{ test = "{TOKEN}" }}
"""
    )
    return path


def ccr(host: str, session: str, rtype: int, number: int, **kw: Any) -> list[bytes]:
    return ccr_avps(session, rtype, number, origin_host=host, origin_realm="test", **kw)


def rc(msg: Any) -> int:
    return int(find(msg.avps, 268).u32())


def granted_bytes(msg: Any, rating_group: int = 10) -> tuple[int, int | None]:
    """(MSCC result code, granted bytes) of one rating group."""
    for m in msg.avps:
        if m.code == 456:
            rg = find(m.children, 432)
            if rg is not None and rg.u32() == rating_group:
                gsu = find(m.children, 431)
                total = find(gsu.children, 421) if gsu is not None else None
                return find(m.children, 268).u32(), total.value() if total is not None else None
    raise AssertionError(f"no MSCC for rating group {rating_group}")


def balance(service: ChargingService, account: str) -> int:
    with service.read() as txn:
        return int(txn.get_account(account).balance)


def worker_pids() -> list[int]:
    """Children of this process that are front-end workers (Linux /proc)."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and b"--worker" in cmdline:
            out.append(int(entry))
    return out


async def test_serve_with_two_frontend_workers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gy_port, nchf_port, api_port = free_port(), free_port(), free_port()
    config = load_config(str(write_config(tmp_path, gy_port, nchf_port, api_port)))
    ready: asyncio.Future[ChargingService] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(config, started=ready.set_result))
    done, _ = await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready in done, "chf serve with workers did not become ready"
    service = ready.result()
    assert len(worker_pids()) == 2
    assert any("event=ready" in r.getMessage() for r in caplog.records)
    clients: list[DiameterClient] = []
    try:
        await service.operate(provision(account="a1", imsi=IMSI1, msisdn="33600000001", balance=15_000))
        await service.operate(provision(account="a2", imsi=IMSI2, msisdn="33600000002"))
        await service.operate(provision(account="a3", imsi=IMSI3, msisdn="33600000003"))
        c1, _ = await DiameterClient.connect("127.0.0.1", gy_port, "pgw1.test", "test")
        c2, _ = await DiameterClient.connect("127.0.0.1", gy_port, "pgw2.test", "test")
        clients += [c1, c2]

        # Gy, connection 2: a whole session, with a retransmitted update answered from the stored answer.
        before = balance(service, "a2")
        cca = await c2.ccr(ccr("pgw2.test", "w;2", 1, 0, imsi=IMSI2, mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001 and granted_bytes(cca) == (2001, 1_000_000)
        update = ccr("pgw2.test", "w;2", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1_000_000}])])
        first = await c2.ccr(update)
        after_update = balance(service, "a2")
        assert rc(first) == 2001 and after_update < before
        again = await c2.ccr(update)  # new End-to-End-Id, same session and number: the core's stored answer
        assert rc(again) == 2001 and granted_bytes(again) == granted_bytes(first)
        assert balance(service, "a2") == after_update
        cca = await c2.ccr(ccr("pgw2.test", "w;2", 3, 2, mscc=[Mscc(10, used=[{"bytes": 10, "reason": 2}])]))
        assert rc(cca) == 2001
        # A request the core refuses still gets its precise answer through the link: unknown user.
        cca = await c2.ccr(ccr("pgw2.test", "w;9", 1, 0, imsi="999990000000000", mscc=[Mscc(10, {})]))
        assert rc(cca) == 5030

        # Gy, connection 1: quota runs out, a top-up through the API, the RAR reaches pgw1 from its worker.
        cca = await c1.ccr(ccr("pgw1.test", "r;1", 1, 0, imsi=IMSI1, mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001 and granted_bytes(cca) == (2001, 1_000_000)
        cca = await c1.ccr(ccr("pgw1.test", "r;1", 2, 1, mscc=[Mscc(10, {}, used=[{"bytes": 1_000_000}])]))
        assert granted_bytes(cca)[0] == 4012
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api_port}") as http:
            async with http.post(
                "/v1/accounts/a1/topups", json={"amount": 5_000_000, "reason": "shop"}, headers=auth
            ) as resp:
                assert resp.status == 200, await resp.text()
            rar = await asyncio.wait_for(c1.server_requests.get(), 5)
            assert rar.code == 258 and find(rar.avps, 263).text() == "r;1"
            assert c2.server_requests.empty()
            cca = await c1.ccr(ccr("pgw1.test", "r;1", 2, 2, mscc=[Mscc(10, {})]))
            assert rc(cca) == 2001 and granted_bytes(cca) == (2001, 1_000_000)

            # Nchf over h2c: create, update (and its retransmission), release.
            h2 = await H2Client.connect("127.0.0.1", nchf_port)
            try:
                before = balance(service, "a3")
                body = request_body(1, supi="imsi-" + IMSI3, units=[usage(10)], plmn=None)
                created = await h2.post_json(f"{API}/chargingdata", json.dumps(body).encode())
                assert created.status == 201, created.body
                ref = created.headers["location"].rsplit("/", 1)[1]
                body = request_body(2, supi=None, units=[usage(10, {"totalVolume": 1_000_000})], plmn=None)
                updated = await h2.post_json(f"{API}/chargingdata/{ref}/update", json.dumps(body).encode())
                assert updated.status == 200, updated.body
                after_update = balance(service, "a3")
                assert after_update < before
                repeat = await h2.post_json(f"{API}/chargingdata/{ref}/update", json.dumps(body).encode())
                assert repeat.status == 200
                stamp = "invocationTimeStamp"  # the time of this answer; the rest is the first answer's
                assert {**repeat.json(), stamp: 0} == {**updated.json(), stamp: 0}
                assert balance(service, "a3") == after_update
                # Updates without a number (free5GC's SMF) over several connections, hence through both workers:
                # the core numbers them from one counter, so none looks older than one already applied.
                others = [await H2Client.connect("127.0.0.1", nchf_port) for _ in range(6)]
                try:
                    unnumbered = request_body(0, supi=None, units=[usage(10, {"totalVolume": 1000})], plmn=None)
                    for i in range(12):
                        path = f"{API}/chargingdata/{ref}/update"
                        answer = await others[i % 6].post_json(path, json.dumps(unnumbered).encode())
                        assert answer.status == 200, answer.body
                finally:
                    for other in others:
                        await other.close()
                body = request_body(
                    0, supi=None, units=[usage(10, {"totalVolume": 0}, request=False, final=True)], plmn=None
                )
                released = await h2.post_json(f"{API}/chargingdata/{ref}/release", json.dumps(body).encode())
                assert released.status == 204, released.body
                broken = await h2.post_json(f"{API}/chargingdata", b"{not json")
                assert broken.status == 400 and b"Traceback" not in broken.body
            finally:
                await h2.close()

            # The workers' front-end metrics on the core's /metrics. Each worker ships its samples every second,
            # so wait until every worker's latest snapshot is past the requests above.
            # This pytest process is the core: other tests may have counted there already, so the workers' counts
            # come on top of what the core's own registry holds.
            def line(name: str, labels: dict[str, str], workers: float) -> str:
                own = metrics.REGISTRY.get_sample_value(name, labels) or 0.0
                rendered = ",".join(f'{k}="{v}"' for k, v in labels.items())
                return f"{name}{{{rendered}}} {own + workers}"

            expected = [
                line("chf_requests_total", {"interface": "gy", "operation": "CCR-T", "result": "success"}, 1),
                line("chf_requests_total", {"interface": "nchf", "operation": "release", "result": "SUCCESS"}, 1),
                line("chf_duplicate_requests_total", {"interface": "gy"}, 1),
                line("chf_peers_up", {"interface": "gy"}, 2),
            ]
            text = ""
            for _ in range(50):
                async with http.get("/metrics") as resp:
                    text = await resp.text()
                if all(line in text for line in expected):
                    break
                await asyncio.sleep(0.1)
            assert [line for line in expected if line not in text] == []
            assert "imsi" not in text.lower() and "r;1" not in text  # no subscriber or session in a label

        # A corrupt frame on the core link closes that connection only.
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "corelink.sock"))
        writer.write(b"\x00\x00\x00\x02\xc1\xc1")  # 0xc1 is never valid msgpack
        while await asyncio.wait_for(reader.read(65536), 5):  # the core's hello, then EOF
            pass
        writer.close()
        cca = await c2.ccr(ccr("pgw2.test", "w;4", 1, 0, imsi=IMSI2, mscc=[Mscc(10, {})]))
        assert rc(cca) == 2001

        async def readiness() -> tuple[int, dict[str, Any]]:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{api_port}") as api, api.get("/readyz") as resp:
                return resp.status, await resp.json()

        status, body = await readiness()
        assert status == 200 and body["checks"]["frontend_workers"] is True, body

        # A worker that dies is restarted, and the service goes on; until it is back the core is not ready.
        victim = worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(40):
            status, body = await readiness()
            if status == 503:
                break
            await asyncio.sleep(0.025)
        assert status == 503 and body["checks"]["frontend_workers"] is False, body
        for _ in range(100):
            pids = worker_pids()
            if (
                len(pids) == 2
                and victim not in pids
                and any(
                    "event=worker_ready" in r.getMessage() or "event=worker_started" in r.getMessage()
                    for r in caplog.records
                )
            ):
                break
            await asyncio.sleep(0.1)
        assert victim not in worker_pids() and len(worker_pids()) == 2
        assert any("event=worker_exited" in r.getMessage() for r in caplog.records)
        for _ in range(100):  # a new connection reaches a listening worker
            try:
                c3, _ = await DiameterClient.connect("127.0.0.1", gy_port, "pgw2.test", "test")
                clients.append(c3)
                cca = await c3.ccr(ccr("pgw2.test", "w;3", 1, 0, imsi=IMSI2, mscc=[Mscc(10, {})]))
                assert rc(cca) == 2001
                break
            except (TimeoutError, ConnectionError, OSError):
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("no worker answered after the restart")
        for _ in range(50):
            status, body = await readiness()
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and body["checks"]["frontend_workers"] is True, body
    finally:
        alive = [c for c in clients if not c.closed.done()]  # the killed worker's peers lost their connection
        os.kill(os.getpid(), signal.SIGTERM)  # the same shutdown path as `chf serve`
        await asyncio.wait_for(task, 40)
    # Clean shutdown: the peers were told (DPR from their worker), the workers are gone, the socket removed.
    assert alive and all(c.received.get(282, 0) == 1 for c in alive)
    assert worker_pids() == []
    assert not (tmp_path / "corelink.sock").exists()
    for c in clients:
        c.close()


async def test_remote_service_fails_waiting_requests_when_the_core_goes() -> None:
    """A worker whose core vanished answers what was waiting as 'store closed', never hangs."""
    remote = RemoteService("/nonexistent", 0)
    with pytest.raises(Exception):  # noqa: B017 - nothing listens: the connect fails
        await remote.connect(timeout=1)
    outcomes: list[Any] = []
    from store.interface import StoreClosed

    with pytest.raises(StoreClosed):
        remote.charge_then(ChargingRequest("initial", "gy:x", 0, []), outcomes.append)
    remote._pending[1] = outcomes.append
    remote._reply(1, [1, "request", "units", "bad"])
    assert isinstance(outcomes[0], RequestError) and outcomes[0].field == "units"
    remote._pending[2] = outcomes.append
    remote._lost()
    assert isinstance(outcomes[1], StoreClosed) and remote.closed.is_set()


async def test_workers_need_fixed_front_end_ports(tmp_path: Path) -> None:
    """Port 0 would give each worker a port of its own: refused at start-up, naming the key."""
    path = write_config(tmp_path, 0, free_port(), free_port())
    with pytest.raises(ConfigError, match=r"\[gy\] port: must be a fixed port with \[server\] frontend_workers"):
        await run(load_config(str(path)))
    path = write_config(tmp_path, free_port(), 0, free_port())
    with pytest.raises(ConfigError, match=r"\[nchf\] port: must be a fixed port"):
        await run(load_config(str(path)))
    assert worker_pids() == []
