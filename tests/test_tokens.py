"""Which phones a ring goes to: Apple's refusals, where they hold, and the one device-token rule."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from fixtures_apns import apns_standin, pki
from fixtures_service import edit_config, reload

from edgebell.apns.client import ApnsClient
from edgebell.apns.model import Environment, Outcome, PushRequest
from edgebell.cloud.messages import BadCommand, parse_command
from edgebell.cloud.tokenlist import TokenListRefused, parse_claims
from edgebell.config import load_config
from edgebell.errors import ConfigError
from edgebell.outbox.store import OutboxStore
from edgebell.rings import new_id
from edgebell.tokens import AuthorisedToken, Suppression, TokenBook, is_device_token
from testkit.apns_server import ApnsStandIn
from testkit.gateway import DaemonProcess, GatewayFiles
from testkit.pki import TestPki
from testkit.signing import in_process_token_auth
from testkit.standin_thread import StandInThread

FIXTURES = (apns_standin, pki)

TOKEN = "ab" * 32
TOPIC = "com.example.doorbell"


def book_with(entry: AuthorisedToken, suppression: Suppression, topic: str = TOPIC) -> TokenBook:
    book = TokenBook(topic=topic)
    book.replace([entry], None)
    book.suppress(suppression)
    return book


# -- where a refusal holds ------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["BadDeviceToken", "DeviceTokenNotForTopic"])
def test_a_400_holds_only_for_the_environment_and_topic_apple_refused(reason: str) -> None:
    refused = Suppression(TOKEN, 400, reason, 1_000, env="production", topic=TOPIC)
    same = book_with(AuthorisedToken(TOKEN, "production"), refused)
    assert not same.is_active(TOKEN)
    assert same.suppressed_count == 1
    assert same.for_button("front") == []

    other_env = book_with(AuthorisedToken(TOKEN, "sandbox"), refused)
    assert other_env.is_active(TOKEN)
    assert other_env.suppressed_count == 0
    assert [t.token for t in other_env.for_button("front")] == [TOKEN]

    other_topic = book_with(AuthorisedToken(TOKEN, "production"), refused, topic="com.example.x")
    assert other_topic.is_active(TOKEN)


def test_a_400_without_its_environment_and_topic_gets_one_more_try() -> None:
    # Recorded before suppressions said where Apple refused the token.
    legacy = Suppression(TOKEN, 400, "BadDeviceToken", 1_000)
    assert book_with(AuthorisedToken(TOKEN, "production"), legacy).is_active(TOKEN)


@pytest.mark.parametrize("reason", ["Unregistered", "ExpiredToken"])
def test_a_410_holds_everywhere_until_the_phone_registers_again(reason: str) -> None:
    gone = Suppression(TOKEN, 410, reason, 1_000, env="production", topic=TOPIC)
    for env in ("production", "sandbox"):
        assert not book_with(AuthorisedToken(TOKEN, env), gone).is_active(TOKEN)
        assert not book_with(AuthorisedToken(TOKEN, env), gone, topic="other").is_active(TOKEN)
    assert not book_with(AuthorisedToken(TOKEN, "sandbox", registered_at=1_000), gone).is_active(
        TOKEN
    )
    assert book_with(AuthorisedToken(TOKEN, "sandbox", registered_at=1_001), gone).is_active(TOKEN)


def test_a_400_where_it_holds_still_yields_to_a_newer_registration() -> None:
    refused = Suppression(TOKEN, 400, "BadDeviceToken", 1_000, env="sandbox", topic=TOPIC)
    assert not book_with(AuthorisedToken(TOKEN, "sandbox", registered_at=999), refused).is_active(
        TOKEN
    )
    assert book_with(AuthorisedToken(TOKEN, "sandbox", registered_at=1_001), refused).is_active(
        TOKEN
    )


# -- the outbox keeps where a refusal holds ---------------------------------------------------


def test_suppressions_keep_environment_and_topic_across_a_restart(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "outbox.sqlite3")
    store.open()
    store.start()
    store.suppress(Suppression(TOKEN, 400, "BadDeviceToken", 5, "production", TOPIC))
    store.suppress(Suppression("cd" * 8, 410, "Unregistered", 6, "sandbox", TOPIC))
    store.close()
    store = OutboxStore(tmp_path / "outbox.sqlite3")
    store.open()
    try:
        assert sorted(store.load_suppressed(), key=lambda s: s.timestamp_ms) == [
            Suppression(TOKEN, 400, "BadDeviceToken", 5, "production", TOPIC),
            Suppression("cd" * 8, 410, "Unregistered", 6, "sandbox", TOPIC),
        ]
    finally:
        store.close()


def test_an_older_outbox_is_migrated_and_its_suppressions_kept(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE suppressed (token TEXT PRIMARY KEY, status INTEGER NOT NULL,"
        " reason TEXT NOT NULL, timestamp_ms INTEGER NOT NULL);"
        f"INSERT INTO suppressed VALUES ('{TOKEN}', 410, 'Unregistered', 7);"
        "PRAGMA user_version=2;"
    )
    conn.close()
    store = OutboxStore(path)
    store.open()
    try:
        assert store.load_suppressed() == [Suppression(TOKEN, 410, "Unregistered", 7, None, None)]
        store.start()
        store.suppress(Suppression("cd" * 8, 400, "BadDeviceToken", 8, "sandbox", TOPIC))
        assert store.flush()
        assert store.health().ok
    finally:
        store.close()


# -- a wrong apns.environment, fixed, brings every phone back -----------------------------------


def test_phones_refused_under_a_wrong_environment_come_back_when_it_is_fixed(
    gateway_files: GatewayFiles, apns_standin_thread: StandInThread, phones: list[str]
) -> None:
    def set_environment(env: str) -> None:
        edit_config(gateway_files, lambda data: data["apns"].update(environment=env))

    def refused() -> int:
        return sum(r.status == 400 for r in apns_standin_thread.responses())

    # Installed with the wrong environment: Apple calls every token bad there.
    set_environment("production")
    apns_standin_thread.set(token_errors={t: (400, "BadDeviceToken") for t in phones})
    with DaemonProcess(gateway_files) as daemon:
        assert daemon.cli("ring", "front").returncode == 0
        apns_standin_thread.wait_for(lambda s: len(s.responses) >= len(phones), timeout=10)
        status = daemon.wait_status(lambda s: s["tokens"]["suppressed"] == len(phones))
        assert status["tokens"]["count"] == 0
    # A restart with the same mistake keeps them suppressed: nothing is pushed in vain.
    with DaemonProcess(gateway_files) as daemon:
        assert daemon.status()["tokens"] == {"count": 0, "ver": None, "suppressed": len(phones)}
        assert daemon.cli("ring", "front").returncode == 0
        assert refused() == len(phones)

        # The installer fixes the environment; Apple's sandbox knows these phones.
        apns_standin_thread.set(token_errors={})
        set_environment("sandbox")
        status = reload(daemon)
        assert status["tokens"] == {"count": len(phones), "ver": None, "suppressed": 0}
        assert daemon.cli("ring", "front").returncode == 0
        apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
    assert sorted(p.token for p in apns_standin_thread.received()) == sorted(phones)
    assert refused() == len(phones)


# -- one rule for what a device token is ------------------------------------------------------

TOKEN_SHAPES = [
    ("ab" * 8, True),  # 16 digits: the shortest accepted
    ("abc" * 6, True),  # 18 digits: 9 whole bytes
    ("AB" * 32, True),
    ("ab" * 100, True),  # 200 digits: the longest
    ("ab" * 7, False),
    ("ab" * 101, False),
    ("ab" * 8 + "a", False),  # odd: not whole bytes
    ("ab" * 8 + "zz", False),
    ("not/hex" * 3, False),
]


def _listed(text: str) -> bool:
    entry = {"token": text, "env": "sandbox", "user": "u", "registered_at": 1}
    try:
        parse_claims({"ver": 1, "aud": "gw-1", "iat": 1, "tokens": [entry]}, "gw-1")
    except TokenListRefused:
        return False
    return True


def _commanded(text: str) -> bool:
    document = {"id": "1", "cmd": "test-push", "token": text}
    try:
        parse_command(json.dumps(document).encode())
    except BadCommand:
        return False
    return True


def _configured(text: str, tmp_path: Path) -> bool:
    config = tmp_path / "config.yaml"
    config.write_text(
        "gateway: {id: gw-1}\n"
        "radio: {port: /dev/null, protocol: lines}\n"
        "apns: {topic: com.example.doorbell, environment: sandbox, auth: {mode: delegated}}\n"
        "cloud: {url: 'mqtts://127.0.0.1:8883', ca_file: a, cert_file: b, key_file: c,"
        " token_list_key: d}\n"
        f"tokens: ['{text}']\n"
    )
    try:
        load_config(config, environ={})
    except ConfigError as exc:
        if "tokens[0]" not in str(exc):
            raise  # refused for something other than the token: the test is broken
        return False
    return True


@pytest.mark.parametrize(("text", "valid"), TOKEN_SHAPES)
def test_config_cloud_list_and_commands_agree_on_what_a_device_token_is(
    text: str, valid: bool, tmp_path: Path
) -> None:
    assert is_device_token(text) is valid
    assert _configured(text, tmp_path) is valid
    assert _listed(text) is valid
    assert _commanded(text) is valid


@pytest.mark.asyncio
async def test_the_client_refuses_a_token_the_config_would_refuse_without_asking_apple(
    pki: TestPki, apns_standin: ApnsStandIn
) -> None:
    auth = in_process_token_auth(
        pki.auth_key.private_key.read_bytes(), pki.auth_key.key_id, pki.auth_key.team_id
    )
    async with ApnsClient(auth=auth, host_override=apns_standin.url, ca_file=pki.ca.cert) as client:
        for text, valid in TOKEN_SHAPES:
            result = await client.send(
                PushRequest(
                    token=text,
                    environment=Environment.SANDBOX,
                    topic=TOPIC,
                    payload=b'{"aps":{"alert":"x"}}',
                    apns_id=new_id(),
                    collapse_id="c",
                    expiration=int(time.time()) + 60,
                )
            )
            assert (text, result.outcome is not Outcome.FAILED) == (text, valid)
    assert apns_standin.requests_received == sum(valid for _, valid in TOKEN_SHAPES)
