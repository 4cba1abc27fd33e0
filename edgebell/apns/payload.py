"""The JSON payload of a doorbell push, cut to APNs' size limit, and its collapse id."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable

MAX_PAYLOAD = 4096  # bytes, Apple's limit for a regular remote notification
MAX_COLLAPSE_ID = 64  # bytes, Apple's limit for apns-collapse-id
ELLIPSIS = "…"


def build_payload(
    *,
    title: str,
    body: str,
    sound: str | None,
    thread_id: str,
    ring_id: str,
    button: str,
    at: str,
    rings: int = 1,
    limit: int = MAX_PAYLOAD,
) -> bytes:
    """Compact UTF-8 JSON of at most ``limit`` bytes: an over-long body, then title, is cut.

    The alert text is cut on a character boundary and ends in "…"; it is never rejected.
    ``rings`` above 1 (rings collapsed while Apple was unreachable) adds ``edgebell.rings``.
    Only when the fixed parts alone (ids, sound) exceed ``limit`` is ``ValueError`` raised,
    which is a programming error, not a long message.
    """

    def encode(title: str, body: str) -> bytes:
        aps: dict[str, object] = {"alert": {"title": title, "body": body}}
        if sound is not None:
            aps["sound"] = sound
        aps["interruption-level"] = "time-sensitive"
        aps["thread-id"] = thread_id
        ours: dict[str, object] = {"ring_id": ring_id, "button": button, "at": at}
        if rings > 1:
            ours["rings"] = rings
        document = {"aps": aps, "edgebell": ours}
        # "replace": a lone surrogate (mis-decoded input) must not make the push impossible.
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "replace"
        )

    payload = encode(title, body)
    if len(payload) <= limit:
        return payload
    body_cut = _cut(body, lambda b: len(encode(title, b)) <= limit)
    if body_cut is not None:
        return encode(title, body_cut)
    title_cut = _cut(title, lambda t: len(encode(t, ELLIPSIS)) <= limit)
    if title_cut is None:
        raise ValueError(f"payload limit of {limit} bytes leaves no room for the alert text")
    return encode(title_cut, ELLIPSIS)


def _cut(text: str, fits: Callable[[str], bool]) -> str | None:
    """The longest ``prefix + "…"`` of ``text`` that fits, or None if not even "…" does.

    JSON escaping makes the size of a prefix uneven (a quote is 2 bytes, a control character
    6, a CJK character 3), so the size is measured, with a binary search over the length.
    """
    if not fits(ELLIPSIS):
        return None
    low, high = 0, len(text)  # the prefix of length `low` always fits
    while low < high:
        middle = (low + high + 1) // 2
        if fits(_shorten(text, middle)):
            low = middle
        else:
            high = middle - 1
    return _shorten(text, low)


def _shorten(text: str, length: int) -> str:
    # A trailing space or zero-width joiner would dangle before the ellipsis.
    return text[:length].rstrip(" \t\r\n\u200d") + ELLIPSIS


def collapse_id_for(ring_id: str) -> str:
    """The ``apns-collapse-id`` of every push of one ring: the ring id when it fits in 64 bytes.

    A longer or non-ASCII ring id is replaced by a digest, so the header stays short, ASCII,
    and the same for every retry of the ring.
    """
    if ring_id.isascii() and ring_id.isprintable() and 0 < len(ring_id) <= MAX_COLLAPSE_ID:
        return ring_id
    digest = hashlib.sha256(ring_id.encode("utf-8", "replace")).digest()
    # base64url rather than hex: a 64-hex-digit string would look like a device token in logs.
    return "r-" + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
