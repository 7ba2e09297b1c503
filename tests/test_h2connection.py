"""nchf.h2connection.ServerH2Connection behaves as h2's own H2Connection, byte for byte, including when frames
arrive on streams that are closed (its one override is the frame dispatch of `_receive_frame`); the patches of
h2 and hpack are applied only to the upstream source they were written against, and pyproject.toml pins it."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import h2.config
import h2.connection
import h2.exceptions
import hpack.hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame

from nchf import h2connection, huffman
from nchf.h2connection import ServerH2Connection, server_h2_config

REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "chf"), (":path", "/x")]


def client_bytes(steps: Callable[[h2.connection.H2Connection], bytes]) -> bytes:
    client = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    return client.data_to_send() + steps(client)


def raw_frame(frame: DataFrame | HeadersFrame | RstStreamFrame) -> bytes:
    return frame.serialize()


def run(server_class: type[h2.connection.H2Connection], data: list[bytes]) -> list[object]:
    server = server_class(config=server_h2_config())
    server.initiate_connection()
    out: list[object] = [server.data_to_send()]
    for chunk in data:
        try:
            events = server.receive_data(chunk)
            out.append([type(e).__name__ for e in events])
        except h2.exceptions.ProtocolError as exc:
            out.append(("error", type(exc).__name__))
        out.append(server.data_to_send())
    return out


def normal(client: h2.connection.H2Connection) -> bytes:
    client.send_headers(1, REQUEST)
    client.send_data(1, b"{}", end_stream=True)
    return client.data_to_send()


def headers_only(client: h2.connection.H2Connection) -> bytes:
    client.send_headers(1, REQUEST)
    client.send_headers(3, REQUEST, end_stream=True)
    return client.data_to_send()


def data(stream: int, end: bool = False) -> bytes:
    frame = DataFrame(stream)
    frame.data = b"{}"
    if end:
        frame.flags.add("END_STREAM")
    return raw_frame(frame)


def reset(stream: int) -> bytes:
    frame = RstStreamFrame(stream)
    frame.error_code = 8
    return raw_frame(frame)


def bare_headers(stream: int) -> bytes:
    frame = HeadersFrame(stream)
    frame.data = b"\x82"  # :method GET, indexed
    frame.flags.add("END_HEADERS")
    return raw_frame(frame)


CASES = {
    "request": [client_bytes(normal)],
    "data after the client reset the stream": [client_bytes(headers_only), reset(1), data(1)],
    "data after the stream ended": [client_bytes(headers_only), data(3)],
    "headers on a stream id below one already opened": [client_bytes(headers_only), bare_headers(1)],
    "data on a stream never opened, below the highest": [client_bytes(headers_only), data(1, end=True), data(1)],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_as_h2(name: str) -> None:
    assert run(ServerH2Connection, CASES[name]) == run(h2.connection.H2Connection, CASES[name])


def test_the_patches_were_written_against_the_installed_h2_and_hpack() -> None:
    """Each patch of nchf.h2connection holds a digest of the upstream source it replaces or relies on. A new h2 or
    hpack release fails here first: re-derive the patch from the new source, then update PATCHED_AGAINST and the
    pins in pyproject.toml."""
    for name, digest in h2connection.PATCHED_AGAINST.items():
        assert h2connection.upstream_digest(name) == digest, f"{name} is not the source the patch was written for"
    assert h2connection.RECEIVE_FRAME_PATCHED and "_receive_frame" in ServerH2Connection.__dict__
    assert h2connection.HPACK_PATCHED and hpack.hpack.decode_huffman is huffman.decode_huffman


def test_pyproject_pins_the_installed_releases() -> None:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    pins = dict(re.findall(r'"(h2|hpack)==([0-9.]+)"', text))
    assert pins == {"h2": metadata.version("h2"), "hpack": metadata.version("hpack")}


def test_a_patch_is_not_applied_to_other_upstream_source(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "h2.connection.H2Connection._receive_frame"
    monkeypatch.setitem(h2connection.PATCHED_AGAINST, name, "0" * 24)
    assert not h2connection._matches(name)
    assert h2connection._matches("hpack.hpack")
