"""The MQTT payloads (built and parsed) and the durable outgoing queue, without a broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import jwt
import pytest

from edgebell.cloud.messages import (
    OFFLINE,
    BadCommand,
    cmd_reply,
    delivery_message,
    feedback_message,
    hello_message,
    parse_command,
    parse_hello,
    parse_provider_token,
    ring_message,
    status_online,
)
from edgebell.cloud.outgoing import OutgoingQueue
from edgebell.cloud.topics import Topics, gateway_of
from edgebell.errors import CloudError
from edgebell.outbox.dispatcher import DeliveryReport, Feedback
from edgebell.outbox.store import OutboxStore
from edgebell.rings import Ring
from testkit.pki import TestPki


def test_status_ring_delivery_and_feedback_carry_the_contract_fields() -> None:
    status = json.loads(
        status_online(
            version="1.0",
            since=0.0,
            tokens_ver=7,
            queue=2,
            refused_lists=1,
            last_refusal="older than the list in use",
        )
    )
    assert status["state"] == "online"
    assert status["since"] == "1970-01-01T00:00:00.000Z"
    assert (status["version"], status["tokens_ver"], status["queue"]) == ("1.0", 7, 2)
    assert json.loads(OFFLINE) == {"state": "offline"}

    ring = json.loads(ring_message(Ring("r-1", "front", "Front door", 1.5, presses=3)))
    assert ring == {
        "ring_id": "r-1",
        "button": "front",
        "at": "1970-01-01T00:00:01.500Z",
        "presses": 3,
        "manual": False,
    }
    delivery = json.loads(delivery_message(DeliveryReport("r-1", 2, 1, 0, 0, 1, final=True)))
    assert {k: delivery[k] for k in ("ring_id", "delivered", "failed", "queued", "expired")} == {
        "ring_id": "r-1",
        "delivered": 2,
        "failed": 1,
        "queued": 0,
        "expired": 0,
    }
    feedback = json.loads(feedback_message(Feedback("ab" * 32, 410, "Unregistered", 123, 7)))
    assert feedback == {
        "token": "ab" * 32,
        "status": 410,
        "reason": "Unregistered",
        "timestamp": 123,
        "ver": 7,
    }
    assert json.loads(cmd_reply("c1", True, "pong", version="1.0")) == {
        "id": "c1",
        "ok": True,
        "detail": "pong",
        "version": "1.0",
    }


def test_commands_are_parsed_and_checked() -> None:
    assert parse_command(b'{"id": "1", "cmd": "ping"}').cmd == "ping"
    ring = parse_command(b'{"id": "2", "cmd": "ring", "button": "front"}')
    assert (ring.cmd, ring.button) == ("ring", "front")
    token = "AB" * 32
    push = parse_command(json.dumps({"id": "3", "cmd": "test-push", "token": token}).encode())
    assert push.token == token.lower()
    assert parse_command(b'{"id": "4", "cmd": "test-push"}').token is None
    assert parse_command(b'{"id": "5", "cmd": "resync"}').cmd == "resync"


@pytest.mark.parametrize(
    ("data", "command_id"),
    [
        (b"nonsense", None),
        (b"[1]", None),
        (b'{"cmd": "ping"}', None),
        (b'{"id": 5, "cmd": "ping"}', None),
        (b'{"id": "6", "cmd": "reboot"}', "6"),
        (b'{"id": "7", "cmd": "ring"}', "7"),
        (b'{"id": "8", "cmd": "test-push", "token": "xyz"}', "8"),
    ],
)
def test_bad_commands_say_why_and_keep_their_id(data: bytes, command_id: str | None) -> None:
    with pytest.raises(BadCommand) as info:
        parse_command(data)
    assert info.value.command_id == command_id


def test_the_fleet_jwt_message_is_checked(pki: TestPki) -> None:
    key = pki.auth_key.load_private_key()
    iat = int(time.time())
    token = jwt.encode({"iss": "T", "iat": iat}, key, algorithm="ES256", headers={"kid": "K"})
    parsed = parse_provider_token(json.dumps({"jwt": token, "iat": iat}).encode())
    assert (parsed.jwt, parsed.iat) == (token, iat)
    assert token not in repr(parsed)
    for bad in (
        b"nonsense",
        json.dumps({"jwt": token}).encode(),
        json.dumps({"jwt": "abc", "iat": iat}).encode(),
        json.dumps({"jwt": token, "iat": iat + 1}).encode(),  # not the JWT's own iat
        json.dumps({"jwt": jwt.encode({"iat": iat}, "s" * 32, "HS256"), "iat": iat}).encode(),
    ):
        with pytest.raises(CloudError):
            parse_provider_token(bad)


class _Disk:
    """What the queue writes behind, as the outbox store would keep it."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, bytes]] = {}

    def add_outgoing(self, seq: int, suffix: str, payload: bytes) -> None:
        self.rows[seq] = (suffix, payload)

    def remove_outgoing(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self.rows.pop(seq, None)


def test_the_outgoing_queue_keeps_order_and_forgets_only_what_was_acknowledged() -> None:
    disk = _Disk()
    queue = OutgoingQueue(disk)
    for n in range(5):
        queue.put("ring", b"%d" % n)
    batch = queue.head(3)
    assert [i.payload for i in batch] == [b"0", b"1", b"2"]
    queue.done(batch)
    assert [p for _, p in disk.rows.values()] == [b"3", b"4"]
    restored = OutgoingQueue(_Disk())
    restored.restore((seq, suffix, payload) for seq, (suffix, payload) in disk.rows.items())
    restored.put("delivery", b"5")
    assert [i.payload for i in restored.head(10)] == [b"3", b"4", b"5"]
    assert [i.seq for i in restored.head(10)] == sorted(i.seq for i in restored.head(10))


def test_an_overfull_queue_drops_the_oldest() -> None:
    disk = _Disk()
    queue = OutgoingQueue(disk, limit=3)
    for n in range(5):
        queue.put("ring", b"%d" % n)
    assert [i.payload for i in queue.head(10)] == [b"2", b"3", b"4"]
    assert queue.dropped == 2
    assert len(disk.rows) == 3


def test_the_outbox_database_keeps_the_queue_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    store = OutboxStore(path)
    store.open()
    store.start()
    queue = OutgoingQueue(store)
    for n in range(3):
        queue.put("ring", b"%d" % n)
    queue.done(queue.head(1))
    store.close()
    again = OutboxStore(path)
    again.open()
    assert [(s, p) for _, s, p in again.load_outgoing()] == [("ring", b"1"), ("ring", b"2")]
    again.close()


def test_hello_carries_the_contract_fields_and_the_cloud_reads_it_back() -> None:
    payload = hello_message(version="1.2", tokens_ver=7, jwt_iat=None, at=1.5)
    assert json.loads(payload) == {
        "version": "1.2",
        "tokens_ver": 7,
        "jwt_iat": None,
        "at": "1970-01-01T00:00:01.500Z",
    }
    hello = parse_hello(payload)
    assert (hello.version, hello.tokens_ver, hello.jwt_iat) == ("1.2", 7, None)
    assert hello.at.timestamp() == 1.5
    # The cloud answers with the list only when the gateway's ver is not the current one.
    assert not hello.wants_list(7)
    assert hello.wants_list(8)
    assert not hello.wants_list(None)
    fresh = parse_hello(hello_message(version="1.2", tokens_ver=None, jwt_iat=5, at=0.0))
    assert fresh.wants_list(1)
    assert fresh.jwt_iat == 5


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"[]", "not a JSON object"),
        (b"{", "not JSON"),
        (b'{"tokens_ver": 1, "jwt_iat": null, "at": "2026-01-01T00:00:00Z"}', "version"),
        (b'{"version": "1", "tokens_ver": "7", "at": "2026-01-01T00:00:00Z"}', "tokens_ver"),
        (b'{"version": "1", "tokens_ver": true, "at": "2026-01-01T00:00:00Z"}', "tokens_ver"),
        (b'{"version": "1", "jwt_iat": -1, "at": "2026-01-01T00:00:00Z"}', "jwt_iat"),
        (b'{"version": "1", "tokens_ver": 1, "at": "yesterday"}', "ISO 8601"),
        (b'{"version": "1", "tokens_ver": 1}', "ISO 8601"),
        (b'{"version": "' + b"x" * 140_000 + b'"}', "128 KB"),
    ],
)
def test_a_hello_that_breaks_the_contract_is_refused_with_the_reason(
    payload: bytes, complaint: str
) -> None:
    with pytest.raises(CloudError, match=complaint):
        parse_hello(payload)


def test_the_cloud_finds_the_gateway_of_a_hello_topic() -> None:
    topics = Topics("edgebell", "gw-1")
    assert (topics.hello, topics.apns_jwt) == ("edgebell/gw-1/hello", "edgebell/gw-1/apns-jwt")
    assert gateway_of("edgebell/gw-1/hello", "edgebell", "hello") == "gw-1"
    assert gateway_of("edgebell/gw-1/ring", "edgebell", "hello") is None
    assert gateway_of("other/gw-1/hello", "edgebell", "hello") is None
    assert gateway_of("edgebell/a/b/hello", "edgebell", "hello") is None
    assert gateway_of("edgebell//hello", "edgebell", "hello") is None
