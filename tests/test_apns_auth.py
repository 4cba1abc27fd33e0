"""Provider JWTs, client certificates and the cloud's JWT (delegated): alone and against APNs."""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fixtures_apns import KEY_ID, TEAM_ID, TOPIC, apns_standin, pki, provider_jwt

from edgebell.apns.auth import (
    HARD_LIMIT,
    UPDATE_HOLD,
    CertificateAuth,
    DelegatedAuth,
    TokenAuth,
)
from edgebell.apns.client import ApnsClient
from edgebell.apns.jwt_child import sign
from edgebell.apns.model import MAX_JWT_AGE, Environment, Outcome, PushRequest, PushResult
from edgebell.apns.signer import SignerUnavailable
from edgebell.errors import ApnsAuthError
from testkit.apns_server import ApnsStandIn
from testkit.pki import TestPki, make_apns_auth_key, make_client_cert, make_p12
from testkit.signing import in_process_mint

FIXTURES = (apns_standin, pki)  # pytest finds them by name in this module

WAIT = 5.0
T0 = 1_800_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingMint:
    """The in-process mint, counting the JWTs it makes; ``gate`` holds them back while set."""

    def __init__(self, pki: TestPki, key: bytes | None = None) -> None:
        self._mint = in_process_mint(
            key if key is not None else pki.auth_key.private_key.read_bytes(), KEY_ID, TEAM_ID
        )
        self.made: list[str] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, iat: int) -> str:
        if self.gate is not None:
            await self.gate.wait()
        token = await self._mint(iat)
        self.made.append(token)
        return token


def token_auth(
    pki: TestPki, clock: Clock | None = None, *, mint: CountingMint | None = None, **kw: Any
) -> TokenAuth:
    if clock is not None:
        kw["clock"] = clock
    return TokenAuth(KEY_ID, TEAM_ID, mint=mint or CountingMint(pki), **kw)


async def current(auth: TokenAuth) -> str:
    """The JWT in use once the one being made (if due) is there."""
    header = await auth.wait_authorization()
    assert header is not None
    return header


def claims(pki: TestPki, header: str) -> dict[str, Any]:
    scheme, _, token = header.partition(" ")
    assert scheme == "bearer"
    decoded: dict[str, Any] = jwt.decode(
        token,
        pki.auth_key.load_public_key(),
        algorithms=["ES256"],
        options={"verify_iat": False},
    )
    return decoded


def result(outcome: Outcome) -> PushResult:
    request = PushRequest(
        token="00" * 32,
        environment=Environment.SANDBOX,
        topic=TOPIC,
        payload=b"{}",
        apns_id=str(uuid.uuid4()),
        collapse_id="c",
        expiration=0,
    )
    return PushResult(request, outcome, 403, "ExpiredProviderToken", None, None, None)


def push(env: Environment = Environment.SANDBOX) -> PushRequest:
    return PushRequest(
        token=secrets.token_hex(32),
        environment=env,
        topic=TOPIC,
        payload=b'{"aps":{"alert":"ding"}}',
        apns_id=str(uuid.uuid4()),
        collapse_id="ring-1",
        expiration=int(time.time()) + 900,
    )


def client(auth: Any, url: str, pki: TestPki) -> ApnsClient:
    return ApnsClient(
        auth=auth,
        host_override=url,
        ca_file=pki.ca.cert,
        connect_timeout=WAIT,
        request_timeout=WAIT,
        ping_interval=60,
    )


# -- token auth, alone ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_jwt_is_es256_with_kid_iss_iat(pki: TestPki) -> None:
    header = await current(token_auth(pki, Clock()))
    token = header.removeprefix("bearer ")
    assert jwt.get_unverified_header(token)["kid"] == KEY_ID
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert claims(pki, header) == {"iss": TEAM_ID, "iat": int(T0)}


@pytest.mark.asyncio
async def test_jwt_is_reused_until_refresh_after(pki: TestPki) -> None:
    clock = Clock()
    mint = CountingMint(pki)
    auth = token_auth(pki, clock, mint=mint, refresh_after=1800)
    first = await current(auth)
    clock.now += 1799
    assert auth.authorization() == first
    clock.now += 1
    second = await current(auth)
    assert second != first
    assert claims(pki, second)["iat"] == int(T0 + 1800)
    clock.now += 60
    assert auth.authorization() == second
    assert len(mint.made) == 2


