"""Token lists from the cloud: compact JWS (EdDSA) verification and the rules for taking one.

Pure: bytes and a public key in, a ``TokenList`` or a ``TokenListRefused`` out; no
I/O, no clock, no logging. The MQTT sync feeds it and persists what it accepts.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgebell import jsonlimits
from edgebell.errors import CloudError
from edgebell.tokens import AuthorisedToken, is_device_token

MAX_MESSAGE_BYTES = 128 * 1024  # the contract's payload limit (AWS IoT Core's)
ALGORITHM = "EdDSA"
ENVIRONMENTS = frozenset({"production", "sandbox"})
# SQLite stores integers in 64 bits; a bigger ver would fail the outbox write of every push.
_MAX_INT = 2**63 - 1
_BUTTON = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The signature may be empty here: an unsigned ("alg": "none") list is then refused as such.
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class Refusal(enum.Enum):
    """Why a token list was not taken (the value is what logs and status say)."""

    EMPTY = "empty message"
    TOO_LARGE = "larger than 128 KB"
    NOT_JWS = "not a compact JWS"
    UNSIGNED = "not signed with EdDSA"
    BAD_SIGNATURE = "signature does not verify with cloud.token_list_key"
    MALFORMED = "malformed claims"
    FOREIGN = "addressed to another gateway"
    STALE = "older than the list in use"
    CONFLICT = "same ver as the list in use but other content"


class TokenListRefused(CloudError):
    """A token list that must not be used; ``ver`` is its claimed version when it had one."""

    def __init__(self, reason: Refusal, detail: str = "", *, ver: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.ver = ver
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


@dataclass(frozen=True, slots=True)
class TokenList:
    """A verified list: who may hear this gateway's doorbell, as of version ``ver``.

    ``fingerprint`` identifies the content (the claims), so the same list delivered
    again, even re-signed, is recognised as the one in use.
    """

    ver: int
    iat: int
    tokens: tuple[AuthorisedToken, ...] = field(repr=False)
    jws: str = field(repr=False, compare=False)
    fingerprint: str = field(repr=False)


def verify_token_list(data: bytes, key: Ed25519PublicKey, gateway_id: str) -> TokenList:
    """The list in ``data`` (a compact JWS), checked signature first, then every claim.

    Raises TokenListRefused saying why. Claims other than ``aud``, ``ver``, ``iat``
    and ``tokens`` are ignored (``exp`` too: a list is good until a newer one comes,
    so a gateway that boots offline still rings its phones).
    """
    if not data.strip():
        raise TokenListRefused(Refusal.EMPTY)
    if len(data) > MAX_MESSAGE_BYTES:
        raise TokenListRefused(Refusal.TOO_LARGE, f"{len(data)} bytes")
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenListRefused(Refusal.NOT_JWS, "not ASCII") from None
    if not _JWS.fullmatch(text):
        raise TokenListRefused(Refusal.NOT_JWS, "expected header.payload.signature in base64url")
    try:
        jsonlimits.check_jws_depth(text)
        header = jwt.get_unverified_header(text)
    except jsonlimits.TooDeep as exc:
        raise TokenListRefused(Refusal.MALFORMED, str(exc)) from None
    except jwt.PyJWTError as exc:
        raise TokenListRefused(Refusal.NOT_JWS, "unreadable header") from exc
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise TokenListRefused(Refusal.UNSIGNED, f"alg is {alg!r}")
    if "crit" in header or header.get("b64") is False:
        raise TokenListRefused(Refusal.NOT_JWS, "JWS extensions (crit, b64) are not supported")
    try:
        verified = jwt.PyJWS(algorithms=[ALGORITHM]).decode_complete(
            text, key, algorithms=[ALGORITHM]
        )
    except jwt.InvalidSignatureError as exc:
        raise TokenListRefused(Refusal.BAD_SIGNATURE) from exc
    except jwt.PyJWTError as exc:
        raise TokenListRefused(Refusal.NOT_JWS, str(exc)) from exc
    try:
        claims = jsonlimits.loads(
            verified["payload"], object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except ValueError as exc:
        raise TokenListRefused(Refusal.MALFORMED, f"payload is not JSON ({exc})") from exc
    if not isinstance(claims, dict):
        raise TokenListRefused(Refusal.MALFORMED, "payload is not a JSON object")
    ver, iat, tokens = parse_claims(claims, gateway_id)
    return TokenList(ver, iat, tokens, text, fingerprint(claims))


def parse_claims(
    claims: Mapping[str, Any], gateway_id: str
) -> tuple[int, int, tuple[AuthorisedToken, ...]]:
    """``ver``, ``iat`` and the tokens of a list's claims, every field checked.

    Also what ``edgebell cloud sign-tokens`` checks before it signs.
    """
    ver = _integer(claims, "ver", minimum=1)
    aud = claims.get("aud")
    if not isinstance(aud, str):
        raise TokenListRefused(Refusal.MALFORMED, "aud must be the gateway id (a string)", ver=ver)
    if aud != gateway_id:
        raise TokenListRefused(Refusal.FOREIGN, f"aud is {aud!r}", ver=ver)
    iat = _integer(claims, "iat", minimum=0, ver=ver)
    entries = claims.get("tokens")
    if not isinstance(entries, list):
        raise TokenListRefused(Refusal.MALFORMED, "tokens must be a list", ver=ver)
    tokens: dict[str, AuthorisedToken] = {}
    for index, entry in enumerate(entries):
        token = _entry(entry, f"tokens[{index}]", ver)
        if token.token in tokens:
            # Two entries for one phone (other buttons, other registered_at) leave it unclear
            # which one the cloud means; saying so beats guessing.
            raise TokenListRefused(
                Refusal.MALFORMED, f"tokens[{index}] repeats an earlier token", ver=ver
            )
        tokens[token.token] = token
    return ver, iat, tuple(tokens.values())


def fingerprint(claims: Mapping[str, Any]) -> str:
    """A digest of the claims' content, independent of key order and whitespace."""
    canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _entry(entry: object, where: str, ver: int) -> AuthorisedToken:
    if not isinstance(entry, dict):
        raise TokenListRefused(Refusal.MALFORMED, f"{where} must be an object", ver=ver)
    token = entry.get("token")
    if not isinstance(token, str) or not is_device_token(token):
        raise TokenListRefused(
            Refusal.MALFORMED,
            f"{where}.token must be an even number (16 to 200) of hex digits",
            ver=ver,
        )
    env = entry.get("env")
    if env not in ENVIRONMENTS:
        raise TokenListRefused(
            Refusal.MALFORMED, f"{where}.env must be production or sandbox", ver=ver
        )
    user = entry.get("user")
    if not isinstance(user, str):
        raise TokenListRefused(Refusal.MALFORMED, f"{where}.user must be a string", ver=ver)
    registered_at = _integer(entry, "registered_at", minimum=0, ver=ver, where=where)
    buttons: frozenset[str] | None = None
    if "buttons" in entry and entry["buttons"] is not None:
        listed = entry["buttons"]
        if not isinstance(listed, list) or not all(
            isinstance(b, str) and _BUTTON.fullmatch(b) for b in listed
        ):
            raise TokenListRefused(
                Refusal.MALFORMED, f"{where}.buttons must be a list of button ids", ver=ver
            )
        buttons = frozenset(listed)
    return AuthorisedToken(
        token=token.lower(),
        env=str(env),
        user=user,
        buttons=buttons,
        registered_at=registered_at,
        ver=ver,
    )


