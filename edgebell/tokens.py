"""The authorised device tokens: who may be told that someone is at the door."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


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
    """Apple said this token is dead; ``timestamp_ms`` is Apple's, or when we heard it."""

    status: int
    reason: str
    timestamp_ms: int


class TokenBook:
    """The token list in use and the tokens Apple refused.

    A listed token stays suppressed until a list arrives whose entry for it was
    registered after Apple's timestamp: the phone re-registered, so the token
    lives again. Unlisting a token forgets nothing about its suppression.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, AuthorisedToken] = {}
        self._suppressed: dict[str, Suppression] = {}
        self.ver: int | None = None

    def replace(self, tokens: Iterable[AuthorisedToken], ver: int | None) -> None:
        self._tokens = {t.token: t for t in tokens}
        self.ver = ver

    def restore_suppressed(self, suppressed: Mapping[str, Suppression]) -> None:
        self._suppressed.update(suppressed)

    def suppress(self, token: str, suppression: Suppression) -> None:
        self._suppressed[token] = suppression

    def get(self, token: str) -> AuthorisedToken | None:
        return self._tokens.get(token)

    def is_active(self, token: str) -> bool:
        entry = self._tokens.get(token)
        return entry is not None and not self._is_suppressed(entry)

    def _is_suppressed(self, entry: AuthorisedToken) -> bool:
        s = self._suppressed.get(entry.token)
        if s is None:
            return False
        return entry.registered_at is None or entry.registered_at <= s.timestamp_ms

    def for_button(self, button: str) -> list[AuthorisedToken]:
        return [t for t in self._tokens.values() if t.hears(button) and not self._is_suppressed(t)]

    def active(self) -> list[AuthorisedToken]:
        return [t for t in self._tokens.values() if not self._is_suppressed(t)]

    @property
    def listed(self) -> int:
        return len(self._tokens)

    @property
    def suppressed_count(self) -> int:
        """Listed tokens that get no pushes because Apple refused them."""
        return sum(1 for t in self._tokens.values() if self._is_suppressed(t))
