"""Rings and the notifications they fan out to: the values that flow from buttons to Apple."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime


def new_id() -> str:
    """A fresh UUID string: ring ids and apns-ids alike."""
    return str(uuid.uuid4())


def iso_time(epoch: float) -> str:
    """ISO 8601 in UTC with millisecond precision, as the cloud contract wants."""
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class Ring:
    """One accepted ring of one button: what the cloud hears on ``P/ring``."""

    ring_id: str
    button: str
    button_name: str
    at: float  # wall-clock epoch seconds
    presses: int = 1
    manual: bool = False


@dataclass(frozen=True, slots=True)
class Notification:
    """One push of one ring to one device token: a row of the outbox.

    ``apns_id`` identifies the row and is sent as ``apns-id``, so a resend after a
    crash is recognisably the same request; ``collapse_id`` is shared by the whole
    ring so a phone never shows a retried push twice.
    """

    apns_id: str
    ring_id: str
    button: str
    token: str = field(repr=False)
    env: str
    collapse_id: str
    payload: bytes = field(repr=False)
    created_at: float
    expires_at: float
    attempts: int = 0
    ver: int | None = None  # token-list version the token came from (None: static config)
    rings: int = 1  # rings this push stands for: more once offline rings collapse into it
    last_ring_id: str | None = None  # the newest of those rings (None: this row's own)
    last_at: float | None = None

    @property
    def latest_ring_id(self) -> str:
        return self.ring_id if self.last_ring_id is None else self.last_ring_id

    @property
    def latest_at(self) -> float:
        return self.created_at if self.last_at is None else self.last_at


class Fate(enum.Enum):
    """How a notification left the outbox."""

    DELIVERED = "delivered"
    FAILED = "failed"  # permanent: Apple refused this notification, or the token is dead
    EXPIRED = "expired"  # apns.expiration passed before Apple took it
    REMOVED = "removed"  # its token left the authorised list
