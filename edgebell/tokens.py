"""The authorised device tokens: who may be told that someone is at the door."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# Device tokens are hex of variable length (never assume Apple's 64 digits): whole bytes,
# 16 to 200 digits. The one rule for the config, the cloud's list, commands and the client.
MIN_TOKEN_HEX = 16
DEVICE_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2}){8,100}")
# Apple's 400 BadDeviceToken / DeviceTokenNotForTopic: dead for that environment and app only.
BOUND_STATUS = 400


def is_device_token(text: str) -> bool:
    """Whether ``text`` is a device token: an even number (16 to 200) of hex digits."""
    return DEVICE_TOKEN.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class AuthorisedToken:
    """One phone (device token) allowed to hear the doorbell."""

    token: str = field(repr=False)
    env: str  # "production" | "sandbox"
    user: str | None = None
    buttons: frozenset[str] | None = None  # None: every button
    registered_at: int | None = None  # epoch ms, from the cloud's list
    ver: int | None = None  # list version it came from (None: static config)

    def hears(self, button: str) -> bool:
        return self.buttons is None or button in self.buttons


@dataclass(frozen=True, slots=True)
class Suppression:
    """Apple said ``token`` is dead; ``timestamp_ms`` is Apple's, or when we heard it.

    ``env`` and ``topic`` are where the push that Apple refused went: a 400 refusal
    holds only while the token is pushed there (None: not recorded, so it never holds;
    rows of the outbox's schema 2). The token book and the outbox store keep this one type.
    """

    token: str = field(repr=False)
    status: int
    reason: str
    timestamp_ms: int
    env: str | None = None
    topic: str | None = None


class TokenBook:
    """The token list in use and the tokens Apple refused.

    A listed token stays suppressed until a list arrives whose entry for it was
    registered after Apple's timestamp: the phone re-registered, so the token
    lives again. Unlisting a token forgets nothing about its suppression.

    A 400 (BadDeviceToken, DeviceTokenNotForTopic) says the token is dead for one
    environment and app: it holds only while the token's ``env`` and the ``topic``
    in use are those Apple refused, so fixing a wrong ``apns.environment`` or
    ``apns.topic`` brings the phones back (a token that is dead there too is
    refused once more and suppressed again).
    """

    def __init__(self, *, topic: str | None = None) -> None:
        self._tokens: dict[str, AuthorisedToken] = {}
        self._suppressed: dict[str, Suppression] = {}
        self.ver: int | None = None
        self.topic = topic

    def replace(self, tokens: Iterable[AuthorisedToken], ver: int | None) -> None:
        self._tokens = {t.token: t for t in tokens}
        self.ver = ver

    def restore_suppressed(self, suppressed: Iterable[Suppression]) -> None:
        self._suppressed.update((s.token, s) for s in suppressed)

    def suppress(self, suppression: Suppression) -> None:
        self._suppressed[suppression.token] = suppression

    def get(self, token: str) -> AuthorisedToken | None:
        return self._tokens.get(token)

    def is_active(self, token: str) -> bool:
        entry = self._tokens.get(token)
        return entry is not None and not self._is_suppressed(entry)

    def _is_suppressed(self, entry: AuthorisedToken) -> bool:
        s = self._suppressed.get(entry.token)
        if s is None:
            return False
        if s.status == BOUND_STATUS and (s.env != entry.env or s.topic != self.topic):
            return False
        return entry.registered_at is None or entry.registered_at <= s.timestamp_ms

    def for_button(self, button: str) -> list[AuthorisedToken]:
        return [t for t in self._tokens.values() if t.hears(button) and not self._is_suppressed(t)]

    def active(self) -> list[AuthorisedToken]:
        return [t for t in self._tokens.values() if not self._is_suppressed(t)]

    @property
    def suppressed_count(self) -> int:
        """Listed tokens that get no pushes because Apple refused them."""
        return sum(1 for t in self._tokens.values() if self._is_suppressed(t))
