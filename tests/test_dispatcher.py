"""The dispatcher in process: real APNs client, real TLS HTTP/2 stand-in, real SQLite outbox."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from fixtures_apns import apns_standin, pki

from edgebell.apns.client import ApnsClient
from edgebell.apns.model import Environment
from edgebell.notifier import Notifier, Template
from edgebell.outbox.dispatcher import DeliveryReport, Dispatcher, Feedback
from edgebell.outbox.link import LinkState
from edgebell.outbox.store import OutboxStore
from edgebell.rings import Notification, Ring, new_id
from edgebell.tokens import AuthorisedToken, TokenBook
from testkit.apns_server import ApnsStandIn
from testkit.pki import TestPki
from testkit.signing import in_process_token_auth
from testkit.waiting import eventually

FIXTURES = (apns_standin, pki)

TOPIC = "com.example.doorbell"
NAMES = {"front": "Front door", "back": "Back door"}


class Harness:
    """A dispatcher wired as the daemon wires it, and what it reported."""

    def __init__(
        self,
        client: ApnsClient,
        state: Path,
        tokens: list[str],
        *,
        retry: tuple[float, float] = (0.05, 0.3),
    ) -> None:
        self.retry = retry
        self.book = TokenBook()
        self.book.replace([AuthorisedToken(t, "sandbox") for t in tokens], None)
        self.tokens = tokens
        self.store = OutboxStore(state / "outbox.sqlite3")
        self.store.open()
        self.store.start()
        self.notifier = Notifier(
            Template("Doorbell", "Someone is at the {button_name}", "default"),
            expiration=900,
            default_env="sandbox",
        )
        self.reports: list[DeliveryReport] = []
        self.feedback: list[Feedback] = []
        self.client = client
        self.dispatcher = self.make_dispatcher()
        client.on_lost = self.dispatcher.connection_lost  # as the daemon wires it

    def make_dispatcher(self) -> Dispatcher:
        return Dispatcher(
            sender=self.client,
            store=self.store,
            tokens=self.book,
            topic=TOPIC,
            retry_min=self.retry[0],
            retry_max=self.retry[1],
            collapse=lambda old, new: self.notifier.collapsed(old, new, NAMES[new.button]),
            on_report=self.reports.append,
            on_feedback=self.feedback.append,
        )

    def ring(self, button: str = "front", at: float | None = None) -> Ring:
        ring = Ring(new_id(), button, NAMES[button], time.time() if at is None else at)
        notifications = self.notifier.fan_out(ring, self.book.for_button(button))
        self.dispatcher.submit(notifications)
        return ring

    def final(self, ring: Ring) -> DeliveryReport | None:
        return next((r for r in self.reports if r.ring_id == ring.ring_id and r.final), None)

    def link_state(self, env: str = "sandbox") -> LinkState:
        return self.dispatcher._lanes[env].link.state


async def until(predicate: Callable[[], object], within: float = 10.0) -> None:
    await eventually(predicate, within, "condition not met in time")


def make_client(pki: TestPki, url: str, request_timeout: float = 5.0) -> ApnsClient:
    auth = in_process_token_auth(
        pki.auth_key.private_key.read_bytes(), pki.auth_key.key_id, pki.auth_key.team_id
    )
    return ApnsClient(
        auth=auth,
        host_override=url,
        ca_file=pki.ca.cert,
        connect_timeout=2.0,
        request_timeout=request_timeout,
        ping_interval=60.0,
    )


@pytest_asyncio.fixture
async def harness(
    pki: TestPki, apns_standin: ApnsStandIn, tmp_path: Path
) -> AsyncIterator[Harness]:
    async with make_client(pki, apns_standin.url, request_timeout=0.5) as client:
        h = Harness(client, tmp_path, [secrets.token_hex(32) for _ in range(3)])
        try:
            yield h
        finally:
            await h.dispatcher.drain(1.0)
            h.store.close()


@pytest_asyncio.fixture
async def patient(
    pki: TestPki, apns_standin: ApnsStandIn, tmp_path: Path
) -> AsyncIterator[Harness]:
    """A harness whose reconnect backoff (5-10 s) is far longer than anything else here."""
    async with make_client(pki, apns_standin.url, request_timeout=0.5) as client:
        h = Harness(client, tmp_path, [secrets.token_hex(32) for _ in range(3)], retry=(5, 10))
        try:
            yield h
        finally:
            await h.dispatcher.drain(1.0)
            h.store.close()


def bodies(standin: ApnsStandIn, token: str) -> list[str]:
    return [p.json()["aps"]["alert"]["body"] for p in standin.received if p.token == token]


@pytest.mark.asyncio
async def test_rings_while_apple_is_unreachable_collapse_into_one_push_per_phone_and_button(
    harness: Harness, apns_standin: ApnsStandIn
) -> None:
    apns_standin.set(refuse=True)
    first = harness.ring("front")
    await until(lambda: not harness.dispatcher.status().links.get("sandbox", True))
    later = [harness.ring("front"), harness.ring("front")]
    back = harness.ring("back")
    refused = apns_standin.refused
    await until(lambda: apns_standin.refused >= refused + 3)  # reconnects fail meanwhile
    assert apns_standin.requests_received == 0
    apns_standin.set(refuse=False)
    rings = [first, *later, back]
    await until(lambda: all(harness.final(r) for r in rings))
    last_at = time.strftime("%H:%M", time.localtime(later[-1].at))
    for token in harness.tokens:
        assert sorted(bodies(apns_standin, token)) == sorted(
            [f"3 rings at Front door, last at {last_at}", "Someone is at the Back door"]
        )
    front = [p for p in apns_standin.received if p.json()["edgebell"]["button"] == "front"]
    # The oldest ring's collapse id: a copy Apple might have shown is replaced, not joined.
    assert {p.headers["apns-collapse-id"] for p in front} == {first.ring_id}
    assert {p.json()["edgebell"]["ring_id"] for p in front} == {later[-1].ring_id}
    assert {p.json()["edgebell"]["rings"] for p in front} == {3}
    for r in rings:
        report = harness.final(r)
        assert report is not None
        assert (report.delivered, report.queued) == (3, 0)
    assert harness.dispatcher.status().collapsed == 6
    assert harness.dispatcher.status().pending == 0


@pytest.mark.asyncio
async def test_a_hung_apple_gets_one_probe_at_a_time_and_a_fresh_ring_goes_at_once(
    patient: Harness, apns_standin: ApnsStandIn
) -> None:
    harness = patient
    apns_standin.set(hang=True)
    first = harness.ring("front")
    await until(lambda: apns_standin.requests_received >= 3)
    # Every push times out (0.5 s): the link goes down, reconnects at once (PING works)
    # and lets exactly one probe through, which hangs too; then it backs off (5-10 s).
    await until(lambda: apns_standin.requests_received >= 4)
    await until(lambda: harness.dispatcher.status().in_flight == 0)
    # The probe's timeout put the link down; its loop now waits out 2.5-5 s of backoff and
    # the rows wait for it (not probing: nobody may send).
    assert harness.link_state() is LinkState.DOWN
    assert harness.dispatcher.status().pending == 3
    assert apns_standin.requests_received == 4
    # A fresh ring does not wait out that backoff: it is the next probe, now.
    second = harness.ring("front")
    await until(lambda: apns_standin.requests_received == 5, within=3.0)
    apns_standin.set(hang=False)
    third = harness.ring("front")  # Apple answers again: this ring opens the link
    await until(lambda: all(harness.final(r) for r in (first, second, third)), within=5)
    for token in harness.tokens:
        delivered = [p for p in apns_standin.received if p.token == token]
        assert len(delivered) == 1
        assert delivered[0].json()["edgebell"]["rings"] == 3
    assert harness.dispatcher.status().links == {"sandbox": True}


@pytest.mark.asyncio
async def test_too_many_requests_backs_off_for_that_phone_only(
    harness: Harness, apns_standin: ApnsStandIn
) -> None:
    slow = harness.tokens[0]
    apns_standin.set(token_errors={slow: (429, "TooManyRequests")})
    ring = harness.ring("front")
    await until(lambda: len(apns_standin.received) == 2)
    await until(lambda: sum(p.token == slow for p in apns_standin.responses) >= 2)
    apns_standin.set(token_errors={})
    await until(lambda: harness.final(ring))
    assert sorted(p.token for p in apns_standin.received) == sorted(harness.tokens)
    assert harness.dispatcher.status().links == {"sandbox": True}


@pytest.mark.asyncio
async def test_gone_tokens_are_suppressed_and_never_retried(
    harness: Harness, apns_standin: ApnsStandIn
) -> None:
    dead = harness.tokens[0]
    apns_standin.set(token_errors={dead: (410, "Unregistered")})
    first = harness.ring("front")
    await until(lambda: harness.final(first))
    second = harness.ring("front")
    await until(lambda: harness.final(second))
    assert [p.status for p in apns_standin.responses if p.token == dead] == [410]
    report = harness.final(first)
    assert report is not None
    assert (report.delivered, report.failed) == (2, 1)
    assert not harness.book.is_active(dead)


@pytest.mark.asyncio
async def test_restart_resumes_rows_and_drops_expired_ones_unsent(
    harness: Harness, apns_standin: ApnsStandIn, tmp_path: Path
) -> None:
    now = time.time()
    old = Ring(new_id(), "front", "Front door", now - 2000)  # expired: 900 s to live
    a = Ring(new_id(), "front", "Front door", now - 60)
    b = Ring(new_id(), "front", "Front door", now - 30)
    rows: list[Notification] = []
    for ring in (old, a, b):
        rows += harness.notifier.fan_out(ring, harness.book.active())
    harness.store.add(rows)
    assert harness.store.flush(5.0)

    harness.dispatcher.resume(harness.store.load_pending())
    await until(lambda: harness.dispatcher.status().pending == 0)
    assert len(apns_standin.received) == 3  # one per phone: a and b collapsed
    for push in apns_standin.received:
        assert push.headers["apns-collapse-id"] == a.ring_id
        assert push.json()["edgebell"]["rings"] == 2
    assert harness.dispatcher.status().expired == 3
    assert harness.store.flush(5.0)
    harness.store.close()
    again = OutboxStore(tmp_path / "outbox.sqlite3")
    again.open()
    assert again.load_pending() == []
    again.close()


@pytest.mark.asyncio
async def test_goaway_streams_are_resent_on_a_new_connection_without_duplicates(
    harness: Harness, apns_standin: ApnsStandIn
) -> None:
    many = [secrets.token_hex(32) for _ in range(60)]
    harness.book.replace([AuthorisedToken(t, "sandbox") for t in many], None)
    apns_standin.set(goaway_after=7)
    ring = harness.ring("front")
    await until(lambda: harness.final(ring), within=15)
    tokens = [p.token for p in apns_standin.received]
    assert sorted(tokens) == sorted(many)
    assert apns_standin.connections >= 60 // 7
    report = harness.final(ring)
    assert report is not None
    assert report.delivered == 60
    payloads = {json.loads(p.payload)["edgebell"]["ring_id"] for p in apns_standin.received}
    assert payloads == {ring.ring_id}


@pytest.mark.asyncio
async def test_a_ring_while_the_link_backs_off_is_tried_at_once(
    patient: Harness, apns_standin: ApnsStandIn
) -> None:
    apns_standin.set(refuse=True)
    patient.dispatcher.connect_failed(Environment.SANDBOX, "refused at start")
    assert patient.dispatcher.status().links == {"sandbox": False}
    await until(lambda: apns_standin.refused >= 1)  # the immediate retry; now 5-10 s backoff
    apns_standin.set(refuse=False)
    ring = patient.ring("back")
    await until(lambda: patient.final(ring), within=3.0)
    assert patient.dispatcher.status().links == {"sandbox": True}
    assert apns_standin.connections == 1


@pytest.mark.asyncio
async def test_a_reconnect_with_nothing_queued_opens_the_link(
    harness: Harness, apns_standin: ApnsStandIn
) -> None:
    apns_standin.set(refuse=True)
    harness.dispatcher.connect_failed(Environment.SANDBOX, "refused at start")
    await until(lambda: apns_standin.refused >= 2)
    assert harness.dispatcher.status().links == {"sandbox": False}  # status: APNs unreachable
    apns_standin.set(refuse=False)
    # Back without a push to probe with: the link opens (status healthy again) by itself.
    await until(lambda: harness.dispatcher.status().links == {"sandbox": True}, within=5.0)
    assert apns_standin.requests_received == 0
    ring = harness.ring("front")
    await until(lambda: harness.final(ring))
    assert len(apns_standin.received) == 3


@pytest.mark.asyncio
async def test_an_absurd_410_timestamp_never_reaches_the_outbox(
    harness: Harness, apns_standin: ApnsStandIn
) -> None:
    dead = harness.tokens[0]
    apns_standin.set(token_errors={dead: (410, "Unregistered")}, unregistered_timestamp_ms=2**63)
    before_ms = time.time() * 1000
    ring = harness.ring("front")
    await until(lambda: harness.final(ring))
    assert [(f.status, f.timestamp_ms) for f in harness.feedback] == [(410, None)]
    # The outbox writer took the suppression (stamped with our clock) and keeps working.
    assert harness.store.flush(5.0)
    assert harness.store.health().ok
    [stored] = harness.store.load_suppressed()
    assert stored.token == dead
    assert before_ms <= stored.timestamp_ms <= time.time() * 1000
    later = harness.ring("back")
    await until(lambda: harness.final(later))
    assert harness.store.flush(5.0)
    assert harness.store.load_pending() == []


@pytest.mark.asyncio
async def test_an_abruptly_closing_front_end_costs_a_few_resends_per_connection(
    harness: Harness, apns_standin: ApnsStandIn
) -> None:
    many = [secrets.token_hex(32) for _ in range(150)]
    harness.book.replace([AuthorisedToken(t, "sandbox") for t in many], None)
    apns_standin.set(drop_after=37)  # reset as the 37th request comes in: no GOAWAY
    ring = harness.ring("front")
    await until(lambda: harness.final(ring), within=30)
    report = harness.final(ring)
    assert report is not None
    assert report.delivered == 150
    assert {p.token for p in apns_standin.received} == set(many)
    # Slow start after each reset: the requests that die are a window's worth, not every
    # push still queued.
    assert apns_standin.requests_received <= 3 * 150