@pytest.mark.asyncio
async def test_a_due_jwt_is_made_in_the_background_while_the_old_one_is_used(
    pki: TestPki,
) -> None:
    """A request never waits for the signer while the JWT it has is still good."""
    clock = Clock()
    mint = CountingMint(pki)
    auth = token_auth(pki, clock, mint=mint, refresh_after=1800)
    first = await current(auth)
    mint.gate = asyncio.Event()  # the signer is slow now
    clock.now += 1800
    for _ in range(3):  # due: every request still gets the old one at once, one JWT is made
        assert auth.authorization() == first
        await asyncio.sleep(0)
    mint.gate.set()
    second = await auth.wait_authorization()
    assert second is not None
    assert second != first
    assert auth.authorization() == second
    assert len(mint.made) == 2
    await auth.aclose()


def test_refresh_after_must_be_between_20_and_55_minutes(pki: TestPki) -> None:
    with pytest.raises(ValueError, match="refresh_after"):
        token_auth(pki, refresh_after=60)
    with pytest.raises(ValueError, match="refresh_after"):
        token_auth(pki, refresh_after=3600)
    token_auth(pki, refresh_after=1200)
    token_auth(pki, refresh_after=3300)


@pytest.mark.asyncio
async def test_renew_makes_one_new_jwt_for_many_expired_answers(pki: TestPki) -> None:
    clock = Clock()
    mint = CountingMint(pki)
    auth = token_auth(pki, clock, mint=mint)
    stale = await current(auth)
    expired = result(Outcome.AUTH_RENEW)
    auth.on_result(expired, stale)
    assert auth.authorization() is None  # Apple said expired: never sent again
    fresh = await current(auth)
    assert fresh != stale
    # The other requests that carried the stale JWT answer too: no new JWT for them.
    for _ in range(5):
        auth.on_result(expired, stale)
        assert auth.authorization() == fresh
    auth.renew(None)  # unconditional
    assert await current(auth) != fresh
    assert len(mint.made) == 3


@pytest.mark.asyncio
async def test_too_many_updates_keeps_the_jwt_longer_but_never_an_hour(pki: TestPki) -> None:
    clock = Clock()
    auth = token_auth(pki, clock, refresh_after=1200)
    header = await current(auth)
    clock.now += 1100
    auth.on_result(result(Outcome.AUTH_BACKOFF), header)
    clock.now += UPDATE_HOLD - 1  # past refresh_after, but inside the hold
    assert await current(auth) == header
    clock.now += 1
    newer = await current(auth)
    assert newer != header
    # A hold that would reach past the hour ends early: never an expired JWT.
    clock.now += 3000
    auth.too_many_updates()
    clock.now += HARD_LIMIT - 3000 - 1
    assert await current(auth) == newer
    clock.now += 1
    assert auth.authorization() is None  # past the hard limit: not sent any more
    assert await current(auth) != newer
    assert HARD_LIMIT < MAX_JWT_AGE


@pytest.mark.asyncio
async def test_a_clock_stepping_back_makes_a_new_jwt(pki: TestPki) -> None:
    clock = Clock()
    auth = token_auth(pki, clock)
    header = await current(auth)
    clock.now -= 30  # jitter: kept
    assert auth.authorization() == header
    clock.now -= 3600  # NTP fixed a wrong clock: the old iat is in the future now
    assert auth.authorization() is None
    assert await current(auth) != header


