"""HPACK for APNs requests through hpack's public API, without re-encoding what repeats.

Every push on a connection carries the same headers (method, authority, the provider
JWT, topic, ...) but two: ``:path`` (the device token) and ``apns-id``, which the client
marks never-indexed. Encoding eleven headers one by one in Python is the largest
single cost of a request, and once the repeated ones sit in the dynamic table their
block is the same index bytes every time. So this encoder

- encodes each never-indexed header on its own (such a literal leaves the dynamic table
  alone, so its bytes do not depend on it);
- encodes the repeated headers as one block and keeps that block once two encodings in
  a row of the same headers gave the same bytes: then the table holds them and the
  block changes nothing in it. Any other set of repeated headers (a new ring's
  expiration or collapse id) may change the table: the kept blocks are dropped;
- after the peer changes the table size (``header_table_size``, set by h2 from the
  peer's SETTINGS) encodes the next request whole, as hpack must open that block with
  the size update.

No Huffman coding: what repeats is indexed anyway, and what differs per push (a hex
token, a UUID) would shrink by a quarter at most, about 25 bytes a request, for a
Python loop over every byte.
"""

from __future__ import annotations

from typing import Any

import hpack

# Sets of repeated headers kept at most (one per ring and expiration second in flight).
MEMO_LIMIT = 32


class RequestEncoder(hpack.Encoder):
    """``hpack.Encoder`` whose ``encode`` reuses the block of the repeated headers."""

    def __init__(self) -> None:
        super().__init__()
        self._memo: dict[tuple[Any, ...], bytes] = {}
        self._last: tuple[tuple[Any, ...], bytes] | None = None
        self._resized = False

    @property
    def header_table_size(self) -> int:
        return int(hpack.Encoder.header_table_size.fget(self))  # type: ignore[attr-defined]

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        hpack.Encoder.header_table_size.fset(self, value)  # type: ignore[attr-defined]
        self._forget()
        self._resized = True

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if self._resized:
            # The size update must open the block: everything in one hpack call, once.
            self._resized = False
            self._forget()
            return bytes(super().encode(headers, huffman=False))
        head = tail = b""
        shared = []
        for header in headers:
            if isinstance(header, hpack.NeverIndexedHeaderTuple):
                field = bytes(super().encode([header], huffman=False))
                # Pseudo-headers must come before regular ones; the order is otherwise free.
                if header[0][:1] == b":":
                    head += field
                else:
                    tail += field
            else:
                shared.append(header)
        key = tuple(shared)
        block = self._memo.get(key)
        if block is None:
            block = bytes(super().encode(shared, huffman=False))
            if self._last == (key, block):
                if len(self._memo) >= MEMO_LIMIT:
                    self._memo.clear()
                self._memo[key] = block  # the table holds these: same bytes, no change
            elif self._last is None or self._last[0] != key:
                self._memo.clear()  # other headers may have changed the table
            self._last = (key, block)
        return head + block + tail

    def _forget(self) -> None:
        self._memo.clear()
        self._last = None
