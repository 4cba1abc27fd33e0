"""ES256 provider JWTs for APNs, signed with ``cryptography`` directly.

On a gateway this runs in the signer's child process (edgebell.apns.jwt_child), never in
the daemon. PyJWT would do it in one call, but importing it pulls in ``urllib.request``,
``http``, ``email`` and the X.509 stack on top, for one small, fixed-shape token.
Verification (the cloud's token lists, the stand-in, the tests) stays with PyJWT.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(value: Mapping[str, object]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def sign_es256(claims: Mapping[str, object], key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    """A compact JWS: header ``{"alg": "ES256", "kid": kid, "typ": "JWT"}``, the claims, R||S."""
    signing_input = f"{_segment({'alg': 'ES256', 'kid': kid, 'typ': 'JWT'})}.{_segment(claims)}"
    der = key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    # JWS wants the raw 64-byte R || S, not the DER the signer returns (RFC 7518 3.4).
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
