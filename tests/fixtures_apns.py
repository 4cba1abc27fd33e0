"""Pytest fixtures for talking to the APNs stand-in: a session PKI and running stand-ins.

Import what you use into a test module::

    from fixtures_apns import pki, apns_standin  # noqa: F401
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec

from testkit.apns_server import ApnsStandIn, StandInThread
from testkit.pki import TestPki, make_test_pki

TOPIC = "com.example.doorbell"
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
GATEWAY_ID = "gw-test"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """CA, loopback server cert, client cert CN "gw-test", APNs key ABC123DEFG, team DEF123GHIJ."""
    return make_test_pki(
        tmp_path_factory.mktemp("pki"), gateway_id=GATEWAY_ID, key_id=KEY_ID, team_id=TEAM_ID
    )


@pytest_asyncio.fixture
async def apns_standin(pki: TestPki) -> AsyncIterator[ApnsStandIn]:
    """A running stand-in on 127.0.0.1 that trusts the session's APNs key, topic TOPIC."""
    async with ApnsStandIn(
        certfile=pki.server.cert,
        keyfile=pki.server.key,
        topic=TOPIC,
        auth_keys=pki.auth_key.auth_keys(),
    ) as standin:
        yield standin


@pytest.fixture
def apns_standin_thread(pki: TestPki) -> Iterator[StandInThread]:
    """The same stand-in, on its own loop in a background thread (for sync tests, subprocesses)."""
    with StandInThread.for_pki(pki, topic=TOPIC) as standin:
        yield standin


def provider_jwt(
    pki: TestPki,
    *,
    iat: int | None = None,
    kid: str = KEY_ID,
    iss: str = TEAM_ID,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> str:
    """A provider JWT as Apple wants it (ES256, kid, iss, iat); every part can be spoiled."""
    return jwt.encode(
        {"iss": iss, "iat": int(time.time()) if iat is None else iat},
        key if key is not None else pki.auth_key.load_private_key(),
        algorithm="ES256",
        headers={"kid": kid},
    )
