"""The registry's values and the checks every interface (HTTP, CLI, MQTT) applies to input."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from edgebell.errors import BadRequest
from edgebell.privacy import short_token
from edgebell.tokens import is_device_token

ENVIRONMENTS = ("production", "sandbox")
# The gateway id rule of the gateway's own config (and of MQTT topic levels).
_GATEWAY = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A maker's user ids: account numbers, UUIDs, e-mail addresses; no "/" (a URL path segment).
_USER = re.compile(r"[A-Za-z0-9_.@+:-]{1,128}")
_BUTTON = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_BUTTONS = 64
# A registration time ahead of now would outlive every verdict of Apple (the revive rule).
MAX_FUTURE_MS = 5 * 60 * 1000


def gateway_id(value: object) -> str:
    if not isinstance(value, str) or not _GATEWAY.fullmatch(value):
        raise BadRequest("a gateway id is 1 to 64 of A-Z a-z 0-9 _ -")
    return value


def user_id(value: object) -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise BadRequest("a user id is 1 to 128 of A-Z a-z 0-9 _ . @ + : -")
    return value


def device_token(value: object) -> str:
    """A device token, lowercased: an even number (16 to 200) of hex digits."""
    if not isinstance(value, str) or not is_device_token(value):
        raise BadRequest("a device token is an even number (16 to 200) of hex digits")
    return value.lower()


def environment(value: object) -> str:
    if value not in ENVIRONMENTS:
        raise BadRequest("env must be production or sandbox")
    return str(value)


def buttons(value: object) -> tuple[str, ...] | None:
    """Button ids of a share; None (absent) means every button."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(b, str) and _BUTTON.fullmatch(b) for b in value
    ):
        raise BadRequest("buttons must be a list of button ids (1 to 64 of A-Z a-z 0-9 _ . -)")
    if len(value) > MAX_BUTTONS:
        raise BadRequest(f"at most {MAX_BUTTONS} buttons")
    return tuple(sorted(set(value)))


def epoch_ms(value: object, name: str, *, now_ms: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{name} must be epoch milliseconds (a non-negative integer)")
    if value > now_ms + MAX_FUTURE_MS:
        raise BadRequest(f"{name} is in the future")
    return value


def body_fields(body: object, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object body with no other keys than ``allowed`` (a typo is an error, not ignored)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise BadRequest(f"unknown field {unknown[0]!r} (known: {known})")
    return body


@dataclass(frozen=True, slots=True)
class Phone:
    """A registered phone: one app install of a user, in one APNs environment."""

    token: str = field(repr=False)
    user: str
    env: str
    registered_at: int

    def __repr__(self) -> str:
        return f"Phone({short_token(self.token)!r}, user={self.user!r}, env={self.env!r})"


@dataclass(frozen=True, slots=True)
class Share:
    user: str
    buttons: tuple[str, ...] | None  # None: every button


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a gateway's authorised list, as the signed list carries it."""

    token: str = field(repr=False)
    env: str
    user: str
    registered_at: int
    buttons: tuple[str, ...] | None

    def claim(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "token": self.token,
            "env": self.env,
            "user": self.user,
            "registered_at": self.registered_at,
        }
        if self.buttons is not None:
            item["buttons"] = list(self.buttons)
        return item


@dataclass(frozen=True, slots=True)
class Published:
    """A gateway's current signed list: what ``P/tokens`` should hold."""

    gateway: str
    ver: int
    jws: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Change:
    """What one call did: a summary for people, and the gateways whose list changed."""

    detail: str
    lists: tuple[Published, ...] = ()
