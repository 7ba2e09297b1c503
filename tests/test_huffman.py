"""nchf.huffman decodes HPACK Huffman strings exactly as hpack does: same bytes, same errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hpack.hpack
import pytest
from hpack.exceptions import HPACKDecodingError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman as hpack_decode
from hypothesis import given, settings
from hypothesis import strategies as st

import nchf.h2connection  # noqa: F401  (installs the decoder)
from nchf.huffman import decode_huffman

ENCODER = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def outcome(decode: Callable[[Any], bytes], data: bytes | bytearray | memoryview) -> object:
    try:
        return decode(data)
    except HPACKDecodingError as exc:
        return ("error", str(exc))


def test_installed_in_hpack() -> None:
    assert hpack.hpack.decode_huffman is decode_huffman


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_encoded_strings_decode_to_themselves(text: bytes) -> None:
    encoded = ENCODER.encode(text)
    assert decode_huffman(encoded) == text == hpack_decode(encoded)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=16))
def test_arbitrary_bytes_decode_or_fail_like_hpack(data: bytes) -> None:
    """Most arbitrary byte strings are invalid or incomplete codes: the error must be hpack's too."""
    assert outcome(decode_huffman, data) == outcome(hpack_decode, data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xff\xff\xff", b"\x00", ENCODER.encode(b"/nchf-convergedcharging/v3/chargingdata/1/update")[:-1]],
)
def test_edge_cases(data: bytes) -> None:
    assert outcome(decode_huffman, data) == outcome(hpack_decode, data)
    assert outcome(decode_huffman, bytearray(data)) == outcome(hpack_decode, data)
    assert outcome(decode_huffman, memoryview(data)) == outcome(hpack_decode, data)
