"""Token lists: JWS (EdDSA) verification and the version rules, sans I/O."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fixtures_mqtt import entry
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebell.cloud.tokenlist import (
    MAX_MESSAGE_BYTES,
    Refusal,
    TokenListKeeper,
    TokenListRefused,
    Verdict,
    verify_token_list,
)
from testkit.gateway import random_token

GATEWAY = "gw-test"
KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
A, B, C = random_token(), random_token(16), random_token(100)


def sign(claims: dict[str, Any], key: Any = KEY, alg: str = "EdDSA") -> bytes:
    return jwt.encode(claims, key, algorithm=alg).encode()


def claims(
    ver: int = 5, tokens: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "aud": GATEWAY,
        "ver": ver,
        "iat": 1_700_000_000,
        "tokens": [entry(A), entry(B, buttons=["back"])] if tokens is None else tokens,
        **extra,
    }


def refusal(data: bytes, key: Ed25519PublicKey = PUBLIC) -> Refusal:
    with pytest.raises(TokenListRefused) as info:
        verify_token_list(data, key, GATEWAY)
    return info.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_good_list_gives_every_entry_with_its_version() -> None:
    upper = C.upper()
    token_list = verify_token_list(
        sign(claims(tokens=[entry(A, user="bob"), entry(upper, env="production")])),
        PUBLIC,
        GATEWAY,
    )
    assert token_list.ver == 5
    first, second = token_list.tokens
    assert (first.token, first.env, first.user, first.buttons) == (A, "sandbox", "bob", None)
    assert first.registered_at == 1_700_000_000_000
    assert first.ver == 5
    assert second.token == C  # lower-cased, as the config's tokens are
    assert second.env == "production"


def test_buttons_limit_which_buttons_a_token_hears() -> None:
    token_list = verify_token_list(sign(claims()), PUBLIC, GATEWAY)
    everyone, back_only = token_list.tokens
    assert everyone.hears("front")
    assert back_only.hears("back")
    assert not back_only.hears("front")


def test_unknown_claims_and_entry_fields_are_ignored() -> None:
    future = claims(exp=1, note="hi", tokens=[{**entry(A), "device": "iPad"}])
    assert len(verify_token_list(sign(future), PUBLIC, GATEWAY).tokens) == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", Refusal.EMPTY),
        (b"   \n", Refusal.EMPTY),
        (b"x" * (MAX_MESSAGE_BYTES + 1), Refusal.TOO_LARGE),
        (b"\xff\xfe garbage", Refusal.NOT_JWS),
        (b"not a jws at all", Refusal.NOT_JWS),
        (b'{"tokens": []}', Refusal.NOT_JWS),
        (b"a.b", Refusal.NOT_JWS),
    ],
)
def test_garbage_is_refused(data: bytes, reason: Refusal) -> None:
    assert refusal(data) is reason


def test_a_megabyte_is_refused_before_any_parsing() -> None:
    big = sign(claims(padding="x" * (1024 * 1024)))
    assert refusal(big) is Refusal.TOO_LARGE


def test_another_key_signature_is_refused() -> None:
    assert refusal(sign(claims(), key=Ed25519PrivateKey.generate())) is Refusal.BAD_SIGNATURE


def test_a_tampered_payload_is_refused() -> None:
    header, _, signature = sign(claims()).decode().split(".")
    forged = b64(json.dumps(claims(tokens=[entry(C)])).encode())
    assert refusal(f"{header}.{forged}.{signature}".encode()) is Refusal.BAD_SIGNATURE


def test_an_unsigned_list_is_refused() -> None:
    header = b64(b'{"alg":"none","typ":"JWT"}')
    payload = b64(json.dumps(claims()).encode())
    assert refusal(f"{header}.{payload}.".encode()) is Refusal.UNSIGNED


def test_hmac_with_the_public_key_as_secret_is_refused() -> None:
    # The classic algorithm confusion: an attacker knows the public key.
    secret = PUBLIC.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(b'{"alg":"HS256"}')
    signing_input = f"{header}.{b64(json.dumps(claims()).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert refusal(f"{signing_input}.{b64(mac)}".encode()) is Refusal.UNSIGNED


def test_a_list_for_another_gateway_is_refused() -> None:
    assert refusal(sign(claims(aud="gw-other"))) is Refusal.FOREIGN


@pytest.mark.parametrize(
    "spoiled",
    [
        {"aud": ["gw-test"]},
        {"ver": "5"},
        {"ver": 5.0},
        {"ver": True},
        {"ver": 0},
        {"ver": 2**63},
        {"iat": None},
        {"tokens": {"token": A}},
        {"tokens": [entry(A), entry(A, user="bob")]},
        {"tokens": [entry(A[:-1])]},
        {"tokens": [entry("zz" * 32)]},
        {"tokens": [entry("ab" * 7)]},
        {"tokens": [entry(A, env="staging")]},
        {"tokens": [{**entry(A), "registered_at": "yesterday"}]},
        {"tokens": [{k: v for k, v in entry(A).items() if k != "user"}]},
        {"tokens": [entry(A, buttons=["front", "no spaces"])]},
        {"tokens": [{**entry(A), "buttons": "front"}]},
        {"tokens": ["a token"]},
    ],
)
def test_malformed_claims_are_refused(spoiled: dict[str, Any]) -> None:
    assert refusal(sign({**claims(), **spoiled})) is Refusal.MALFORMED


def test_a_missing_claim_is_refused() -> None:
    for name in ("aud", "ver", "iat", "tokens"):
        document = claims()
        del document[name]
        assert refusal(sign(document)) is Refusal.MALFORMED, name


def test_duplicate_json_keys_are_refused() -> None:
    # Parsers disagree on which "aud" wins: such a list is not trusted either way.
    payload = b'{"aud": "gw-other", "aud": "gw-test", "ver": 5, "iat": 1, "tokens": []}'
    signed = jwt.api_jws.PyJWS().encode(payload, KEY, algorithm="EdDSA").encode()
    assert refusal(signed) is Refusal.MALFORMED


def test_a_payload_that_is_not_an_object_is_refused() -> None:
    signed = jwt.api_jws.PyJWS().encode(b"[1, 2]", KEY, algorithm="EdDSA").encode()
    assert refusal(signed) is Refusal.MALFORMED


# -- the version rules --------------------------------------------------------------------


def test_newer_lists_are_taken_and_the_same_list_again_is_current() -> None:
    keeper = TokenListKeeper(PUBLIC, GATEWAY)
    first = keeper.offer(sign(claims(ver=5)))
    assert first.verdict is Verdict.NEW
    again = keeper.offer(sign(claims(ver=5)))
    assert again.verdict is Verdict.CURRENT
    assert keeper.offer(sign(claims(ver=6, tokens=[entry(C)]))).verdict is Verdict.NEW
    assert keeper.current is not None
    assert [t.token for t in keeper.current.tokens] == [C]
    assert keeper.refused == 0


def test_the_same_claims_reordered_are_still_the_current_list() -> None:
    keeper = TokenListKeeper(PUBLIC, GATEWAY)
    keeper.offer(sign(claims(ver=5)))
    reordered = dict(reversed(list(claims(ver=5).items())))
    assert keeper.offer(sign(reordered)).verdict is Verdict.CURRENT


@pytest.mark.parametrize(
    ("ver", "tokens", "reason"),
    [
        (4, None, Refusal.STALE),
        (1, [entry(A), entry(B), entry(C)], Refusal.STALE),
        (5, [entry(A), entry(B), entry(C)], Refusal.CONFLICT),
    ],
)
def test_older_or_conflicting_lists_are_refused_and_the_current_one_stays(
    ver: int, tokens: list[dict[str, Any]] | None, reason: Refusal
) -> None:
    keeper = TokenListKeeper(PUBLIC, GATEWAY)
    keeper.offer(sign(claims(ver=5, tokens=[entry(A)])))
    offer = keeper.offer(sign(claims(ver=ver, tokens=tokens)))
    assert offer.verdict is Verdict.REFUSED
    assert offer.refusal is not None
    assert offer.refusal.reason is reason
    assert keeper.current is not None
    assert keeper.current.ver == 5
    assert [t.token for t in keeper.current.tokens] == [A]
    assert keeper.refused == 1
    assert keeper.last_refusal is not None
    assert A not in keeper.last_refusal


def test_a_restored_list_is_verified_again_and_its_version_still_rules() -> None:
    keeper = TokenListKeeper(PUBLIC, GATEWAY)
    restored = keeper.restore(sign(claims(ver=5)), highest_ver=7)
    assert restored is not None
    assert restored.ver == 5
    # A version at or below the highest ever taken cannot come back, even if never in use.
    assert keeper.offer(sign(claims(ver=6))).verdict is Verdict.REFUSED
    assert keeper.offer(sign(claims(ver=8))).verdict is Verdict.NEW


def test_a_saved_list_that_no_longer_verifies_is_refused_at_restore() -> None:
    keeper = TokenListKeeper(PUBLIC, GATEWAY)
    with pytest.raises(TokenListRefused):
        keeper.restore(sign(claims(ver=5), key=Ed25519PrivateKey.generate()), highest_ver=5)
    assert keeper.current is None
    assert keeper.offer(sign(claims(ver=5))).verdict is Verdict.REFUSED  # 5 was taken once
    assert keeper.offer(sign(claims(ver=6))).verdict is Verdict.NEW


# -- fuzzing: nothing but TokenListRefused ever comes out -----------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    with pytest.raises(TokenListRefused):
        verify_token_list(data, PUBLIC, GATEWAY)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "aud": st.sampled_from([GATEWAY, "x"]) | _json,
            "ver": st.integers() | _json,
            "iat": st.integers() | _json,
            "tokens": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "token": st.sampled_from([A, B, "", "zz"]) | _json,
                        "env": st.sampled_from(["sandbox", "production"]) | _json,
                        "user": st.text(max_size=5) | _json,
                        "registered_at": st.integers() | _json,
                        "buttons": st.lists(st.text(max_size=5)) | _json,
                    },
                ),
                max_size=3,
            )
            | _json,
        },
    )
)
def test_signed_claims_of_any_shape_give_a_list_or_a_refusal(document: dict[str, Any]) -> None:
    with contextlib.suppress(TokenListRefused):
        verify_token_list(sign(document), PUBLIC, GATEWAY)


def _signed_raw(payload: bytes, header: bytes = b'{"alg":"EdDSA","typ":"JWT"}') -> bytes:
    """A JWS over any payload bytes (jwt.encode cannot even serialise what these tests send)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{b64(KEY.sign(signing_input.encode()))}".encode()


def test_a_signed_list_nested_30000_deep_is_a_counted_refusal() -> None:
    # Issue 10: RecursionError escaped the keeper, so the list was not counted as refused.
    deep = b'{"aud":"gw-test","ver":9,"iat":1,"tokens":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    keeper = TokenListKeeper(PUBLIC, GATEWAY)
    offer = keeper.offer(_signed_raw(deep))
    assert offer.verdict is Verdict.REFUSED
    assert offer.refusal is not None
    assert offer.refusal.reason is Refusal.MALFORMED
    assert keeper.refused == 1
    assert "nested deeper than" in (keeper.last_refusal or "")


def test_a_header_nested_30000_deep_is_refused() -> None:
    header = b'{"alg":"EdDSA","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert refusal(_signed_raw(json.dumps(claims()).encode(), header)) is Refusal.MALFORMED
