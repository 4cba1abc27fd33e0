"""The provider JWT signer makes what PyJWT (and so Apple) verifies as ES256."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edgebell.apns.es256 import sign_es256


def test_pyjwt_verifies_the_signature_header_and_claims() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = sign_es256({"iss": "DEF123GHIJ", "iat": 1_700_000_000}, key, "ABC123DEFG")
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}
    claims = jwt.decode(
        token, key.public_key(), algorithms=["ES256"], options={"verify_iat": False}
    )
    assert claims == {"iss": "DEF123GHIJ", "iat": 1_700_000_000}


def test_another_key_does_not_verify() -> None:
    token = sign_es256({"iss": "T", "iat": 1}, ec.generate_private_key(ec.SECP256R1()), "K")
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other, algorithms=["ES256"], options={"verify_iat": False})


def test_signatures_are_raw_64_bytes_even_when_r_or_s_is_short() -> None:
    # About 1 in 128 signatures has a leading zero byte in R or S: the padding must hold.
    key = ec.generate_private_key(ec.SECP256R1())
    for i in range(300):
        token = sign_es256({"iat": i}, key, "K")
        jwt.decode(token, key.public_key(), algorithms=["ES256"], options={"verify_iat": False})
