"""The registry's parts without processes: lists, versions, SQLite operations, auth, parsing."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebell.cloud import tools
from edgebell.cloud.tokenlist import verify_token_list
from edgebell.errors import BadRequest, ConfigError, Conflict, NotFound, Unauthorised
from edgebell.registry import inbound, lists
from edgebell.registry.auth import Authenticator, AuthRequest, Principal
from edgebell.registry.config import load_registry_config
from edgebell.registry.model import Phone, Share
from edgebell.registry.operations import Operations, Retention, summary
from edgebell.registry.store import open_database
from testkit.gateway import random_token
from testkit.pki import TestPki

GW = "gw-test"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ops(tmp_path: Path, pki: TestPki, clock: Clock) -> Iterator[Operations]:
    key = tools.load_signing_key(pki.token_list_key.private_key)
    operations = Operations(
        open_database(f"sqlite:///{tmp_path / 'registry.db'}"),
        key,
        clock=clock,
        retention=Retention(events_s=3600, events_per_gateway=3, removed_s=3600),
    )
    yield operations
    operations.db.close()


def test_the_list_is_the_owners_phones_and_each_shared_users_per_button() -> None:
    phones = {
        "alice": [Phone("bb" * 16, "alice", "sandbox", 1)],
        "bob": [Phone("aa" * 16, "bob", "production", 2)],
        "carol": [Phone("cc" * 16, "carol", "sandbox", 3)],
    }
    shares = [Share("bob", ("front",)), Share("alice", ())]  # a share of the owner is ignored
    entries = lists.authorised("alice", shares, phones)
    assert [(e.token, e.user, e.buttons) for e in entries] == [
        ("aa" * 16, "bob", ("front",)),
        ("bb" * 16, "alice", None),
    ]


def test_ver_is_epoch_ms_but_never_at_or_below_the_last() -> None:
    assert lists.next_ver(100, 5_000) == 5_000
    assert lists.next_ver(5_000, 5_000) == 5_001
    assert lists.next_ver(9_000, 5_000) == 9_001  # the clock stepped back


def test_a_change_signs_a_list_the_gateway_accepts(
    ops: Operations, pki: TestPki, clock: Clock
) -> None:
    token = random_token()
    ops.register_phone(None, "alice", token, "production")
    change = ops.put_gateway(None, GW, "alice")
    (published,) = change.lists
    assert published.ver == int(clock.now * 1000)
    key = tools.load_verify_key(pki.token_list_key.public_key)
    token_list = verify_token_list(published.jws.encode(), key, GW)
    assert [(t.token, t.env, t.user) for t in token_list.tokens] == [(token, "production", "alice")]


def test_nothing_new_is_signed_when_the_list_does_not_change(ops: Operations) -> None:
    token = random_token()
    ops.register_phone(None, "alice", token, "sandbox", 1000)
    ops.put_gateway(None, GW, "alice")
    assert ops.register_phone(None, "alice", token, "sandbox", 1000).lists == ()
    assert ops.put_gateway(None, GW, "alice").lists == ()
    assert ops.register_phone(None, "nobody-shared", random_token(), "sandbox").lists == ()


def test_a_phone_moving_to_another_user_changes_both_users_gateways(
    ops: Operations, clock: Clock
) -> None:
    token = random_token()
    ops.register_phone(None, "alice", token, "sandbox")
    ops.register_phone(None, "bob", random_token(), "sandbox")
    ops.put_gateway(None, "gw-a", "alice")
    ops.put_gateway(None, "gw-b", "bob")
    clock.now += 1
    change = ops.register_phone(None, "bob", token, "sandbox")
    assert sorted(p.gateway for p in change.lists) == ["gw-a", "gw-b"]
    assert ops.gateway_view(None, "gw-a")["phones"] == []
    assert len(ops.gateway_view(None, "gw-b")["phones"]) == 2


def test_a_list_too_large_to_sign_is_a_conflict_and_nothing_is_half_applied(
    ops: Operations,
) -> None:
    for n in range(5):
        for _ in range(100):
            ops.register_phone(None, f"user{n}", random_token(100), "sandbox")
    ops.put_gateway(None, GW, "user0")
    for n in range(1, 3):
        ops.share(None, GW, f"user{n}")
    before = ops.gateway_view(None, GW)
    with pytest.raises(Conflict, match="cannot be signed"):
        ops.share(None, GW, "user3")
    assert ops.gateway_view(None, GW) == before


def test_users_acting_for_themselves_see_and_change_only_their_own(ops: Operations) -> None:
    ops.register_phone("alice", "alice", random_token(), "sandbox")
    ops.register_phone("bob", "bob", random_token(), "sandbox")
    ops.put_gateway("alice", GW, "alice")
    with pytest.raises(NotFound):
        ops.register_phone("bob", "alice", random_token(), "sandbox")
    with pytest.raises(NotFound):
        ops.put_gateway("bob", GW, "bob")  # taking alice's gateway
    with pytest.raises(NotFound):
        ops.gateway_view("bob", GW)
    with pytest.raises(NotFound):
        ops.share("bob", GW, "bob")
    ops.share("alice", GW, "bob")
    assert ops.gateway_view("bob", GW)["owner"] == "alice"  # shared with him: he sees it
    with pytest.raises(NotFound):
        ops.removed("bob")
    ops.unshare("bob", GW, "bob")  # he may leave a share
    with pytest.raises(NotFound):
        ops.gateway_view("bob", GW)


def test_the_fleet_jwt_is_minted_at_most_every_20_minutes(ops: Operations, clock: Clock) -> None:
    minted: list[int] = []

    def mint(iat: int) -> str:
        minted.append(iat)
        return f"jwt-{iat}"

    first = ops.fleet_jwt(mint, min_age_s=1200)
    clock.now += 1199
    assert ops.fleet_jwt(mint, min_age_s=1200) == (first[0], first[1], False)
    clock.now += 1
    assert ops.fleet_jwt(mint, min_age_s=1200)[2] is True
    assert len(minted) == 2
    assert minted[1] - minted[0] == 1200


def test_events_are_kept_per_gateway_and_for_a_bounded_time(ops: Operations, clock: Clock) -> None:
    ops.register_phone(None, "alice", random_token(), "sandbox")
    ops.put_gateway(None, GW, "alice")
    for n in range(5):
        clock.now += 1
        ring = inbound.RingReport(f"r{n}", "front", "2026-12-06T14:05:00.000Z", 1, False)
        assert ops.record_ring(GW, ring)
    ops.record_delivery(GW, inbound.DeliveryCounts("r4", 3, 1, 0, 0, 0, True))
    rings = ops.events(None, GW)["rings"]
    assert [r["ring_id"] for r in rings] == ["r4", "r3", "r2"]
    assert rings[0]["summary"] == "rang at 14:05, reached 3 of 4 phones"
    assert not ops.record_ring("gw-unknown", ring)
    clock.now += 3601
    assert ops.prune() == 3
    assert ops.events(None, GW)["rings"] == []


def test_summary_says_what_a_person_wants_to_know() -> None:
    at = "2026-12-06T14:05:09.000Z"
    assert summary(at, None) == "rang at 14:05, no delivery report yet"
    counts = {"delivered": 1, "failed": 0, "queued": 2, "expired": 0, "removed": 0}
    assert summary(at, counts) == "rang at 14:05, reached 1 of 3 phones (2 still queued)"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"[]", "not a JSON object"),
        (b'{"token": "zz", "status": 410, "reason": "x"}', "token must be hex"),
        (b'{"token": "' + b"ab" * 16 + b'", "status": "410", "reason": "x"}', "status"),
        (b'{"token": "' + b"ab" * 16 + b'", "status": 410, "reason": 5}', "reason"),
        (b'{"token": "' + b"ab" * 16 + b'", "status": 410, "reason": "", "ver": -1}', "ver"),
    ],
)
def test_feedback_that_breaks_the_contract_is_refused(payload: bytes, error: str) -> None:
    with pytest.raises(inbound.BadMessage, match=error):
        inbound.parse_feedback(payload)


def test_rings_and_deliveries_are_parsed_as_the_gateway_sends_them() -> None:
    ring = inbound.parse_ring(
        b'{"ring_id": "r1", "button": "front", "at": "2026-12-06T14:05:00.000Z",'
        b' "presses": 2, "manual": true}'
    )
    assert ring == inbound.RingReport("r1", "front", "2026-12-06T14:05:00.000Z", 2, True)
    with pytest.raises(inbound.BadMessage, match="at must be"):
        inbound.parse_ring(b'{"ring_id": "r1", "button": "f", "at": "noon", "presses": 1}')
    counts = inbound.parse_delivery(
        b'{"ring_id": "r1", "delivered": 3, "failed": 1, "queued": 0, "expired": 0}'
    )
    assert (counts.delivered, counts.removed, counts.final) == (3, 0, True)


def test_input_checks_name_what_is_wrong(ops: Operations) -> None:
    with pytest.raises(BadRequest, match="hex"):
        ops.register_phone(None, "alice", "nothex", "sandbox")
    with pytest.raises(BadRequest, match="env"):
        ops.register_phone(None, "alice", random_token(), "prod")
    with pytest.raises(BadRequest, match="user id"):
        ops.register_phone(None, "a/b", random_token(), "sandbox")
    with pytest.raises(BadRequest, match="future"):
        ops.register_phone(None, "alice", random_token(), "sandbox", 10**15)


# -- authentication ---------------------------------------------------------------------


def session_hook(request: AuthRequest) -> Principal | None:
    """A maker's own user auth, as docs/cloud.md shows it: a session token names one user."""
    sessions = {"session-of-bob": "bob"}
    user = sessions.get(request.bearer or "")
    return None if user is None else Principal(f"session of {user}", user)


