"""h2 and hpack as the Nchf server runs them: its configuration, and the three places where it changes them.

1. `ServerH2Connection._receive_frame`: h2's own method without the `repr(frame)` it formats for a trace log
   line that its default logger drops, for every frame received (5 % of h2's instructions per request, measured
   with callgrind).
2. `hpack.hpack.decode_huffman`: the same results and errors, a byte per step instead of a nibble
   (nchf/huffman.py; 11.3 -> 2.7 us per request path).
3. `hpack.hpack.log`: hpack logs every header it encodes or decodes at DEBUG level (about 24 calls per request,
   each paying the logging level check). Nobody debugs HPACK in a charging function; on this hot path they are
   dropped.

The first is a private method of h2, the others are globals of hpack: each patch is only right for the code it
was written against. pyproject.toml pins the exact h2 and hpack releases, `PATCHED_AGAINST` holds a digest of
the upstream source each patch replaces or relies on, and a patch whose upstream source differs (an
installation that ignored the pins) is not applied: the stock code runs, slower but correct, and a warning says
so. tests/test_h2connection.py fails on such a difference, so a version bump re-derives the patches first.

This module is interpreted, not compiled: `_receive_frame` is all attribute lookups, which CPython's specialising
interpreter does faster than generic compiled code.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.exceptions
import hpack.hpack
import hpack.huffman_table
import hyperframe.frame

from nchf import huffman

log = logging.getLogger("nchf.h2")

# sha256 (first 24 hex digits) of the upstream source each patch was written against: h2 4.4.1, hpack 4.2.0.
PATCHED_AGAINST = {
    "h2.connection.H2Connection._receive_frame": "39b2e16b4fd74ed014ca144a",
    "hpack.hpack": "4ab14aab1a856cee45aea316",  # where the patched globals `log` and `decode_huffman` are used
    "hpack.huffman_table.decode_huffman": "cc3f7f031fb93b35a377fff4",  # what nchf.huffman reproduces
}
_UPSTREAM: dict[str, Any] = {
    "h2.connection.H2Connection._receive_frame": h2.connection.H2Connection._receive_frame,
    "hpack.hpack": hpack.hpack,
    "hpack.huffman_table.decode_huffman": hpack.huffman_table.decode_huffman,
}


def upstream_digest(name: str) -> str:
    """The digest of the installed upstream source behind patch `name` ("" when the source is not available)."""
    try:
        source = inspect.getsource(_UPSTREAM[name])
    except (OSError, TypeError):
        return ""
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def _matches(*names: str) -> bool:
    changed = [name for name in names if upstream_digest(name) != PATCHED_AGAINST[name]]
    if changed:
        log.warning("event=h2_patch_skipped changed=%s reason=upstream_source_differs", ",".join(changed))
    return not changed


def server_h2_config() -> h2.config.H2Configuration:
    """The h2 settings of our server side (also what the CPU benchmarks measure h2 with)."""
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        # Validation costs ~20 % of the h2 CPU per request; h2 still enforces framing and HPACK rules.
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class ServerH2Connection(h2.connection.H2Connection):
    """h2's connection, less the trace formatting of every received frame (patch 1 above), counting the frames it
    answers with RST_STREAM on a stream already reset (`stream_errors`): each still costs an HPACK decode, and a
    client repeating the frames of reset streams (make bench-chaos's no-read peers did) made the server decode
    megabytes a second of them with no event to see them by (Http2Session spends them from its reset budget)."""

    stream_errors = 0

    def _receive_frame(self, frame: Any) -> list[Any]:
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            # Closed by RST_STREAM: answer with RST_STREAM; otherwise a connection error (h2's handling).
            if self._stream_is_closed_by_reset(e.stream_id):
                f = hyperframe.frame.RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
                self.stream_errors += 1
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = hyperframe.frame.RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
                self.stream_errors += 1
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


class _NoDebugLog(logging.Logger):
    """hpack's module logger without its DEBUG lines (patch 3 above); any other level logs as before."""

    def debug(self, *_args: object, **_kwargs: object) -> None:
        return None


def _patch_hpack() -> None:
    """Patches 2 and 3 above (hpack's module globals, so the client side of h2 runs them too)."""
    quiet = _NoDebugLog(hpack.hpack.log.name)
    quiet.parent = hpack.hpack.log.parent  # its other levels go where hpack's went
    hpack.hpack.log = quiet
    hpack.hpack.decode_huffman = huffman.decode_huffman


RECEIVE_FRAME_PATCHED = _matches("h2.connection.H2Connection._receive_frame")
if not RECEIVE_FRAME_PATCHED:
    del ServerH2Connection._receive_frame
HPACK_PATCHED = _matches("hpack.hpack", "hpack.huffman_table.decode_huffman")
if HPACK_PATCHED:
    _patch_hpack()
