"""A gateway's authorised list from its owner, shares and their phones; its ``ver`` (pure)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgebell.registry.model import Entry, Phone, Share


def authorised(
    owner: str, shares: Sequence[Share], phones: Mapping[str, Sequence[Phone]]
) -> tuple[Entry, ...]:
    """Every phone of the owner (all buttons) and of each user shared with (their buttons).

    ``phones`` maps a user to their phones. Sorted by token, so the same registry
    state always signs to the same list.
    """
    entries = [_entry(p, None) for p in phones.get(owner, ())]
    for share in shares:
        if share.user != owner:
            entries.extend(_entry(p, share.buttons) for p in phones.get(share.user, ()))
    return tuple(sorted(entries, key=lambda e: e.token))


def _entry(phone: Phone, buttons: tuple[str, ...] | None) -> Entry:
    return Entry(phone.token, phone.env, phone.user, phone.registered_at, buttons)


def digest(entries: Iterable[Entry]) -> str:
    """What the list says, independent of ``ver``: equal digests, no new list needed."""
    text = json.dumps([e.claim() for e in entries], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def next_ver(last_ver: int, now_ms: int) -> int:
    """Epoch ms of issue, yet always above the last one: a clock stepped back, or another
    instance a little ahead, never makes a list that gateways would refuse as stale."""
    return max(now_ms, last_ver + 1)


def claims(gateway: str, ver: int, iat: int, entries: Iterable[Entry]) -> dict[str, Any]:
    return {"aud": gateway, "ver": ver, "iat": iat, "tokens": [e.claim() for e in entries]}
