"""The stand-in's own HPACK paths decode and encode exactly as hpack does (pure, no sockets)."""

from __future__ import annotations

import uuid

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit.apns_connection import _RequestDecoder, _ResponseEncoder

NAMES = [b":method", b":path", b":authority", b"authorization", b"apns-id", b"apns-topic", b"x"]
names = st.one_of(st.sampled_from(NAMES), st.binary(min_size=1, max_size=140))
# Long values: lengths and indices past 127 take multi-byte integers.
values = st.one_of(st.sampled_from([b"", b"POST", b"eyJ" + b"a" * 200]), st.binary(max_size=300))
headers = st.tuples(names, values, st.booleans())  # (name, value, never indexed)
blocks = st.lists(
    st.tuples(st.lists(headers, max_size=12), st.booleans(), st.sampled_from([None, 0, 64, 4096])),
    min_size=1,
    max_size=8,
)


def _reference_and_fast() -> tuple[hpack.Decoder, _RequestDecoder]:
    return hpack.Decoder(), _RequestDecoder()


def _encode(encoder: hpack.Encoder, block: list[tuple[bytes, bytes, bool]], huffman: bool) -> bytes:
    return encoder.encode(
        [hpack.NeverIndexedHeaderTuple(n, v) if never else (n, v) for n, v, never in block],
        huffman=huffman,
    )


@settings(max_examples=150, deadline=None)
@given(blocks)
def test_request_decoder_agrees_with_hpack(
    sequence: list[tuple[list[tuple[bytes, bytes, bool]], bool, int | None]],
) -> None:
    encoder = hpack.Encoder()
    reference, fast = _reference_and_fast()
    for block, huffman, table_size in sequence:
        if table_size is not None:
            encoder.header_table_size = table_size  # the next block opens with a size update
        data = _encode(encoder, block, huffman)
        expected = list(reference.decode(data, raw=True))
        got = fast.decode(data, raw=True)
        assert got == expected
        assert [type(h) for h in got] == [type(h) for h in expected]  # never-indexed kept
        assert fast.header_table.dynamic_entries == reference.header_table.dynamic_entries


@settings(max_examples=60, deadline=None)
@given(st.lists(headers, min_size=1, max_size=6), st.booleans())
def test_request_decoder_refuses_every_truncated_block_as_hpack_does(
    block: list[tuple[bytes, bytes, bool]], huffman: bool
) -> None:
    data = _encode(hpack.Encoder(), block, huffman)
    for end in range(len(data)):
        reference, fast = _reference_and_fast()
        try:
            expected: object = list(reference.decode(data[:end], raw=True))
        except hpack.HPACKDecodingError as exc:
            expected = type(exc)
        try:
            got: object = fast.decode(data[:end], raw=True)
        except hpack.HPACKDecodingError as exc:
            got = type(exc)
        assert got == expected


def test_request_decoder_limits() -> None:
    fast = _RequestDecoder()
    # A table size update after a header (0x82 = :method GET, 0x3f 0xe1 0x1f = size 4096).
    with pytest.raises(hpack.HPACKDecodingError, match="not at the start"):
        fast.decode(b"\x82\x3f\xe1\x1f", raw=True)
    fast.max_allowed_table_size = 100
    with pytest.raises(hpack.InvalidTableSizeError):
        _RequestDecoder.decode(fast, b"\x3f\xe1\x1f", raw=True)
    fast = _RequestDecoder()
    fast.max_header_list_size = 100
    big = hpack.Encoder().encode([(b"x", b"y" * 200)])
    with pytest.raises(hpack.OversizedHeaderListError):
        fast.decode(big, raw=True)
    with pytest.raises(hpack.InvalidTableIndex):
        _RequestDecoder().decode(b"\xff\x00", raw=True)  # index 127: empty dynamic table
    # Text headers (h2 always asks for raw bytes) come from hpack itself.
    assert _RequestDecoder().decode(b"\x82", raw=False) == [(":method", "GET")]


def test_huffman_strings_are_memoised_but_bounded() -> None:
    encoder, fast = hpack.Encoder(), _RequestDecoder()
    jwt = b"bearer eyJ" + b"k" * 180
    for _ in range(3):  # nghttp2 sends the JWT Huffman-coded and never indexed, every time
        data = encoder.encode([hpack.NeverIndexedHeaderTuple(b"authorization", jwt)])
        assert fast.decode(data, raw=True) == [(b"authorization", jwt)]
    assert list(fast._huffman.values()) == [jwt]
    for n in range(600):
        fast.decode(encoder.encode([hpack.NeverIndexedHeaderTuple(b"x", b"%d" % n)]), raw=True)
    assert len(fast._huffman) <= 256


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["200", "400", "410", "403"]),
            st.booleans(),  # sandbox: apns-unique-id too
            st.sampled_from([None, 0, 48, 4096]),  # the client's SETTINGS_HEADER_TABLE_SIZE
        ),
        min_size=1,
        max_size=20,
    )
)
def test_response_encoder_round_trips_through_hpack(
    answers: list[tuple[str, bool, int | None]],
) -> None:
    encoder, decoder = _ResponseEncoder(), hpack.Decoder()
    for status, sandbox, table_size in answers:
        if table_size is not None:
            encoder.header_table_size = table_size
        response = [(":status", status), ("apns-id", str(uuid.uuid4()))]
        if sandbox:
            response.append(("apns-unique-id", str(uuid.uuid4())))
        if status != "200":
            response += [("content-type", "application/json"), ("content-length", "27")]
        decoded = list(decoder.decode(encoder.encode(response), raw=False))
        assert sorted(decoded) == sorted(response)
        assert decoded[0] == (":status", status)  # the pseudo-header leads
        # Per-request ids go out never indexed: they never fill the client's table.
        ids = {v for n, v in response if n in ("apns-id", "apns-unique-id")}
        assert not ids & {v.decode() for _, v in decoder.header_table.dynamic_entries}
