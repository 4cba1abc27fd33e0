"""The request encoder's header blocks decode, with hpack's own decoder, to the headers sent."""

from __future__ import annotations

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebell.apns.encoder import RequestEncoder

JWT = b"bearer eyJ" + b"x" * 180

# One step: a request of ring r with expiration e to token t, or the peer's new table size.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 2), st.integers(0, 2), st.integers(0, 99)),
        st.tuples(st.just("resize"), st.sampled_from([0, 64, 256, 4096]), st.none(), st.none()),
    ),
    min_size=1,
    max_size=40,
)


def request(ring: int, expiration: int, token: int) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        hpack.NeverIndexedHeaderTuple(b":path", b"/3/device/%064x" % token),
        (b":authority", b"api.push.apple.com"),
        (b"authorization", JWT),
        (b"apns-topic", b"com.example.doorbell"),
        (b"apns-expiration", b"%d" % (1_700_000_000 + expiration)),
        (b"apns-collapse-id", b"ring-%d" % ring),
        hpack.NeverIndexedHeaderTuple(b"apns-id", b"%036d" % token),
    ]


@settings(max_examples=200, deadline=None)
@given(steps)
def test_every_block_decodes_to_its_request(sequence: list[tuple[str, int, int, int]]) -> None:
    encoder, decoder = RequestEncoder(), hpack.Decoder()
    size = 4096
    for kind, a, b, c in sequence:
        if kind == "resize":
            if a == size:
                continue  # h2 sets the size only when the peer's setting changed
            size = a
            # As h2 applies a peer's SETTINGS_HEADER_TABLE_SIZE, and the peer's decoder allows.
            encoder.header_table_size = a
            decoder.max_allowed_table_size = max(a, 4096)
            continue
        headers = request(a, b, c)
        decoded = decoder.decode(encoder.encode(headers), raw=True)
        assert sorted(decoded) == sorted((bytes(n), bytes(v)) for n, v in headers)
        names = [n for n, _ in decoded]
        assert all(n.startswith(b":") for n in names[:4])  # pseudo-headers lead
        assert not any(n.startswith(b":") for n in names[4:])
        tokens = [v for _, v in decoder.header_table.dynamic_entries]
        assert all(b"/3/device/" not in v for v in tokens)  # never a token in the table


def test_the_jwt_goes_on_the_wire_once_per_connection() -> None:
    encoder, decoder = RequestEncoder(), hpack.Decoder()
    blocks = [encoder.encode(request(1, 1, n)) for n in range(5)]
    for block in blocks:
        decoder.decode(block, raw=True)
    assert JWT[10:60] in blocks[0]
    assert all(JWT[10:60] not in block for block in blocks[1:])
    # From then on the repeated headers are a few bytes of index.
    assert len(blocks[4]) < 150 < len(blocks[0])
