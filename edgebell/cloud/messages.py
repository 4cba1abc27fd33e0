"""The JSON payloads of the MQTT contract: what the gateway sends, and parsing what it receives.

Pure functions and values; the topics are in ``topics.py``, the token list in
``tokenlist.py``.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt

from edgebell import jsonlimits
from edgebell.cloud.tokenlist import MAX_MESSAGE_BYTES
from edgebell.errors import CloudError
from edgebell.outbox.dispatcher import DeliveryReport, Feedback
from edgebell.rings import Ring, iso_time
from edgebell.tokens import is_device_token


class CommandName(enum.StrEnum):
    """The commands ``P/cmd`` carries (the contract's ``cmd`` values)."""

    PING = "ping"
    RING = "ring"
    TEST_PUSH = "test-push"
    RESYNC = "resync"


COMMANDS = tuple(c.value for c in CommandName)
OFFLINE = b'{"state":"offline"}'

_JWS = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_MAX_ID = 256


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# -- gateway -> cloud ------------------------------------------------------------------------


def status_online(
    *,
    version: str,
    since: float,
    tokens_ver: int | None,
    queue: int,
    refused_lists: int,
    last_refusal: str | None,
) -> bytes:
    """``P/status`` (retained); ``refused_lists`` and ``last_refusal`` are additions."""
    return encode(
        {
            "state": "online",
            "version": version,
            "since": iso_time(since),
            "tokens_ver": tokens_ver,
            "queue": queue,
            "refused_lists": refused_lists,
            "last_refusal": last_refusal,
        }
    )


def ring_message(ring: Ring) -> bytes:
    """``P/ring``; ``manual`` (rung by command, not by the button) is an addition."""
    return encode(
        {
            "ring_id": ring.ring_id,
            "button": ring.button,
            "at": iso_time(ring.at),
            "presses": ring.presses,
            "manual": ring.manual,
        }
    )


def delivery_message(report: DeliveryReport) -> bytes:
    """``P/delivery``; ``removed`` (token left the list) and ``final`` are additions."""
    return encode(
        {
            "ring_id": report.ring_id,
            "delivered": report.delivered,
            "failed": report.failed,
            "queued": report.queued,
            "expired": report.expired,
            "removed": report.removed,
            "final": report.final,
        }
    )


def feedback_message(feedback: Feedback) -> bytes:
    """``P/feedback``: the full token, which the cloud needs to drop it (never logged)."""
    return encode(
        {
            "token": feedback.token,
            "status": feedback.status,
            "reason": feedback.reason,
            "timestamp": feedback.timestamp_ms,
            "ver": feedback.ver,
        }
    )


def hello_message(*, version: str, tokens_ver: int | None, jwt_iat: int | None, at: float) -> bytes:
    """``P/hello``: sent once the subscriptions are confirmed, so the cloud's answer arrives.

    The cloud answers with the list when its ``ver`` differs from ``tokens_ver``
    and, to a delegated gateway, with the fleet JWT: no broker's retained
    delivery is needed (RabbitMQ keeps retained messages per node).
    """
    return encode(
        {"version": version, "tokens_ver": tokens_ver, "jwt_iat": jwt_iat, "at": iso_time(at)}
    )


def cmd_reply(command_id: str | None, ok: bool, detail: str, **extra: Any) -> bytes:
    """``P/cmd/reply``: ``{"id", "ok", "detail"}`` plus a command's own fields."""
    return encode({"id": command_id, "ok": ok, "detail": detail, **extra})


@dataclass(frozen=True, slots=True)
class Hello:
    """One ``P/hello``, as the cloud reads it."""

    version: str
    tokens_ver: int | None
    jwt_iat: int | None
    at: datetime

    def wants_list(self, current_ver: int | None) -> bool:
        """The cloud's rule: send the list when the gateway's ``ver`` is not the current one."""
        return current_ver is not None and current_ver != self.tokens_ver


def parse_hello(data: bytes) -> Hello:
    """The cloud side: a ``P/hello`` payload; CloudError when it breaks the contract."""
    document = _json_object(data, "hello")
    version = document.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= _MAX_ID:
        raise CloudError(f"hello: version must be a string of 1 to {_MAX_ID} characters")
    tokens_ver = _optional_count(document, "tokens_ver")
    jwt_iat = _optional_count(document, "jwt_iat")
    at = document.get("at")
    if not isinstance(at, str):
        raise CloudError("hello: at must be an ISO 8601 time")
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise CloudError("hello: at must be an ISO 8601 time") from None
    return Hello(version, tokens_ver, jwt_iat, when)


def _optional_count(document: dict[str, Any], key: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CloudError(f"hello: {key} must be a non-negative integer or null")
    return value


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise CloudError(f"{what} message larger than 128 KB")
    try:
        document = jsonlimits.loads(data)
    except ValueError:
        raise CloudError(f"{what} message is not JSON") from None
    if not isinstance(document, dict):
        raise CloudError(f"{what} message is not a JSON object")
    return document


# -- cloud -> gateway ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One ``P/cmd`` request."""

    id: str
    cmd: CommandName
    button: str | None = None
    token: str | None = field(default=None, repr=False)


class BadCommand(CloudError):
    """A ``P/cmd`` message that cannot be run; ``command_id`` is its id when it had one."""

    def __init__(self, message: str, command_id: str | None = None) -> None:
        self.command_id = command_id
        super().__init__(message)


def parse_command(data: bytes) -> Command:
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadCommand("command larger than 128 KB")
    try:
        document = jsonlimits.loads(data)
    except jsonlimits.TooDeep as exc:
        raise BadCommand(f"command is not JSON: {exc}") from None
    except ValueError:
        raise BadCommand("command is not JSON") from None
    if not isinstance(document, dict):
        raise BadCommand("command is not a JSON object")
    command_id = document.get("id")
    if not isinstance(command_id, str) or not 0 < len(command_id) <= _MAX_ID:
        raise BadCommand(f"id must be a string of 1 to {_MAX_ID} characters")
    name = document.get("cmd")
    if name not in COMMANDS:
        raise BadCommand(f"unknown command {name!r} (known: {', '.join(COMMANDS)})", command_id)
    button = document.get("button")
    token = document.get("token")
    if name == "ring" and not isinstance(button, str):
        raise BadCommand("ring needs a button id", command_id)
    if name == "test-push" and token is not None:
        if not isinstance(token, str) or not is_device_token(token):
            raise BadCommand("token must be hex (16 to 200 digits)", command_id)
        token = token.lower()
    return Command(
        id=command_id,
        cmd=CommandName(name),
        button=button if name == "ring" else None,
        token=token if name == "test-push" else None,
    )


@dataclass(frozen=True, slots=True)
class ProviderToken:
    """The fleet's APNs provider JWT from ``<prefix>/fleet/apns-jwt`` or ``P/apns-jwt``."""

    jwt: str = field(repr=False)
    iat: int


def provider_token_message(token: ProviderToken) -> bytes:
    """``{"jwt", "iat"}``: the same payload on the fleet topic and on ``P/apns-jwt``."""
    return encode({"jwt": token.jwt, "iat": token.iat})


def parse_provider_token(data: bytes) -> ProviderToken:
    """``{"jwt", "iat"}``; the JWT's own ``iat``, when it has one, must agree."""
    document = _json_object(data, "provider JWT")
    token = document.get("jwt")
    iat = document.get("iat")
    if not isinstance(token, str) or not _JWS.fullmatch(token):
        raise CloudError("jwt must be a compact JWS")
    if isinstance(iat, bool) or not isinstance(iat, int) or iat < 0:
        raise CloudError("iat must be epoch seconds (an integer)")
    try:
        jsonlimits.check_jws_depth(token)
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, jsonlimits.TooDeep) as exc:
        raise CloudError("jwt is not readable") from exc
    if header.get("alg") != "ES256":
        raise CloudError(f"jwt alg must be ES256, not {header.get('alg')!r}")
    if "iat" in claims and claims["iat"] != iat:
        raise CloudError("iat does not match the JWT's own iat")
    return ProviderToken(token, iat)