def _integer(
    claims: Mapping[str, Any],
    name: str,
    *,
    minimum: int,
    ver: int | None = None,
    where: str | None = None,
) -> int:
    value = claims.get(name)
    path = f"{where}.{name}" if where else name
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenListRefused(Refusal.MALFORMED, f"{path} must be an integer", ver=ver)
    if not minimum <= value <= _MAX_INT:
        raise TokenListRefused(
            Refusal.MALFORMED, f"{path} must be between {minimum} and 2^63-1", ver=ver
        )
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "aud" (or "ver") keys: parsers disagree on which wins, so the list is refused.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class Verdict(enum.Enum):
    """What an offered list means for the one in use."""

    NEW = "new"  # take it
    CURRENT = "current"  # the list in use, delivered again (a retained message after reconnect)
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Offer:
    verdict: Verdict
    token_list: TokenList | None
    refusal: TokenListRefused | None = None


class TokenListKeeper:
    """The list in use, the highest ``ver`` ever taken, and the refusals: the version rules.

    ``ver`` only grows: a list older than the highest version taken, or with that
    version but other content, is refused, so a replayed old list cannot bring back a
    phone that was removed.
    """

    def __init__(self, key: Ed25519PublicKey, gateway_id: str) -> None:
        self._key = key
        self._gateway_id = gateway_id
        self.current: TokenList | None = None
        self.highest_ver: int | None = None
        self.refused = 0
        self.last_refusal: str | None = None

    def restore(self, jws: bytes | None, highest_ver: int | None) -> TokenList | None:
        """Take the persisted list back at start (verified again); raises if it is no good."""
        self.highest_ver = highest_ver
        if jws is None:
            return None
        token_list = verify_token_list(jws, self._key, self._gateway_id)
        self.current = token_list
        self.highest_ver = max(token_list.ver, highest_ver or 0)
        return token_list

    def offer(self, data: bytes) -> Offer:
        """Judge a message from ``P/tokens``; a NEW list becomes the current one."""
        try:
            token_list = verify_token_list(data, self._key, self._gateway_id)
            self._judge(token_list)
        except TokenListRefused as refusal:
            self.refused += 1
            self.last_refusal = str(refusal)
            return Offer(Verdict.REFUSED, None, refusal)
        current = self.current
        if current is not None and token_list.ver == current.ver:
            return Offer(Verdict.CURRENT, current)
        self.current = token_list
        self.highest_ver = token_list.ver
        return Offer(Verdict.NEW, token_list)

    def _judge(self, offered: TokenList) -> None:
        current = self.current
        if current is not None and offered.ver == current.ver:
            if offered.fingerprint != current.fingerprint:
                raise TokenListRefused(Refusal.CONFLICT, f"ver {offered.ver}", ver=offered.ver)
            return
        highest = self.highest_ver
        if highest is not None and offered.ver <= highest:
            raise TokenListRefused(
                Refusal.STALE, f"ver {offered.ver}, in use {highest}", ver=offered.ver
            )
