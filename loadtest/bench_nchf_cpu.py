"""Nchf front-end CPU per request, in one process (no sockets, no store): what lies between the socket and the engine.

An h2 client (the `h2` library, client side, windows opened wide as h2load opens them) prepares the bytes of
N update requests (h2load's header set and the bench_nchf body) before the clock starts. They are fed to the
Nchf server's `HttpConnection.data_received` in chunks of --batch requests (what one socket read brings under
load), with the real NchfApp and ChargingService on a stub store whose futures are resolved like a group
commit, and a transport that only counts writes. The responses are decoded afterwards and checked (all 200,
JSON with the granted units).

Also measured alone, per call: the h2 library's own server-side work for the same exchange (receive the
request's frames, send HEADERS + DATA, serialise), JSON decode, parse_request + mapping, response mapping +
JSON encode. Every number is CPU µs (process time; the machine is shared), the median of --repeat runs.

    python -m loadtest.bench_nchf_cpu
    python -m loadtest.bench_nchf_cpu --profile        # cProfile of the server pipeline
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from chf.core.catalogue_loader import parse_catalogue
from chf.core.model import UPDATE, ChargingAnswer, UnitAnswer
from chf.runtime.service import ChargingService
from loadtest.bench_gy_codec import StubStore
from loadtest.bench_nchf import API, CATALOGUE, UPDATE_BODY
from nchf import http as nchf_http
from nchf.app import NchfApp, transport_error
from nchf.h2connection import ServerH2Connection, server_h2_config
from nchf.mapping import charging_data_response_json, parse_request, to_charging_request

BODY = json.dumps(UPDATE_BODY).encode()  # as bench_nchf writes it for h2load


def h2load_headers(stream_id: int) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":path", f"{API}/b{stream_id % 10_000}/update"),
        (":scheme", "http"),
        (":authority", "127.0.0.1:8000"),
        ("user-agent", "h2load nghttp2/1.64.0"),
        ("content-type", "application/json"),
        ("content-length", str(len(BODY))),
    ]


def answer() -> ChargingAnswer:
    unit = UnitAnswer(10, unit="bytes", granted=1_000_000, validity_time=3600, volume_threshold=200_000)
    return ChargingAnswer("success", "nchf:b1", 7, [unit], currency="EUR")


class _Client:
    """The client side: prepares request bytes and reads the server's bytes afterwards."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**31 - 1 - 65535)
        self.next_stream = 1

    def preface(self) -> bytes:
        return self.conn.data_to_send()

    def requests(self, count: int) -> bytes:
        for _ in range(count):
            sid = self.next_stream
            self.next_stream += 2
            self.conn.send_headers(sid, h2load_headers(sid))
            self.conn.send_data(sid, BODY, end_stream=True)
        return self.conn.data_to_send()

    def responses(self, data: bytes) -> dict[int, tuple[str, bytes]]:
        out: dict[int, tuple[str, bytes]] = {}
        status: dict[int, str] = {}
        body: dict[int, bytearray] = {}
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status[event.stream_id] = next(str(v) for n, v in event.headers or [] if n == ":status")
            elif isinstance(event, h2.events.DataReceived):
                body.setdefault(event.stream_id, bytearray()).extend(event.data or b"")
            elif isinstance(event, h2.events.StreamEnded):
                out[event.stream_id] = (status[event.stream_id], bytes(body.get(event.stream_id, b"")))
        return out


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.chunks.append(bytes(data))
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def pipeline(requests: int, batch: int, profile: cProfile.Profile | None = None) -> dict[str, float]:
    """CPU µs per request of the Nchf server's event-loop side with the store stubbed out."""
    store = StubStore()
    service = ChargingService(store, parse_catalogue(CATALOGUE, "bench-catalogue.toml"))  # type: ignore[arg-type]
    app = NchfApp(service)
    server = nchf_http.HttpServer(on_request=app.handle_soon, port=0, error_responder=transport_error)
    connection = nchf_http.HttpConnection(server)
    transport = _Transport()
    connection.connection_made(transport)
    client = _Client()
    connection.data_received(client.preface())
    await asyncio.sleep(0)
    client.responses(b"".join(transport.chunks))  # the server's SETTINGS and window: the client may send
    result = answer()
    transport.chunks.clear()
    writes0 = transport.writes
    spent = 0.0
    answers: dict[int, tuple[str, bytes]] = {}
    rounds = requests // batch
    for _ in range(rounds):
        chunk = client.requests(batch)  # the client's work stays outside the clock
        if profile is not None:
            profile.enable()
        started = time.process_time()
        connection.data_received(chunk)
        while store.pending or server.in_flight:
            pending, store.pending = store.pending, []
            for done in pending:
                done(result)
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # the flush
        spent += time.process_time() - started
        if profile is not None:
            profile.disable()
        answers.update(client.responses(b"".join(transport.chunks)))
        transport.chunks.clear()
    requests = rounds * batch
    assert len(answers) == requests, f"{len(answers)} answers to {requests} requests"
    for status, body in answers.values():
        assert status == "200", (status, body)
        assert json.loads(body)["multipleUnitInformation"][0]["grantedUnit"] == {"totalVolume": 1_000_000}
    return {"us_per_request": spent / requests * 1e6, "writes_per_batch": (transport.writes - writes0) / rounds}


