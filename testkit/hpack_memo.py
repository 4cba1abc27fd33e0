"""The stand-in's HPACK encoding: reuses the block of the headers repeated on every message.

The stand-in answers every request with nearly the same headers; encoding them
header by header in Python would make the stand-in, not the client under test, the
limit of every benchmark. Test double only: it leans on hpack internals, which the
gateway's own code (edgebell/apns) does not. The few headers that differ go out as
raw never-indexed literals that leave the dynamic table alone; the rest is encoded
by hpack once and its bytes reused for as long as encoding it leaves the dynamic
table unchanged (every entry is then indexed, so the same block means the same
headers).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import hpack
import hpack.hpack

Pair = tuple[bytes, bytes]


def hpack_integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """An HPACK integer with ``flags`` in the bits above its prefix (RFC 7541 section 5.1)."""
    encoded = hpack.hpack.encode_integer(value, prefix_bits)
    encoded[0] |= flags
    return bytes(encoded)


def never_indexed_name(name: bytes) -> bytes:
    """The start of a never-indexed literal with a literal name (RFC 7541 section 6.2.3)."""
    return b"\x10" + hpack_integer(len(name), 7, 0) + name


class MemoisingEncoder(hpack.Encoder):
    """hpack's encoder plus a memo of whole encoded blocks, keyed by their headers."""

    def __init__(self, memo_limit: int) -> None:
        super().__init__()
        self._memo: dict[tuple[Pair, ...], bytes] = {}
        self._memo_limit = memo_limit

    def encode_resized(
        self, headers: Sequence[Any], fresh: Collection[bytes], huffman: bool
    ) -> bytes:
        """After a table size change the update must open the block: hpack encodes it all, once."""
        self._memo.clear()
        return super().encode(
            [hpack.NeverIndexedHeaderTuple(*h) if h[0] in fresh else h for h in headers], huffman
        )

    def encode_shared(self, shared: list[Pair], huffman: bool) -> bytes:
        """The block of the repeated headers, from the memo while the dynamic table holds still."""
        key = tuple(shared)
        block = self._memo.get(key)
        if block is None:
            entries = self.header_table.dynamic_entries
            newest, count = (entries[0] if entries else None), len(entries)
            block = super().encode(shared, huffman)
            if (entries[0] if entries else None) is newest and len(entries) == count:
                if len(self._memo) >= self._memo_limit:
                    self._memo.clear()
                self._memo[key] = block  # all indexed: valid while the table stays as it is
            else:
                self._memo.clear()  # the table changed: earlier blocks' indices are stale
        return block
