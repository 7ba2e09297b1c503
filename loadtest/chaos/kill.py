"""SIGKILL of `chf serve` under mixed Gy + Nchf load, repeatedly, checked by an external bookkeeping client.

The client debits one SMS (rating group 40, SMS_PRICE micro-units) per request from lines of one prepaid account:
Gy CCR-Event DIRECT_DEBITING (each its own Session-Id) and Nchf one-time IEC creates (each its own
invocationTimeStamp), several in flight on several connections of each interface. It records every request it
sent and every debit acknowledged (Gy 2001 with the rating group's 2001; Nchf 201 with SUCCESS). At a random
moment the server is SIGKILLed; it is started again on the same store, and the client sends every request that got
no answer again, byte for byte, as a real PGW or SMF would: the server must answer it from what it stored, if it
was charged, and charge it otherwise, once. Then the next round of load, and the next kill.

After the last round the client reads, through the management API, every event of the lines and the account:
- lost: an acknowledged debit with no debit event;
- doubled: a request with more than one debit event, or a debit event for a request that was refused;
- balance: the account's balance equals the opening balance plus the events' impacts, and the opening balance
  minus SMS_PRICE per debit event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gy.client import DiameterClient, Mscc, ccr_avps
from loadtest.chaos import nchffuzz
from loadtest.chaos.server import ACCOUNT, IMSI_BASE, OPENING, SMS_PRICE, TOKEN, Server
from nchf.client import ClientError, H2Client

CMD_CC = 272
LINES = 8
# End-to-End ids unique over all the client's connections and runs: the server's duplicate detection keys on
# Origin-Host + End-to-End-Id (RFC 6733 6.12), and every connection of the bookkeeper has the same Origin-Host.
_E2E = itertools.count((int(time.time()) & 0xFFF) << 20)


class Bookkeeper(DiameterClient):
    def __init__(self, origin_host: str, origin_realm: str, **kw: Any) -> None:
        super().__init__(origin_host, origin_realm, **kw)
        self._e2e = _E2E


@dataclass
class Book:
    """What the client knows: what it sent (to send again) and how each request was answered."""

    gy_sent: dict[str, list[bytes]] = field(default_factory=dict)  # Session-Id -> the CCR's AVPs
    nchf_sent: dict[str, bytes] = field(default_factory=dict)  # stamp -> body
    acked: set[str] = field(default_factory=set)  # "gy:<sid>" / "nchf:<ref>"
    refused: set[str] = field(default_factory=set)
    unanswered: set[str] = field(default_factory=set)  # "gy:<sid>" / "stamp:<stamp>"
    nchf_ref: dict[str, str] = field(default_factory=dict)  # stamp -> ref
    answers: int = 0


def _mscc_ok(answer: Any) -> bool:
    code = answer.find(268)
    mscc = answer.find(456)
    if code is None or code.u32() != 2001 or mscc is None:
        return False
    inner = next((c for c in mscc.children if c.code == 268), None)
    return inner is None or inner.u32() == 2001


async def gy_debit(client: DiameterClient, book: Book, sid: str) -> None:
    key = "gy:" + sid
    book.unanswered.add(key)
    try:
        answer = await client.ccr(book.gy_sent[sid], timeout=5)
    except (ConnectionError, TimeoutError, OSError):
        return
    book.unanswered.discard(key)
    book.answers += 1
    (book.acked if _mscc_ok(answer) else book.refused).add(key)


async def nchf_debit(client: H2Client, book: Book, stamp: str) -> None:
    key = "stamp:" + stamp
    book.unanswered.add(key)
    try:
        response = await client.post_json(nchffuzz.API, book.nchf_sent[stamp], timeout=5)
    except (ClientError, TimeoutError, OSError):
        return
    book.unanswered.discard(key)
    book.answers += 1
    ok = False
    if response.status == 201:
        ref = response.headers.get("location", "").rsplit("/", 1)[-1]
        book.nchf_ref[stamp] = ref
        units = json.loads(response.body).get("multipleUnitInformation") or [{}]
        ok = units[0].get("resultCode") == "SUCCESS"
    (book.acked if ok else book.refused).add("nchf:" + book.nchf_ref.get(stamp, "stamp:" + stamp))


_numbers = itertools.count()


def new_gy(book: Book, run: int, rng: random.Random) -> str:
    sid = f"bookkeeper.chaos;{run};{next(_numbers)}"
    imsi = str(IMSI_BASE + rng.randrange(LINES))
    book.gy_sent[sid] = ccr_avps(
        sid,
        4,
        0,
        origin_host="bookkeeper.chaos",
        origin_realm="chaos",
        imsi=imsi,
        requested_action=0,
        mscc=[Mscc(40, {"events": 1})],
    )
    return sid


def new_nchf(book: Book, rng: random.Random) -> str:
    n = next(_numbers)
    stamp = f"2026-11-22T11:{n // 60_000 % 60:02d}:{n // 1000 % 60:02d}.{n:09d}Z"
    book.nchf_sent[stamp] = json.dumps(nchffuzz.one_time("IEC", str(IMSI_BASE + rng.randrange(LINES)), stamp)).encode()
    return stamp


async def load(server: Server, book: Book, run: int, rng: random.Random, stop: asyncio.Event, width: int) -> None:
    """Debits on 2 Gy and 2 Nchf connections, `width` in flight on each, until `stop` or the server dies."""

    async def gy_lane(client: DiameterClient) -> None:
        while not stop.is_set() and client.transport is not None:
            await gy_debit(client, book, new_gy(book, run, rng))

    async def nchf_lane(client: H2Client) -> None:
        while not stop.is_set() and client.usable:
            await nchf_debit(client, book, new_nchf(book, rng))

    gy_clients = [
        (await Bookkeeper.connect("127.0.0.1", server.ports.gy, "bookkeeper.chaos", "chaos"))[0] for _ in range(2)
    ]
    nchf_clients = [await H2Client.connect("127.0.0.1", server.ports.nchf) for _ in range(2)]
    lanes = [gy_lane(c) for c in gy_clients for _ in range(width)]
    lanes += [nchf_lane(c) for c in nchf_clients for _ in range(width)]
    await asyncio.gather(*lanes, return_exceptions=True)
    for c in gy_clients:
        c.close()
    for h in nchf_clients:
        with contextlib.suppress(Exception):
            await h.close()


async def resend(server: Server, book: Book) -> None:
    """Every request that got no answer, sent again as it was (a peer's retransmission after the restart)."""
    gy, _ = await Bookkeeper.connect("127.0.0.1", server.ports.gy, "bookkeeper.chaos", "chaos")
    h2c = await H2Client.connect("127.0.0.1", server.ports.nchf)
    for key in sorted(book.unanswered):
        kind, _, ident = key.partition(":")
        if kind == "gy":
            await gy_debit(gy, book, ident)
        else:
            await nchf_debit(h2c, book, ident)
    gy.close()
    await h2c.close()


def api_get(server: Server, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.ports.api}{path}", headers={"Authorization": "Bearer " + TOKEN}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def debit_events(server: Server) -> tuple[Counter[str], int]:
    """Debit events by session key ("gy:<sid>", "nchf:<ref>"), and the sum of all wallet impacts."""
    counts: Counter[str] = Counter()
    impacts = 0
    for n in range(LINES):
        after = 0
        while True:
            page = api_get(server, f"/v1/lines/{IMSI_BASE + n}/events?from=0&limit=1000&after={after}")
            for event in page["events"]:
                impacts += sum(i["delta"] for i in event.get("impacts", ()) if i["balance"].endswith(":wallet"))
                if event["kind"] == "usage" and event.get("reason") == "DIRECT_DEBITING":
                    counts[event["session"]] += 1
            if page["next_after"] is None:
                break
            after = page["next_after"]
    return counts, impacts


@dataclass
class KillResult:
    kills: int
    acknowledged: int
    answered: int
    resent: int
    debit_events: int
    lost: int
    doubled: int
    balance_ok: bool
    restart_seconds: float
    examples: list[str] = field(default_factory=list)


def check(server: Server, book: Book) -> tuple[int, int, bool, int, list[str]]:
    counts, impacts = debit_events(server)
    balance = api_get(server, f"/v1/accounts/{ACCOUNT}")["balance"]
    lost = [k for k in book.acked if counts[k] == 0]
    doubled = [k for k, n in counts.items() if n > 1] + [k for k in book.refused if counts[k] > 0]
    events = sum(counts.values())
    balance_ok = balance == OPENING + impacts == OPENING - SMS_PRICE * events
    return len(lost), len(doubled), balance_ok, events, (lost + doubled)[:5]


async def run(
    home: Path, *, kills: int, seed: int = 1, width: int = 4, cpu: int | None = None, durability: str = "fsync"
) -> KillResult:
    rng = random.Random(seed)
    book = Book()
    server = Server(home, lines=LINES, cpu=cpu, durability=durability)
    resent = 0
    restart = 0.0
    try:
        server.start()
        for run_no in range(kills):
            stop = asyncio.Event()
            task = asyncio.create_task(load(server, book, run_no, rng, stop, width))
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            server.kill()  # mid-flight: no drain, no last commit
            stop.set()
            await asyncio.wait_for(task, 30)
            started = time.monotonic()
            server.start()
            restart = max(restart, time.monotonic() - started)
            resent += len(book.unanswered)
            await resend(server, book)
        lost, doubled, balance_ok, events, examples = check(server, book)
    finally:
        server.stop()
    return KillResult(
        kills, len(book.acked), book.answers, resent, events, lost, doubled, balance_ok, round(restart, 2), examples
    )
