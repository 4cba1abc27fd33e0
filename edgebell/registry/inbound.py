"""What gateways send the registry (``P/feedback``, ``P/ring``, ``P/delivery``), parsed (pure).

``P/hello`` is read by ``edgebell.cloud.messages.parse_hello``, the gateway's own
module, so both sides share one reading of the handshake.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edgebell.cloud.tokenlist import MAX_MESSAGE_BYTES
from edgebell.errors import CloudError
from edgebell.privacy import short_token
from edgebell.tokens import is_device_token

# Apple's answers that say a token is dead: 410 Unregistered (with Apple's timestamp),
# 400 BadDeviceToken / DeviceTokenNotForTopic (none).
DEAD_STATUSES = (400, 410)
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_MAX_TEXT = 256
_MAX_COUNT = 1_000_000


class BadMessage(CloudError):
    """A gateway's message that breaks the contract."""


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    token: str = field(repr=False)
    status: int
    reason: str
    timestamp_ms: int | None
    ver: int | None

    def __repr__(self) -> str:
        return f"FeedbackReport({short_token(self.token)!r}, {self.status}, {self.reason!r})"


@dataclass(frozen=True, slots=True)
class RingReport:
    ring_id: str
    button: str
    at: str
    presses: int
    manual: bool


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    ring_id: str
    delivered: int
    failed: int
    queued: int
    expired: int
    removed: int
    final: bool

    def document(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "queued": self.queued,
            "expired": self.expired,
            "removed": self.removed,
            "final": self.final,
        }


def parse_feedback(data: bytes) -> FeedbackReport:
    doc = _object(data, "feedback")
    token = doc.get("token")
    if not isinstance(token, str) or not is_device_token(token):
        raise BadMessage("feedback: token must be hex (16 to 200 digits)")
    status = _count(doc, "status", "feedback")
    reason = doc.get("reason")
    if not isinstance(reason, str) or len(reason) > _MAX_TEXT:
        raise BadMessage("feedback: reason must be a short string")
    return FeedbackReport(
        token=token.lower(),
        status=status,
        reason=reason,
        timestamp_ms=_optional_count(doc, "timestamp", "feedback"),
        ver=_optional_count(doc, "ver", "feedback"),
    )


def parse_ring(data: bytes) -> RingReport:
    doc = _object(data, "ring")
    ring_id = _identifier(doc, "ring_id", "ring")
    button = _identifier(doc, "button", "ring")
    at = doc.get("at")
    if not isinstance(at, str) or len(at) > 64:
        raise BadMessage("ring: at must be an ISO 8601 time")
    try:
        datetime.fromisoformat(at)
    except ValueError:
        raise BadMessage("ring: at must be an ISO 8601 time") from None
    manual = doc.get("manual", False)
    return RingReport(
        ring_id, button, at, _count(doc, "presses", "ring"), manual if manual is True else False
    )


def parse_delivery(data: bytes) -> DeliveryCounts:
    doc = _object(data, "delivery")
    final = doc.get("final", True)
    return DeliveryCounts(
        ring_id=_identifier(doc, "ring_id", "delivery"),
        delivered=_count(doc, "delivered", "delivery"),
        failed=_count(doc, "failed", "delivery"),
        queued=_count(doc, "queued", "delivery"),
        expired=_count(doc, "expired", "delivery"),
        removed=_optional_count(doc, "removed", "delivery") or 0,
        final=final is not False,
    )


def _object(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"{what}: larger than 128 KB")
    try:
        doc = json.loads(data)
    except ValueError:
        raise BadMessage(f"{what}: not JSON") from None
    if not isinstance(doc, dict):
        raise BadMessage(f"{what}: not a JSON object")
    return doc


def _identifier(doc: dict[str, Any], key: str, what: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise BadMessage(f"{what}: {key} must be an id (1 to 128 of A-Z a-z 0-9 _ . : -)")
    return value


def _count(doc: dict[str, Any], key: str, what: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2**63 - 1:
        raise BadMessage(f"{what}: {key} must be a non-negative integer")
    if key not in ("timestamp", "ver", "status") and value > _MAX_COUNT:
        raise BadMessage(f"{what}: {key} is implausibly large")
    return value


def _optional_count(doc: dict[str, Any], key: str, what: str) -> int | None:
    if doc.get(key) is None:
        return None
    return _count(doc, key, what)
