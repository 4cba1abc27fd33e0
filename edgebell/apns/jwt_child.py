"""The signer's child process: one provider JWT per run; token auth imports cryptography here.

Run by :class:`edgebell.apns.signer.Signer` as ``python -m edgebell.apns.jwt_child``
(the wire between the two is described there). It imports only what signing needs, so
the short-lived process stays small.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, BinaryIO

from edgebell.errors import ApnsAuthError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography is imported inside the functions below: the daemon imports this module (for
# EXIT_BAD_KEY) and must not load it.

EXIT_BAD_KEY = 2
EXPECTED = "the AuthKey_XXXXXXXXXX.p8 file from Apple (a PKCS#8 EC P-256 private key)"


def load_auth_key(pem: bytes, name: str) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in ``pem``, the key file ``name``; ApnsAuthError says what is wrong."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    # The library's messages never carry key bytes, but say only what is useful.
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ApnsAuthError(f"{name} is encrypted; expected {EXPECTED}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ApnsAuthError(f"{name} is not {EXPECTED}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ApnsAuthError(f"{name} holds another kind of key; expected {EXPECTED}")
    return key


def sign(pem: bytes, key_id: str, team_id: str, iat: int, *, name: str = "") -> str:
    """The compact JWT for ``iat``, made in this process (the child's work; tests use it too)."""
    from edgebell.apns.es256 import sign_es256

    key = load_auth_key(pem, name or f"APNs auth key {key_id}")
    return sign_es256({"iss": team_id, "iat": iat}, key, key_id)


def main(stdin: BinaryIO, stdout: BinaryIO, stderr: BinaryIO) -> int:
    """The child: read the request, print the JWT (exit 0) or why the key cannot sign (exit 2)."""
    header, _, pem = stdin.read().partition(b"\n")
    try:
        claims = json.loads(header)
        key_id, team_id, iat = str(claims["kid"]), str(claims["iss"]), int(claims["iat"])
        name = str(claims.get("name") or "")
    except (ValueError, KeyError, TypeError):
        stderr.write(b"the JWT signer got a malformed request\n")
        return 1
    try:
        jwt = sign(pem, key_id, team_id, iat, name=name)
    except ApnsAuthError as exc:
        stderr.write(f"{exc}\n".encode())
        return EXIT_BAD_KEY
    stdout.write(jwt.encode("ascii") + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer))