def _request(bearer: str | None) -> AuthRequest:
    headers = {} if bearer is None else {"authorization": f"Bearer {bearer}"}
    return AuthRequest("GET", "/v1/gateways/gw", headers)


def test_static_tokens_come_from_the_file_and_are_re_read_when_it_changes(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "api-tokens"
    tokens.write_text("# deployment tokens\nfirst-token\n\n")
    tokens.chmod(0o600)
    auth = Authenticator(tokens)
    assert asyncio.run(auth.authenticate(_request("first-token"))).user is None
    for bad in (None, "", "first", "first-token2", "# deployment tokens"):
        with pytest.raises(Unauthorised):
            asyncio.run(auth.authenticate(_request(bad)))
    tokens.write_text("second-token\n")
    with pytest.raises(Unauthorised):
        asyncio.run(auth.authenticate(_request("first-token")))
    assert asyncio.run(auth.authenticate(_request("second-token"))).name == "api token"


def test_a_makers_hook_vouches_for_one_user(tmp_path: Path) -> None:
    auth = Authenticator(None, f"{__name__}:session_hook")
    principal = asyncio.run(auth.authenticate(_request("session-of-bob")))
    assert principal == Principal("session of bob", "bob")
    with pytest.raises(Unauthorised):
        asyncio.run(auth.authenticate(_request("session-of-mallory")))


def test_every_list_entry_keeps_the_contract_shape(ops: Operations, pki: TestPki) -> None:
    token = random_token()
    ops.register_phone(None, "alice", random_token(), "sandbox", 5)
    ops.register_phone(None, "bob", token, "production", 7)
    ops.put_gateway(None, GW, "alice")
    (published,) = ops.share(None, GW, "bob", ["front", "back", "front"]).lists
    payload = published.jws.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(claims) == {"aud", "ver", "iat", "tokens"}
    bob = next(t for t in claims["tokens"] if t["user"] == "bob")
    assert bob == {
        "token": token,
        "env": "production",
        "user": "bob",
        "registered_at": 7,
        "buttons": ["back", "front"],
    }


def test_the_example_config_loads_as_documented() -> None:
    config = load_registry_config(Path(__file__).parent.parent / "config/registry.example.yaml")
    assert config.database == "sqlite:///var/lib/edgebell-cloud/registry.db"
    assert config.mqtt is not None
    assert config.mqtt.shared_group == "edgebell-registry"
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8780)
    assert config.apns is None
    assert config.retention == Retention(30 * 86400, 200, 90 * 86400)


def test_config_errors_name_the_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("signing_key: k\ndatabase: mysql://x\n")
    with pytest.raises(ConfigError, match=r"registry.yaml:2: database: must be sqlite"):
        load_registry_config(path)
    path.write_text("signing_key: k\nhttp:\n  listen: 127.0.0.1:8780\n  tokens: x\n")
    with pytest.raises(ConfigError, match=r":4: http.tokens: unknown key"):
        load_registry_config(path)


def test_serve_refuses_a_signing_key_that_is_not_ed25519_as_a_config_error(
    tmp_path: Path, pki: TestPki
) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(
        f"database: sqlite:///{tmp_path / 'r.db'}\nsigning_key: {pki.auth_key.private_key}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "edgebell", "cloud", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "signing_key" in result.stderr
    assert "not an Ed25519 private key" in result.stderr
