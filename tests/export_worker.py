"""An exporter in its own process, so tests can kill it with SIGKILL mid-stream (tests/test_export.py).

    python -m tests.export_worker STORE files DIRECTORY [MAX_BYTES]
    python -m tests.export_worker STORE nats URL
    python -m tests.export_worker STORE cdr DIRECTORY [MAX_RECORDS]

Runs until SIGTERM (a clean stop: the open file is closed and renamed) or SIGKILL (a crash).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from chf.export.cdr import CdrSink
from chf.export.exporter import Exporter, Sink
from chf.export.files import FileSink
from chf.export.nats import NatsSink
from store.lmdbstore import Store


async def main(argv: list[str]) -> None:
    store_path, kind, target = argv[:3]
    sink: Sink
    if kind == "files":
        max_bytes = int(argv[3]) if len(argv) > 3 else 64 << 20
        sink = FileSink(target, max_bytes=max_bytes, max_age=3600)
    elif kind == "cdr":
        max_records = int(argv[3]) if len(argv) > 3 else 100_000
        sink = CdrSink(target, node_id="chftest", max_records=max_records, max_age=3600)
    else:
        sink = NatsSink([target], ack_timeout=1.0)
    store = Store(store_path, map_size=1 << 30)
    store.start(asyncio.get_running_loop())
    exporter = Exporter(store, sink, batch=50, poll_interval=0.02, retry_initial=0.05, retry_max=0.5)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await exporter.start()
    print("started", flush=True)
    await stop.wait()
    await exporter.stop()
    await store.stop()
    store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(sys.argv[1:]))