def test_unusable_keys_are_refused_without_showing_them(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_curve = ec.generate_private_key(ec.SECP384R1())
    for key in (rsa_key, other_curve):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(ApnsAuthError, match="P-256") as info:
            sign(pem, KEY_ID, TEAM_ID, int(T0))
        assert "PRIVATE" not in str(info.value)
    # A P-256 key cut short: the PEM frame and the first line survive, the rest is lost.
    whole = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    lines = whole.splitlines(keepends=True)
    garbage = lines[0] + lines[1][:48] + b"\n" + lines[-1]
    with pytest.raises(ApnsAuthError) as info:
        sign(garbage, KEY_ID, TEAM_ID, int(T0))
    assert lines[1][:16].decode() not in str(info.value)
    assert "BEGIN" not in str(info.value)
    assert KEY_ID in str(info.value)
    with pytest.raises(ApnsAuthError):
        sign(b"", KEY_ID, TEAM_ID, int(T0))
    with pytest.raises(ApnsAuthError, match="key id and a team id"):
        TokenAuth("", TEAM_ID, mint=in_process_mint(whole, KEY_ID, TEAM_ID))


@pytest.mark.asyncio
async def test_a_jwt_that_cannot_be_made_is_said_and_tried_again(pki: TestPki) -> None:
    """The signer fails: no JWT, the problem named (for status), a new try after the pause."""
    clock = Clock()
    mint = CountingMint(pki)
    failures = [SignerUnavailable("the JWT signer did not answer within 30 s")]

    async def flaky(iat: int) -> str:
        if failures:
            raise failures.pop()
        return await mint(iat)

    auth = TokenAuth(KEY_ID, TEAM_ID, mint=flaky, clock=clock, retry_after=30)
    assert await auth.wait_authorization() is None
    assert auth.problem == "cannot make a provider JWT: the JWT signer did not answer within 30 s"
    clock.now += 29
    assert await auth.wait_authorization() is None  # not before the pause is over
    assert mint.made == []
    clock.now += 1
    assert await auth.wait_authorization() is not None
    assert auth.problem is None
    bad_key = token_auth(pki, Clock(), mint=CountingMint(pki, key=b"not a key"))
    assert await bad_key.wait_authorization() is None
    assert bad_key.problem == (
        f"cannot make a provider JWT: APNs auth key {KEY_ID} is not the AuthKey_XXXXXXXXXX.p8"
        " file from Apple (a PKCS#8 EC P-256 private key)"
    )


@pytest.mark.asyncio
async def test_a_mint_that_fails_unexpectedly_is_said_not_raised(pki: TestPki) -> None:
    async def buggy(iat: int) -> str:
        raise RuntimeError("boom")

    auth = TokenAuth(KEY_ID, TEAM_ID, mint=buggy, clock=Clock())
    assert await auth.wait_authorization() is None  # the push fails locally, nothing raises
    assert auth.problem == "cannot make a provider JWT: RuntimeError: boom"


@pytest.mark.asyncio
async def test_token_auth_repr_shows_no_secret(pki: TestPki) -> None:
    auth = token_auth(pki, Clock())
    header = await current(auth)
    assert header.removeprefix("bearer ") not in repr(auth)
    assert auth.mode == "token"


# -- delegated auth, alone -----------------------------------------------------------------


def test_delegated_keeps_the_newest_jwt(pki: TestPki) -> None:
    clock = Clock(time.time())
    auth = DelegatedAuth(clock=clock)
    assert auth.mode == "delegated"
    assert auth.authorization() is None
    older = provider_jwt(pki, iat=int(clock.now) - 1300)
    newer = provider_jwt(pki, iat=int(clock.now) - 100)
    assert auth.set_token(newer, int(clock.now) - 100)
    assert not auth.set_token(older, int(clock.now) - 1300)  # older: ignored
    assert auth.authorization() == f"bearer {newer}"
    assert not auth.set_token(newer, int(clock.now) - 100)  # the retained message again
    assert auth.iat == int(clock.now) - 100


def test_delegated_jwt_older_than_an_hour_is_not_used(pki: TestPki) -> None:
    clock = Clock(time.time())
    auth = DelegatedAuth(clock=clock)
    iat = int(clock.now)
    auth.set_token(provider_jwt(pki, iat=iat), iat)
    clock.now = iat + MAX_JWT_AGE - 1
    assert auth.authorization() is not None
    clock.now = iat + MAX_JWT_AGE
    assert auth.authorization() is None


def test_delegated_drops_a_jwt_apple_calls_expired(pki: TestPki) -> None:
    auth = DelegatedAuth()
    iat = int(time.time())
    auth.set_token(provider_jwt(pki, iat=iat), iat)
    header = auth.authorization()
    auth.on_result(result(Outcome.AUTH_RENEW), "bearer some-other-jwt")  # not ours: kept
    assert auth.authorization() == header
    auth.on_result(result(Outcome.AUTH_RENEW), header)
    assert auth.authorization() is None
    assert not auth.set_token(provider_jwt(pki, iat=iat), iat)  # the same one again: no
    assert auth.set_token(provider_jwt(pki, iat=iat + 1), iat + 1)  # the cloud's next: yes
    assert auth.authorization() is not None


def test_delegated_refuses_a_malformed_jwt() -> None:
    with pytest.raises(ApnsAuthError, match="malformed"):
        DelegatedAuth().set_token("not-a-jwt", int(time.time()))


# -- certificate auth, alone ---------------------------------------------------------------


def test_certificate_from_pem_and_p12(pki: TestPki, tmp_path: Path) -> None:
    pem = CertificateAuth(pki.client.combined, None)
    assert pem.mode == "certificate"
    assert pem.authorization() is None
    p12 = make_p12(pki.client, tmp_path, "s3cret passphrase")
    CertificateAuth(p12, b"s3cret passphrase").configure(ssl.create_default_context())


def test_certificate_errors_are_auth_errors(pki: TestPki, tmp_path: Path) -> None:
    p12 = make_p12(pki.client, tmp_path, "right")
    with pytest.raises(ApnsAuthError, match="passphrase"):
        CertificateAuth(p12, b"wrong")
    with pytest.raises(ApnsAuthError, match="cannot read"):
        CertificateAuth(tmp_path / "missing.pem", None)
    with pytest.raises(ApnsAuthError):
        CertificateAuth(pki.client.cert, None)  # certificate without its key
    locked = make_client_cert(pki.ca, tmp_path / "locked", "gw-locked", key_passphrase=b"pw")
    with pytest.raises(ApnsAuthError):
        CertificateAuth(locked.combined, None)  # encrypted key, no passphrase: no prompt
    with pytest.raises(ApnsAuthError):
        CertificateAuth(locked.combined, b"nope")
    CertificateAuth(locked.combined, b"pw")


def test_p12_key_never_stays_on_disk(
    pki: TestPki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen: list[tuple[int, int]] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(
            (os.stat(certfile).st_mode & 0o777, os.stat(Path(certfile).parent).st_mode & 0o777)
        )
        real(self, certfile, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    p12 = make_p12(pki.client, tmp_path, "pw")
    CertificateAuth(p12, b"pw").configure(ssl.create_default_context())
    assert seen == [(0o600, 0o700), (0o600, 0o700)]
    assert list(scratch.iterdir()) == []


# -- against the stand-in --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_expired_jwt_is_renewed_after_apple_says_so(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    clock = Clock(time.time() - 3700)  # the JWT's iat is over an hour old for Apple
    auth = token_auth(pki, clock)
    async with client(auth, apns_standin.url, pki) as apns:
        first = await apns.send(push())
        assert (first.outcome, first.status, first.reason) == (
            Outcome.AUTH_RENEW,
            403,
            "ExpiredProviderToken",
        )
        assert auth.authorization() is None  # the client told the auth to renew
        clock.now = time.time()
        second = await apns.send(push())  # waits for the new JWT, then sends
        assert second.outcome is Outcome.DELIVERED


@pytest.mark.asyncio
async def test_concurrent_expired_answers_make_one_new_jwt(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    clock = Clock(time.time() - 3700)
    mint = CountingMint(pki)
    auth = token_auth(pki, clock, mint=mint)
    async with client(auth, apns_standin.url, pki) as apns:
        results = await asyncio.gather(*(apns.send(push()) for _ in range(10)))
        assert {r.outcome for r in results} == {Outcome.AUTH_RENEW}
        await current(auth)
    assert len(mint.made) == 2  # the stale one, and exactly one replacement


@pytest.mark.asyncio
async def test_a_key_apple_does_not_know_is_refused(
    pki: TestPki,
    apns_standin: ApnsStandIn,
    tmp_path: Path,
) -> None:
    stranger = make_apns_auth_key(tmp_path, KEY_ID, team_id=TEAM_ID)  # same kid, other key
    auth = token_auth(pki, mint=CountingMint(pki, key=stranger.private_key.read_bytes()))
    async with client(auth, apns_standin.url, pki) as apns:
        result = await apns.send(push())
        assert (result.outcome, result.status, result.reason) == (
            Outcome.AUTH_REFUSED,
            403,
            "InvalidProviderToken",
        )
        assert apns.status().failed == 1


@pytest.mark.asyncio
async def test_no_jwt_means_no_request_and_says_why(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    """A signer that cannot run: the push fails locally, naming the signer's problem."""

    async def broken(iat: int) -> str:
        raise SignerUnavailable("cannot start the JWT signer (/nowhere/python): No such file")

    auth = TokenAuth(KEY_ID, TEAM_ID, mint=broken)
    async with client(auth, apns_standin.url, pki) as apns:
        result = await apns.send(push())
        assert (result.outcome, result.status) == (Outcome.AUTH_RENEW, None)
        assert result.detail == (
            "no provider JWT to send (cannot make a provider JWT: cannot start the JWT signer"
            " (/nowhere/python): No such file)"
        )
        assert apns.auth_problem == auth.problem
        assert apns_standin.requests_received == 0


@pytest.mark.asyncio
async def test_too_many_token_updates_keeps_the_jwt(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    apns_standin.token_update_limit = 1  # one JWT per connection
    clock = Clock(time.time() - 1300)
    auth = token_auth(pki, clock, refresh_after=1200)
    async with client(auth, apns_standin.url, pki) as apns:
        assert (await apns.send(push())).outcome is Outcome.DELIVERED
        clock.now += 1250  # time for a new JWT: one too many for this connection
        await current(auth)  # made at once (in the daemon: in the background)
        result = await apns.send(push())
        assert (result.outcome, result.reason) == (
            Outcome.AUTH_BACKOFF,
            "TooManyProviderTokenUpdates",
        )
        held = auth.authorization()
        clock.now += 600
        assert auth.authorization() == held  # not minted again meanwhile


@pytest.mark.asyncio
async def test_delegated_jwt_from_the_cloud(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    auth = DelegatedAuth()
    async with client(auth, apns_standin.url, pki) as apns:
        waiting = await apns.send(push())
        assert waiting.outcome is Outcome.AUTH_RENEW
        assert waiting.status is None
        assert apns_standin.requests_received == 0  # nothing sent without a JWT
        iat = int(time.time())
        auth.set_token(provider_jwt(pki, iat=iat), iat)
        assert (await apns.send(push())).outcome is Outcome.DELIVERED
        assert apns.status().auth == "delegated"


@pytest.mark.asyncio
@pytest.mark.parametrize("form", ["pem", "p12"])
async def test_client_certificate_the_server_requires(
    pki: TestPki,
    tmp_path: Path,
    form: str,
) -> None:
    if form == "pem":
        auth = CertificateAuth(pki.client.combined, None)
    else:
        auth = CertificateAuth(make_p12(pki.client, tmp_path, "open sesame"), b"open sesame")
    async with (
        ApnsStandIn(
            certfile=pki.server.cert, keyfile=pki.server.key, topic=TOPIC, client_ca=pki.ca.cert
        ) as standin,
        client(auth, standin.url, pki) as apns,
    ):
        result = await apns.send(push())
        assert result.outcome is Outcome.DELIVERED
        [received] = standin.received
        assert "authorization" not in received.headers
        assert apns.status().auth == "certificate"


@pytest.mark.asyncio
async def test_no_client_certificate_where_one_is_required(pki: TestPki) -> None:
    async with (
        ApnsStandIn(
            certfile=pki.server.cert, keyfile=pki.server.key, topic=TOPIC, client_ca=pki.ca.cert
        ) as standin,
        client(token_auth(pki), standin.url, pki) as apns,
    ):
        result = await apns.send(push())
        assert result.outcome is Outcome.TRANSPORT
        assert standin.requests_received == 0
