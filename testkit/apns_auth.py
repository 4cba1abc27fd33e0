"""Provider-token (JWT) verification as APNs does it, with a cache so each JWT is verified once."""

from __future__ import annotations

from collections.abc import Mapping

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from jwt.types import Options

from testkit.apns_rules import Reason

AuthKeys = Mapping[str, tuple[str, EllipticCurvePublicKey]]
"""Key id -> (team id, public key) of every signing key the stand-in trusts."""

MAX_TOKEN_AGE = 3600
# A gateway clock slightly ahead of ours is normal; an iat far in the future is a
# bug (a millisecond timestamp, say) that would otherwise pass as "fresh forever".
_FUTURE_SKEW = 300
_CACHE_LIMIT = 4096

_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "verify_aud": False,
    "verify_iss": False,
}


class ProviderTokenVerifier:
    """Decides whether a provider JWT authorises a push, the way APNs documents it.

    ES256 only; header ``kid`` must name a trusted key, claim ``iss`` must be that
    key's team, ``iat`` must be present and at most an hour old. Signatures are
    checked once per distinct JWT string (the cache is dropped whenever the trusted
    keys change); the age is checked on every request, since a cached JWT ages too.
    """

    __slots__ = ("_cache", "_keys")

    def __init__(self, keys: AuthKeys | None = None) -> None:
        self._keys: dict[str, tuple[str, EllipticCurvePublicKey]] = dict(keys or {})
        self._cache: dict[str, int] = {}

    @property
    def keys(self) -> AuthKeys:
        return dict(self._keys)

    @keys.setter
    def keys(self, keys: AuthKeys) -> None:
        self._keys = dict(keys)
        self._cache.clear()

    def check(self, token: str, now: float, max_age: float = MAX_TOKEN_AGE) -> Reason | None:
        """``None`` when ``token`` is good at time ``now`` (epoch seconds), else Apple's reason.

        ``max_age``: Apple's hour, shortened by a test that needs a JWT to expire now.
        """
        iat = self._cache.get(token)
        if iat is None:
            verified = self._verify(token, now)
            if isinstance(verified, Reason):
                return verified
            iat = verified
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = iat
        if now - iat > max_age:
            return Reason.EXPIRED_PROVIDER_TOKEN
        return None

    def _verify(self, token: str, now: float) -> int | Reason:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Reason.INVALID_PROVIDER_TOKEN
        kid = header.get("kid")
        if header.get("alg") != "ES256" or not isinstance(kid, str) or kid not in self._keys:
            return Reason.INVALID_PROVIDER_TOKEN
        team_id, public_key = self._keys[kid]
        try:
            claims = jwt.decode(token, public_key, algorithms=["ES256"], options=_DECODE_OPTIONS)
        except jwt.PyJWTError:
            return Reason.INVALID_PROVIDER_TOKEN
        iat = claims.get("iat")
        if claims.get("iss") != team_id or isinstance(iat, bool) or not isinstance(iat, int):
            return Reason.INVALID_PROVIDER_TOKEN
        if iat > now + _FUTURE_SKEW:
            return Reason.INVALID_PROVIDER_TOKEN
        return iat