def h2_alone(requests: int, batch: int) -> float:
    """CPU µs per request of the h2 library's own server-side work: receive, send HEADERS + DATA, serialise."""
    client = _Client()
    server = ServerH2Connection(config=server_h2_config())
    server.initiate_connection()
    server.increment_flow_control_window(16 << 20)
    server.receive_data(client.preface())
    client.responses(server.data_to_send())
    response_body = charging_data_response_json(answer(), 0)
    length = b"%d" % len(response_body)
    headers = [(b":status", b"200"), (b"content-type", b"application/json"), (b"content-length", length)]
    spent = 0.0
    rounds = requests // batch
    for _ in range(rounds):
        chunk = client.requests(batch)
        started = time.process_time()
        for event in server.receive_data(chunk):
            if type(event) is h2.events.StreamEnded:
                server.send_headers(event.stream_id, headers)
                server.send_data(event.stream_id, response_body, end_stream=True)
        out = server.data_to_send()
        spent += time.process_time() - started
        client.responses(out)
    return spent / (rounds * batch) * 1e6


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    started = time.process_time()
    deadline = started + seconds
    while True:
        for _ in range(1000):
            fn()
        n += 1000
        now = time.process_time()
        if now >= deadline:
            return (now - started) / n * 1e6


def components(seconds: float, repeat: int) -> dict[str, float]:
    decoded = json.loads(BODY)
    parsed = parse_request(decoded, creating=False)
    result = answer()

    def median(fn: Callable[[], object]) -> float:
        return round(statistics.median(per_call_us(fn, seconds / repeat) for _ in range(repeat)), 2)

    return {
        "json_decode_us": median(lambda: json.loads(BODY)),
        "parse_request_us": median(lambda: parse_request(decoded, creating=False)),
        "to_charging_request_us": median(lambda: to_charging_request(parsed, UPDATE, "nchf:b1", 7)),
        "response_build_us": median(lambda: charging_data_response_json(result, 0)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="loadtest.bench_nchf_cpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=8000, help="requests per pipeline run")
    p.add_argument("--batch", type=int, default=8, help="requests per data_received call")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement; the median is reported")
    p.add_argument("--seconds", type=float, default=1.0, help="time per component measurement")
    p.add_argument("--profile", action="store_true", help="cProfile the server pipeline instead")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        import uvloop

        new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop

    def run(coro: Any) -> Any:
        loop = new_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()

    if args.profile:
        prof = cProfile.Profile()
        run(pipeline(args.requests, args.batch, prof))
        pstats.Stats(prof).sort_stats(os.environ.get("CHF_PROFILE_SORT", "tottime")).print_stats(30)
        return 0
    runs = [run(pipeline(args.requests, args.batch)) for _ in range(args.repeat)]
    results: dict[str, float] = {
        "server_us_per_request": round(statistics.median(r["us_per_request"] for r in runs), 1),
        "writes_per_batch": runs[0]["writes_per_batch"],
        "h2_alone_us_per_request": round(
            statistics.median(h2_alone(args.requests, args.batch) for _ in range(args.repeat)), 1
        ),
    }
    results.update(components(args.seconds, args.repeat))
    if args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name:>26}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
