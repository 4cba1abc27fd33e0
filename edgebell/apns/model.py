"""APNs values: environments, one push request, its result, and how Apple's answer is classified."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgebell.privacy import short_token

APNS_PORT = 443
# Apple refuses a provider JWT whose iat is more than an hour old.
MAX_JWT_AGE = 60 * 60
# Apple refuses a provider JWT refreshed more often than every 20 minutes or older than 60;
# refreshing by 55 leaves slack for the difference between our clock and Apple's.
JWT_REFRESH_RANGE = (20 * 60, 55 * 60)


class Environment(enum.StrEnum):
    """Which APNs service a device token belongs to: tokens are valid in one only."""

    PRODUCTION = "production"
    SANDBOX = "sandbox"

    @property
    def host(self) -> str:
        return _HOSTS[self]


_HOSTS = {
    Environment.PRODUCTION: "api.push.apple.com",
    Environment.SANDBOX: "api.sandbox.push.apple.com",
}


@dataclass(frozen=True, slots=True, repr=False)
class PushRequest:
    """One notification to one device token, as sent on one HTTP/2 stream."""

    token: str
    environment: Environment
    topic: str
    payload: bytes
    apns_id: str
    collapse_id: str
    expiration: int  # epoch seconds: Apple stops trying to deliver after this
    priority: int = 10
    push_type: str = "alert"

    def __repr__(self) -> str:
        # A device token is personal data: never in full in a repr (reprs end up in logs).
        return (
            f"PushRequest(token={short_token(self.token)!r}, environment={self.environment.value},"
            f" topic={self.topic!r}, apns_id={self.apns_id!r}, collapse_id={self.collapse_id!r},"
            f" expiration={self.expiration}, priority={self.priority},"
            f" push_type={self.push_type!r}, payload=<{len(self.payload)} bytes>)"
        )


class Outcome(enum.Enum):
    """What to do next with a push, from Apple's answer (docs/design.md, "Apple's answers")."""

    DELIVERED = "delivered"  # 200
    TOKEN_DEAD = "token_dead"  # noqa: S105 - 410, 400 BadDeviceToken/DeviceTokenNotForTopic: suppress, report
    FAILED = "failed"  # other 4xx: this notification can never succeed
    RETRY = "retry"  # 5xx: retry with backoff
    RETRY_TOKEN = "retry_token"  # noqa: S105 - 429 TooManyRequests: back off for this token
    AUTH_RENEW = "auth_renew"  # 403 ExpiredProviderToken: new JWT, then retry
    AUTH_BACKOFF = "auth_backoff"  # 429 TooManyProviderTokenUpdates: keep the JWT, retry
    AUTH_REFUSED = "auth_refused"  # other 403: configuration error, keep queued
    TRANSPORT = "transport"  # no answer (connection, GOAWAY, reset, timeout): fresh connection


@dataclass(frozen=True, slots=True)
class PushResult:
    """The outcome of one attempt; ``status``/``reason`` are Apple's when it answered.

    ``unprocessed`` is True only when Apple certainly did not act on the request (a stream
    above a GOAWAY's last stream id, a refused stream, never sent): resending cannot show
    the notification twice. ``detail`` is a human explanation without token or JWT.
    """

    request: PushRequest
    outcome: Outcome
    status: int | None
    reason: str | None
    timestamp_ms: int | None
    apns_id: str | None
    detail: str | None
    unprocessed: bool = False


_TOKEN_DEAD_400 = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})


def classify(status: int, reason: str | None) -> Outcome:
    """Map an HTTP status and APNs ``reason`` to what to do next; pure, covers any status."""
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        # Apple's 410 reasons (Unregistered, ExpiredToken) all mean the token is gone.
        return Outcome.TOKEN_DEAD
    if status == 400:
        return Outcome.TOKEN_DEAD if reason in _TOKEN_DEAD_400 else Outcome.FAILED
    if status == 403:
        return Outcome.AUTH_RENEW if reason == "ExpiredProviderToken" else Outcome.AUTH_REFUSED
    if status == 429:
        if reason == "TooManyProviderTokenUpdates":
            return Outcome.AUTH_BACKOFF
        return Outcome.RETRY_TOKEN
    if 500 <= status < 600:
        return Outcome.RETRY
    # 404, 405, 413, any other 4xx, and statuses Apple never sends (1xx, 3xx, nonsense):
    # sending the same request again cannot change the answer.
    return Outcome.FAILED
