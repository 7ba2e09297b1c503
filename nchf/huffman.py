"""HPACK Huffman decoding (RFC 7541 section 5.2) a byte at a time, for the h2 server's header decoding.

hpack decodes Huffman strings with a state machine that consumes one nibble per step, in pure Python: two table
lookups and tuple unpackings per input byte. Under h2load every request's :path is a new Huffman literal, and
that loop alone was a tenth of the h2 library's work per request. This module composes hpack's own nibble
table into a byte table once, at import (256 states x 256 bytes: the next state, the symbols emitted, and
whether a step failed or ended on a complete code), so decoding is one lookup per byte. hpack's results and
errors are kept exactly: tests compare both decoders on valid, invalid and incomplete strings.
`nchf.h2connection` installs it in place of hpack's (see there for how the patch is pinned to hpack's source).
"""

from __future__ import annotations

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL, HUFFMAN_TABLE

_FAILED = 1  # either nibble of the byte hit an invalid code (hpack raises at that nibble)
_COMPLETE = 2  # after the byte's second nibble the state machine is at a code boundary


def _byte_table() -> tuple[bytes, bytes, list[bytes]]:
    next_state = bytearray(256 * 256)
    flags = bytearray(256 * 256)
    emitted: list[bytes] = [b""] * (256 * 256)
    for state in range(256):
        for byte in range(256):
            index = state << 8 | byte
            out = bytearray()
            s, f, symbol = HUFFMAN_TABLE[state * 16 + (byte >> 4)]
            if f & HUFFMAN_FAIL:
                flags[index] = _FAILED
                continue
            if f & HUFFMAN_EMIT_SYMBOL:
                out.append(symbol)
            s, f, symbol = HUFFMAN_TABLE[s * 16 + (byte & 0x0F)]
            if f & HUFFMAN_FAIL:
                flags[index] = _FAILED
                continue
            if f & HUFFMAN_EMIT_SYMBOL:
                out.append(symbol)
            next_state[index] = s
            flags[index] = _COMPLETE if f & HUFFMAN_COMPLETE else 0
            emitted[index] = bytes(out)
    return bytes(next_state), bytes(flags), emitted


_NEXT, _FLAGS, _EMITTED = _byte_table()


def decode_huffman(huffman_string: bytes | bytearray | memoryview | None) -> bytes:
    """`hpack.huffman_table.decode_huffman`, one table lookup per byte."""
    if not huffman_string:
        return b""
    next_state = _NEXT
    flags = _FLAGS
    emitted = _EMITTED
    out = bytearray()
    state = 0
    step = 0
    data = bytes(huffman_string)
    for byte in data:
        index = state << 8 | byte
        step = flags[index]
        if step & _FAILED:
            raise HPACKDecodingError("Invalid Huffman string")
        symbols = emitted[index]
        if symbols:
            out += symbols
        state = next_state[index]
    if not step & _COMPLETE:
        raise HPACKDecodingError("Incomplete Huffman string")
    return bytes(out)
