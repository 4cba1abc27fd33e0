"""The cloud side's tools: the token-list key pair, signed token lists, the fleet's APNs JWT.

For the backend team (and the tests and demo, which play the cloud): a list signed
here passes exactly the checks the gateway makes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edgebell.cloud.tokenlist import (
    ALGORITHM,
    MAX_MESSAGE_BYTES,
    TokenList,
    TokenListRefused,
    parse_claims,
    verify_token_list,
)
from edgebell.errors import CloudError
from edgebell.privacy import short_token
from edgebell.secrets import read_file, read_secret


def keygen(directory: Path, name: str = "token-list", *, force: bool = False) -> tuple[Path, Path]:
    """A new Ed25519 pair: ``<name>.key`` (PKCS#8 PEM, 0600) and ``<name>.pub`` (PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    if not force and (private.exists() or public.exists()):
        raise CloudError(f"{private} or {public} exists already (use --force to replace them)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the first byte; an existing file (with --force) is made so too.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o600)
        out.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    public.chmod(0o644)
    return private, public


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    key = _private_key(read_secret(path, what="token list signing key"), path)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise CloudError(f"{path} is not an Ed25519 private key (make one: edgebell cloud keygen)")
    return key


def load_verify_key(path: Path) -> ed25519.Ed25519PublicKey:
    data = read_file(path, what="token list key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CloudError(f"{path} is not an Ed25519 public key (PEM)")
    return key


def token_list_claims(
    document: Any,
    *,
    gateway: str | None = None,
    ver: int | None = None,
    iat: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims to sign, from a full claims object or just the ``tokens`` array.

    ``gateway``, ``ver`` and ``iat`` fill in (or override) ``aud``, ``ver`` and ``iat``;
    ``ver`` defaults to now in epoch milliseconds (the recommended, ever-growing value).
    """
    now = time.time() if now is None else now
    if isinstance(document, list):
        claims: dict[str, Any] = {"tokens": document}
    elif isinstance(document, dict):
        claims = dict(document)
    else:
        raise CloudError("the token list must be a JSON object (claims) or array (tokens)")
    if gateway is not None:
        claims["aud"] = gateway
    if "aud" not in claims:
        raise CloudError("no gateway: give --gateway ID or an aud in the JSON")
    if ver is not None:
        claims["ver"] = ver
    claims.setdefault("ver", int(now * 1000))
    if iat is not None:
        claims["iat"] = iat
    claims.setdefault("iat", int(now))
    return claims


def sign_token_list(claims: Mapping[str, Any], key: ed25519.Ed25519PrivateKey) -> str:
    """The compact JWS of ``claims``, after the checks the gateway will make."""
    aud = claims.get("aud")
    try:
        parse_claims(claims, aud if isinstance(aud, str) else "")
    except TokenListRefused as exc:
        raise CloudError(f"the gateway would refuse this list: {exc}") from exc
    token = jwt.encode(dict(claims), key, algorithm=ALGORITHM, headers={"typ": "JWT"})
    if len(token) > MAX_MESSAGE_BYTES:
        raise CloudError(
            f"the signed list is {len(token)} bytes; a message may have at most {MAX_MESSAGE_BYTES}"
        )
    return token


def check_token_list(jws: bytes, key: ed25519.Ed25519PublicKey, gateway: str) -> TokenList:
    """Verify a signed list as the gateway would; CloudError says why it would refuse it."""
    try:
        return verify_token_list(jws, key, gateway)
    except TokenListRefused as exc:
        raise CloudError(f"refused: {exc}") from exc


def describe(token_list: TokenList) -> str:
    """A person's view of a list: tokens shortened, as everywhere in human output."""
    lines = [f"ver {token_list.ver}, iat {token_list.iat}, {len(token_list.tokens)} tokens"]
    for t in token_list.tokens:
        buttons = "all buttons" if t.buttons is None else ", ".join(sorted(t.buttons)) or "none"
        lines.append(
            f"  {short_token(t.token):<10} {t.env:<10} {t.user or '':<20}"
            f" registered_at {t.registered_at}  {buttons}"
        )
    return "\n".join(lines)


def mint_apns_jwt(key_file: Path, key_id: str, team_id: str, *, iat: int | None = None) -> str:
    """An APNs provider JWT (ES256; kid, iss, iat) from the team's ``.p8`` key."""
    key = _private_key(read_secret(key_file, what="APNs auth key"), key_file)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise CloudError(f"{key_file} is not an APNs auth key (an EC P-256 .p8)")
    return jwt.encode(
        {"iss": team_id, "iat": int(time.time()) if iat is None else iat},
        key,
        algorithm="ES256",
        headers={"kid": key_id},
    )


def fleet_message(token: str) -> str:
    """The retained ``<prefix>/fleet/apns-jwt`` payload for ``token``."""
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    return json.dumps({"jwt": token, "iat": iat}, separators=(",", ":"))


def _private_key(data: bytes, path: Path) -> Any:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CloudError(f"{path} is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CloudError(f"{path} holds no readable PEM private key") from None
