"""The APNs client against the stand-in: headers, the response table, streams, faults, pings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import hpack
import pytest
import pytest_asyncio
from fixtures_apns import TOPIC, apns_standin, pki

from edgebell.apns.client import ApnsClient
from edgebell.apns.client import request_headers as push_headers
from edgebell.apns.connection import ApnsConnection, StreamFailed
from edgebell.apns.model import Environment, Outcome, PushRequest, classify
from edgebell.apns.payload import build_payload
from edgebell.errors import ApnsTransportError
from edgebell.outbox.dispatcher import Dispatcher
from edgebell.outbox.store import OutboxStore
from edgebell.tokens import TokenBook
from testkit.apns_server import ApnsStandIn, server_ssl_context
from testkit.pki import TestPki, make_server_cert
from testkit.signing import in_process_token_auth
from testkit.waiting import eventually as wait_eventually

FIXTURES = (apns_standin, pki)  # pytest finds them by name in this module

PROD = Environment.PRODUCTION
SANDBOX = Environment.SANDBOX
WAIT = 5.0
PAYLOAD = build_payload(
    title="Doorbell",
    body="Someone is at the Front door",
    sound="default",
    thread_id="front",
    ring_id="ring-1",
    button="front",
    at="2024-05-01T14:05:00.000Z",
)


def token() -> str:
    return secrets.token_hex(32)


def push(
    tok: str | None = None, env: Environment = SANDBOX, payload: bytes = PAYLOAD
) -> PushRequest:
    return PushRequest(
        token=tok or token(),
        environment=env,
        topic=TOPIC,
        payload=payload,
        apns_id=str(uuid.uuid4()),
        collapse_id="ring-1",
        expiration=int(time.time()) + 900,
    )


def make_client(pki: TestPki, url: str, **kw: Any) -> ApnsClient:
    options: dict[str, Any] = {
        "auth": in_process_token_auth(
            pki.auth_key.private_key.read_bytes(), pki.auth_key.key_id, pki.auth_key.team_id
        ),
        "host_override": url,
        "ca_file": pki.ca.cert,
        "connect_timeout": WAIT,
        "request_timeout": WAIT,
        "ping_interval": 60.0,
    }
    options.update(kw)
    return ApnsClient(**options)


def engine(client: ApnsClient, state: Path, retry: tuple[float, float] = (1.0, 10.0)) -> Dispatcher:
    """The delivery engine over ``client``, wired as the daemon wires it: it, not the
    client, decides when a lost connection is opened again."""
    dispatcher = Dispatcher(
        sender=client,
        store=OutboxStore(state / "outbox.sqlite3"),
        tokens=TokenBook(),
        topic=TOPIC,
        retry_min=retry[0],
        retry_max=retry[1],
    )
    client.on_lost = dispatcher.connection_lost
    return dispatcher


@pytest_asyncio.fixture
async def client(pki: TestPki, apns_standin: ApnsStandIn) -> AsyncIterator[ApnsClient]:
    async with make_client(pki, apns_standin.url) as c:
        yield c


async def open_connection(pki: TestPki, port: int, **kw: Any) -> ApnsConnection:
    context = ssl.create_default_context(cafile=pki.ca.cert)
    context.set_alpn_protocols(["h2"])
    options: dict[str, Any] = {
        "ssl_context": context,
        "connect_timeout": WAIT,
        "ping_interval": 0,
        "ping_timeout": WAIT,
    }
    options.update(kw)
    return await ApnsConnection.open("127.0.0.1", port, **options)


def request_headers(standin: ApnsStandIn) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/3/device/" + token().encode()),
        (b":authority", f"127.0.0.1:{standin.port}".encode()),
        (b"apns-topic", TOPIC.encode()),
    ]


async def eventually(predicate: Callable[[], bool], within: float = WAIT) -> None:
    """Wait until ``predicate()`` holds, failing after ``within`` seconds."""
    await wait_eventually(predicate, within, "condition not met in time", interval=0.005)


# -- classification (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (200, None, Outcome.DELIVERED),
        (410, "Unregistered", Outcome.TOKEN_DEAD),
        (410, "ExpiredToken", Outcome.TOKEN_DEAD),
        (400, "BadDeviceToken", Outcome.TOKEN_DEAD),
        (400, "DeviceTokenNotForTopic", Outcome.TOKEN_DEAD),
        (400, "BadCollapseId", Outcome.FAILED),
        (400, "PayloadEmpty", Outcome.FAILED),
        (400, "TopicDisallowed", Outcome.FAILED),
        (400, None, Outcome.FAILED),
        (404, "BadPath", Outcome.FAILED),
        (405, "MethodNotAllowed", Outcome.FAILED),
        (413, "PayloadTooLarge", Outcome.FAILED),
        (403, "ExpiredProviderToken", Outcome.AUTH_RENEW),
        (403, "InvalidProviderToken", Outcome.AUTH_REFUSED),
        (403, "BadCertificate", Outcome.AUTH_REFUSED),
        (403, "BadCertificateEnvironment", Outcome.AUTH_REFUSED),
        (403, "MissingProviderToken", Outcome.AUTH_REFUSED),
        (403, None, Outcome.AUTH_REFUSED),
        (429, "TooManyRequests", Outcome.RETRY_TOKEN),
        (429, "TooManyProviderTokenUpdates", Outcome.AUTH_BACKOFF),
        (429, None, Outcome.RETRY_TOKEN),
        (500, "InternalServerError", Outcome.RETRY),
        (503, "ServiceUnavailable", Outcome.RETRY),
        (503, "Shutdown", Outcome.RETRY),
        (502, None, Outcome.RETRY),
        (599, None, Outcome.RETRY),
        (401, None, Outcome.FAILED),
        (418, "Teapot", Outcome.FAILED),
        (302, None, Outcome.FAILED),
        (100, None, Outcome.FAILED),
    ],
)
def test_classify_covers_the_design_table(
    status: int, reason: str | None, outcome: Outcome
) -> None:
    assert classify(status, reason) is outcome


# -- header compression (pure) ----------------------------------------------------------------


def test_header_blocks_decode_to_the_request_headers() -> None:
    # hpack's own encoder, as h2 drives it: only the client's choice of indexing matters.
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    jwt = b"bearer eyJ" + b"x" * 180
    blocks = []
    for ring in ("ring-1", "ring-1", "ring-1", "ring-2", "ring-2", "ring-1"):
        tok = token() + "ab" * 60  # longer than 127 bytes: multi-byte length prefix
        request = dataclasses.replace(push(tok), collapse_id=ring)
        headers = push_headers(
            request, (b":authority", b"api.push.apple.com"), (b"authorization", jwt)
        )
        block = encoder.encode(headers)
        decoded = list(decoder.decode(block, raw=True))
        assert decoded == [(bytes(n), bytes(v)) for n, v in headers]
        assert decoded[2] == (b":path", b"/3/device/" + tok.encode())
        # pseudo-headers stay ahead of regular ones
        assert [n for n, _ in decoded if n.startswith(b":")] == [n for n, _ in decoded[:4]]
        # The token and the apns-id never enter the dynamic table.
        entries = decoder.header_table.dynamic_entries
        assert all(tok.encode() not in value for _, value in entries)
        assert all(request.apns_id.encode() not in value for _, value in entries)
        blocks.append(block)
    # Once its headers are in the table, the shared part is a few index bytes: the JWT is
    # not on the wire again.
    assert len(blocks[2]) < len(blocks[0]) - 150
    assert jwt[10:40] not in blocks[2]
    encoder.header_table_size = 256  # the peer shrank its table: the update must lead
    decoder.max_allowed_table_size = 256
    headers = [(b":method", b"POST"), (b":path", b"/3/device/00"), (b"apns-id", b"1")]
    assert sorted(decoder.decode(encoder.encode(headers), raw=True)) == sorted(headers)
    assert sorted(decoder.decode(encoder.encode(headers), raw=True)) == sorted(headers)


# -- requests -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_delivered_with_exactly_the_contract_headers(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    request = push()
    result = await client.send(request)
    assert result.outcome is Outcome.DELIVERED
    assert (result.status, result.reason, result.apns_id) == (200, None, request.apns_id)
    assert result.request is request
    assert not result.unprocessed
    [received] = apns_standin.received
    assert received.token == request.token
    assert received.payload == PAYLOAD
    headers = dict(received.headers)
    assert headers.pop("authorization").startswith("bearer eyJ")
    port = apns_standin.port
    assert headers == {
        ":method": "POST",
        ":scheme": "https",
        ":path": f"/3/device/{request.token}",
        ":authority": f"127.0.0.1:{port}",
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": str(request.expiration),
        "apns-collapse-id": "ring-1",
        "apns-id": request.apns_id,
    }
    status = client.status()
    assert (status.sent, status.delivered, status.failed) == (1, 1, 0)
    assert status.auth == "token"
    assert status.connected == {"production": False, "sandbox": True}


ROWS = [
    (410, "Unregistered"),
    (410, "ExpiredToken"),
    (400, "BadDeviceToken"),
    (400, "DeviceTokenNotForTopic"),
    (400, "BadExpirationDate"),
    (404, "BadPath"),
    (405, "MethodNotAllowed"),
    (413, "PayloadTooLarge"),
    (403, "ExpiredProviderToken"),
    (403, "InvalidProviderToken"),
    (403, "BadCertificate"),
    (429, "TooManyRequests"),
    (429, "TooManyProviderTokenUpdates"),
    (500, "InternalServerError"),
    (503, "ServiceUnavailable"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("status", "reason"), ROWS)
async def test_each_response_row_becomes_the_right_result(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
    status: int,
    reason: str,
) -> None:
    request = push()
    apns_standin.token_errors = {request.token: (status, reason)}
    apns_standin.unregistered_timestamp_ms = 1_700_000_000_123
    result = await client.send(request)
    assert result.outcome is classify(status, reason)
    assert (result.status, result.reason) == (status, reason)
    assert result.apns_id == request.apns_id
    assert result.timestamp_ms == (1_700_000_000_123 if status == 410 else None)
    assert result.detail is not None
    assert str(status) in result.detail
    assert request.token not in result.detail
    assert not result.unprocessed
    assert client.status().failed == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("sent", "kept"),
    [(2**53 - 1, 2**53 - 1), (0, 0), (2**53, None), (2**63, None), (2**70, None), (-1, None)],
)
async def test_a_410_timestamp_out_of_any_real_range_is_treated_as_absent(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
    sent: int,
    kept: int | None,
) -> None:
    # A value no clock gives (2^63 overflows SQLite's integers) must not reach the outbox.
    request = push()
    apns_standin.token_errors = {request.token: (410, "Unregistered")}
    apns_standin.unregistered_timestamp_ms = sent
    result = await client.send(request)
    assert (result.outcome, result.status, result.reason) == (
        Outcome.TOKEN_DEAD,
        410,
        "Unregistered",
    )
    assert result.timestamp_ms == kept


@pytest.mark.asyncio
async def test_invalid_token_is_refused_without_asking_apple(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    result = await client.send(push("not/hex"))
    assert result.outcome is Outcome.FAILED
    assert result.status is None
    assert result.detail == "not a device token (16 to 200 hex digits)"
    assert apns_standin.requests_received == 0


@pytest.mark.asyncio
async def test_tokens_of_any_length(client: ApnsClient) -> None:
    results = await asyncio.gather(*(client.send(push(secrets.token_hex(n))) for n in (8, 32, 100)))
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3


@pytest.mark.asyncio
async def test_large_body_is_flow_controlled(client: ApnsClient) -> None:
    # Far past the 64 KiB initial stream window: only WINDOW_UPDATEs let it all out.
    big = json.dumps({"aps": {"alert": "x" * 300_000}}).encode()
    result = await client.send(push(payload=big))
    assert (result.outcome, result.status, result.reason) == (
        Outcome.FAILED,
        413,
        "PayloadTooLarge",
    )
    assert (await client.send(push())).outcome is Outcome.DELIVERED


# -- streams ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_never_more_streams_than_the_server_allows(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    apns_standin.max_concurrent_streams = 5
    apns_standin.delay = 0.02  # answers overlap, so the limit is reached
    async with make_client(pki, apns_standin.url) as client:
        results = await asyncio.gather(*(client.send(push()) for _ in range(50)))
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 50
    assert apns_standin.max_concurrent_seen == 5
    assert len(apns_standin.received) == 50
    assert apns_standin.connections == 1


@pytest.mark.asyncio
async def test_a_lowered_limit_is_obeyed_on_an_open_connection(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    await client.connect(SANDBOX)
    apns_standin.max_concurrent_streams = 3  # SETTINGS on the open connection
    await client.connect(SANDBOX)  # a PING round trip: the SETTINGS frame came before it
    apns_standin.delay = 0.02
    results = await asyncio.gather(*(client.send(push()) for _ in range(30)))
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 30
    assert apns_standin.max_concurrent_seen == 3
    assert apns_standin.connections == 1


@pytest.mark.asyncio
async def test_concurrent_sends_share_one_connect(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    results = await asyncio.gather(*(client.send(push()) for _ in range(20)))
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 20
    assert apns_standin.connections == 1


@pytest.mark.asyncio
async def test_environments_get_their_own_connections(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    a, b, c = await asyncio.gather(
        client.send(push(env=PROD)), client.send(push(env=SANDBOX)), client.send(push(env=PROD))
    )
    assert {a.outcome, b.outcome, c.outcome} == {Outcome.DELIVERED}
    by_token = {p.token: p.connection for p in apns_standin.received}
    assert by_token[a.request.token] == by_token[c.request.token]
    assert by_token[a.request.token] != by_token[b.request.token]
    assert apns_standin.connections == 2
    assert client.status().connected == {"production": True, "sandbox": True}


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_connection_dropped_by_the_server_is_replaced(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    lost: list[tuple[Environment, str]] = []
    client.on_lost = lambda env, reason, abrupt: lost.append((env, reason))
    apns_standin.drop_after = 2
    assert (await client.send(push())).outcome is Outcome.DELIVERED
    with caplog.at_level(logging.DEBUG, logger="edgebell"):
        dropped = push()
        result = await client.send(dropped)
    assert result.outcome is Outcome.TRANSPORT
    assert result.status is None
    assert result.detail
    assert not result.unprocessed  # it reached Apple: maybe acted on, maybe not
    assert client.status().last_error is not None
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    assert dropped.token not in caplog.text
    # The client reports the loss and leaves reconnecting to its caller.
    assert [env for env, _ in lost] == [SANDBOX]
    assert not client.status().connected["sandbox"]
    assert apns_standin.connections == 1
    apns_standin.drop_after = None
    dispatcher = engine(client, tmp_path)
    dispatcher.connection_lost(SANDBOX, lost[0][1], True)  # as if wired from the start
    # Reopened in the background by the engine: the next push finds a warm connection.
    await apns_standin.wait_for(lambda s: s.connections == 2, WAIT)
    await eventually(lambda: client.status().connected["sandbox"])
    later = await asyncio.gather(*(client.send(push()) for _ in range(3)))
    assert [r.outcome for r in later] == [Outcome.DELIVERED] * 3
    assert {p.connection for p in apns_standin.received[-3:]} == {2}
    assert apns_standin.connections == 2
    await dispatcher.drain(1.0)


@pytest.mark.asyncio
async def test_goaway_unprocessed_streams_come_back_and_resend(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    await client.connect(SANDBOX)
    apns_standin.goaway_after = 3  # GOAWAY naming the third stream: later ones unprocessed
    requests = [push() for _ in range(10)]
    results = await asyncio.gather(*(client.send(r) for r in requests))
    delivered = [r for r in results if r.outcome is Outcome.DELIVERED]
    unprocessed = [r for r in results if r.outcome is Outcome.TRANSPORT]
    assert len(delivered) == 3  # streams up to last_stream_id are answered, even after GOAWAY
    assert len(unprocessed) == 7
    assert all(r.unprocessed for r in unprocessed)
    assert all("GOAWAY" in (r.detail or "") for r in unprocessed)
    apns_standin.goaway_after = None
    again = await asyncio.gather(*(client.send(r.request) for r in unprocessed))
    assert [r.outcome for r in again] == [Outcome.DELIVERED] * 7
    assert sorted(p.apns_id for p in apns_standin.received) == sorted(r.apns_id for r in requests)
    assert apns_standin.connections == 2


@pytest.mark.asyncio
async def test_after_goaway_the_next_connection_is_opened_before_the_next_push(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
    tmp_path: Path,
) -> None:
    dispatcher = engine(client, tmp_path)
    apns_standin.goaway_after = 1  # answers the first stream, then goes away
    assert (await client.send(push())).outcome is Outcome.DELIVERED
    apns_standin.goaway_after = None
    await apns_standin.wait_for(lambda s: s.connections == 2 and len(s._live) == 1, WAIT)
    await eventually(lambda: client.status().connected["sandbox"])
    assert (await client.send(push())).outcome is Outcome.DELIVERED
    assert apns_standin.received[-1].connection == 2
    assert apns_standin.connections == 2
    await dispatcher.drain(1.0)


@pytest.mark.asyncio
async def test_a_lost_connection_is_reopened_with_backoff_while_the_network_is_down(
    pki: TestPki,
    apns_standin: ApnsStandIn,
    tmp_path: Path,
) -> None:
    low = 0.2
    async with make_client(pki, apns_standin.url) as client:
        dispatcher = engine(client, tmp_path, retry=(low, 0.4))
        await client.connect(SANDBOX)
        apns_standin.set(drop_after=1, refuse=True)  # this connection dies, no new one opens
        lost_at = time.monotonic()
        assert (await client.send(push())).outcome is Outcome.TRANSPORT
        apns_standin.drop_after = None
        await apns_standin.wait_for(lambda s: s.refused >= 3, WAIT)
        # The first try goes at once; each later one waits at least low / 2.
        assert time.monotonic() - lost_at >= 2 * low / 2
        assert not client.status().connected["sandbox"]
        apns_standin.refuse = False
        await apns_standin.wait_for(lambda s: s.connections == 2, WAIT)
        await eventually(lambda: client.status().connected["sandbox"])
        assert (await client.send(push())).outcome is Outcome.DELIVERED
        assert apns_standin.connections == 2
        await dispatcher.drain(1.0)


@pytest.mark.asyncio
async def test_closing_the_client_stops_reconnecting(
    pki: TestPki,
    apns_standin: ApnsStandIn,
    tmp_path: Path,
) -> None:
    def reconnects() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name().startswith("connect ")]

    client = make_client(pki, apns_standin.url)
    dispatcher = engine(client, tmp_path, retry=(0.05, 0.1))
    async with client:
        await client.connect(SANDBOX)
        apns_standin.set(drop_after=1, refuse=True)
        await client.send(push())
        await apns_standin.wait_for(lambda s: s.refused >= 2, WAIT)
        assert dispatcher.status().links == {"sandbox": False}  # still trying
        await dispatcher.drain(1.0)
    refused = apns_standin.refused
    # Nothing left to try again: no connect attempt running, no timer filed for one.
    assert reconnects() == []
    assert len(dispatcher._agenda) == 0
    assert apns_standin.refused == refused


@pytest.mark.asyncio
async def test_a_5xx_retires_the_connection_and_the_retry_goes_on_a_fresh_one(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    await client.connect(SANDBOX)
    apns_standin.delay = 0.3
    slow = asyncio.create_task(client.send(push()))  # in flight on connection 1
    await apns_standin.wait_for(lambda s: s.requests_received == 1, WAIT)
    apns_standin.delay = 0.0
    failing = push()
    apns_standin.token_errors = {failing.token: (503, "ServiceUnavailable")}
    first = await client.send(failing)
    assert (first.outcome, first.status) == (Outcome.RETRY, 503)
    apns_standin.token_errors = {}
    again = await client.send(failing)  # as the dispatcher retries it
    assert again.outcome is Outcome.DELIVERED
    assert apns_standin.received[-1].connection == 2
    # The stream open on the retired connection still got its answer there, then it closed.
    assert (await slow).outcome is Outcome.DELIVERED
    assert [p.connection for p in apns_standin.received] == [2, 1]
    await apns_standin.wait_for(lambda s: len(s._live) == 1, WAIT)
    assert apns_standin.connections == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [500, 503])
async def test_requests_queued_behind_a_5xx_go_on_the_fresh_connection(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
    status: int,
) -> None:
    apns_standin.max_concurrent_streams = 1  # the next request waits for the slot
    await client.connect(SANDBOX)
    failing = push()
    apns_standin.token_errors = {failing.token: (status, "ServiceUnavailable")}
    apns_standin.delay = 0.05
    results = await asyncio.gather(client.send(failing), *(client.send(push()) for _ in range(3)))
    assert results[0].status == status
    assert [r.outcome for r in results[1:]] == [Outcome.DELIVERED] * 3
    # None of them started on the connection that answered the 5xx.
    assert {p.connection for p in apns_standin.received} == {2}
    assert [p.connection for p in apns_standin.responses].count(1) == 1


@pytest.mark.asyncio
async def test_a_connection_out_of_stream_ids_is_retired(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    conn = await open_connection(pki, apns_standin.port)
    try:
        conn._h2.highest_outbound_stream_id = 2**31 - 1  # as after 2^30 requests
        with pytest.raises(StreamFailed, match="stream ids") as failed:
            await conn.request(request_headers(apns_standin), PAYLOAD, WAIT)
        assert failed.value.unprocessed
        assert not conn.available
        await eventually(lambda: conn.closed)  # nothing in flight: closed at once
    finally:
        await conn.aclose()


@pytest.mark.asyncio
async def test_hung_request_times_out_and_frees_its_stream(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    apns_standin.max_concurrent_streams = 1
    async with make_client(pki, apns_standin.url, request_timeout=0.2) as client:
        await client.connect(SANDBOX)
        apns_standin.hang = True
        result = await client.send(push())
        assert result.outcome is Outcome.TRANSPORT
        assert result.detail is not None
        assert "no answer within" in result.detail
        assert not result.unprocessed
        apns_standin.hang = False
        # The only stream slot was given back (RST_STREAM), on the same connection.
        assert (await client.send(push())).outcome is Outcome.DELIVERED
    assert apns_standin.connections == 1


@pytest.mark.asyncio
async def test_cancelled_send_frees_its_stream(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    apns_standin.max_concurrent_streams = 1
    apns_standin.hang = True
    stuck = asyncio.create_task(client.send(push()))
    await apns_standin.wait_for(lambda s: s.requests_received == 1, WAIT)
    stuck.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stuck
    apns_standin.hang = False
    assert (await client.send(push())).outcome is Outcome.DELIVERED
    assert apns_standin.connections == 1


@pytest.mark.asyncio
async def test_a_freed_slot_goes_to_the_next_request_at_once(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    apns_standin.max_concurrent_streams = 1
    apns_standin.hang = True
    conn = await open_connection(pki, apns_standin.port)
    try:
        first = asyncio.create_task(conn.request(request_headers(apns_standin), PAYLOAD, 0.1))
        await apns_standin.wait_for(lambda s: s.requests_received == 1, WAIT)
        apns_standin.hang = False
        # Queued; started in the same write as the first one's RST_STREAM when that expires.
        status, _, _ = await conn.request(request_headers(apns_standin), PAYLOAD, WAIT)
        assert status == 403  # answered (these bare headers carry no provider token)
        with pytest.raises(StreamFailed, match="no answer"):
            await first
    finally:
        await conn.aclose()


@pytest.mark.asyncio
async def test_waiting_for_a_stream_slot_is_bounded(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    apns_standin.max_concurrent_streams = 1
    apns_standin.hang = True
    conn = await open_connection(pki, apns_standin.port)
    try:
        first = asyncio.create_task(conn.request(request_headers(apns_standin), PAYLOAD, WAIT))
        await apns_standin.wait_for(lambda s: s.requests_received == 1, WAIT)
        with pytest.raises(StreamFailed, match="no free stream") as failed:
            await conn.request(request_headers(apns_standin), PAYLOAD, 0.05)
        assert failed.value.unprocessed  # it never left the queue
        assert apns_standin.requests_received == 1
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
    finally:
        await conn.aclose()


@pytest.mark.asyncio
async def test_unreachable_server(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    url = apns_standin.url
    await apns_standin.close()
    async with make_client(pki, url) as client:
        with pytest.raises(ApnsTransportError, match="cannot connect"):
            await client.connect(SANDBOX)
        result = await client.send(push())
        assert result.outcome is Outcome.TRANSPORT
        assert result.unprocessed
        assert client.status().last_error is not None
        assert client.status().connected["sandbox"] is False


@pytest.mark.asyncio
async def test_connect_warms_a_connection(
    client: ApnsClient,
    apns_standin: ApnsStandIn,
) -> None:
    await client.connect(PROD)
    assert apns_standin.connections == 1
    assert client.status().connected["production"] is True
    await client.connect(PROD)  # healthy: kept (PING), not replaced
    assert apns_standin.connections == 1


@pytest.mark.asyncio
async def test_refused_connection(client: ApnsClient, apns_standin: ApnsStandIn) -> None:
    apns_standin.refuse = True
    with pytest.raises(ApnsTransportError):
        await client.connect(SANDBOX)
    apns_standin.refuse = False
    await client.connect(SANDBOX)
    assert (await client.send(push())).outcome is Outcome.DELIVERED


@pytest.mark.asyncio
async def test_server_certificate_is_always_verified(
    pki: TestPki,
    apns_standin: ApnsStandIn,
    tmp_path: Path,
) -> None:
    async with make_client(pki, apns_standin.url, ca_file=None) as client:
        result = await client.send(push())
    assert result.outcome is Outcome.TRANSPORT
    assert result.detail is not None
    assert "not trusted" in result.detail
    # Trusted CA, but a certificate for another name: the hostname check refuses it.
    other = make_server_cert(pki.ca, tmp_path, ["push.example.net"], name="other")
    async with (
        ApnsStandIn(certfile=other.cert, keyfile=other.key, topic=TOPIC) as wrong,
        make_client(pki, wrong.url) as client,
    ):
        result = await client.send(push())
        assert wrong.requests_received == 0
    assert result.outcome is Outcome.TRANSPORT
    assert result.detail is not None
    assert "not trusted" in result.detail


@pytest.mark.asyncio
async def test_send_after_close_is_a_transport_result(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    client = make_client(pki, apns_standin.url)
    async with client:
        assert (await client.send(push())).outcome is Outcome.DELIVERED
    result = await client.send(push())
    assert result.outcome is Outcome.TRANSPORT
    assert result.unprocessed


@pytest.mark.asyncio
async def test_close_fails_requests_in_flight(
    pki: TestPki,
    apns_standin: ApnsStandIn,
) -> None:
    apns_standin.hang = True
    client = make_client(pki, apns_standin.url)
    pending = asyncio.create_task(client.send(push()))
    await apns_standin.wait_for(lambda s: s.requests_received == 1, WAIT)
    await client.aclose()
    result = await pending
    assert result.outcome is Outcome.TRANSPORT


# -- PING health checks -------------------------------------------------------------------


class _HungServer:
    """TLS + HTTP/2 preface (so a connection comes up), then silence: no PING ACK, no answers."""

    def __init__(self, pki: TestPki) -> None:
        self._context = server_ssl_context(pki.server.cert, pki.server.key)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0

    async def __aenter__(self) -> _HungServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        try:
            while await reader.read(65536):
                pass  # read and ignore everything
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.mark.asyncio
async def test_ping_health_check_notices_a_hung_server(pki: TestPki, tmp_path: Path) -> None:
    async with (
        _HungServer(pki) as hung,
        make_client(
            pki, f"https://127.0.0.1:{hung.port}", ping_interval=0.05, request_timeout=0.2
        ) as client,
    ):
        dispatcher = engine(client, tmp_path)
        await client.connect(SANDBOX)
        assert client.status().connected["sandbox"] is True
        # The missed PING closes that connection; a new one opens without waiting for a push.
        await eventually(lambda: hung.connections >= 2)
        assert "PING" in (client.status().last_error or "")
        await dispatcher.drain(1.0)


@pytest.mark.asyncio
async def test_ping_on_demand(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    conn = await open_connection(pki, apns_standin.port)
    try:
        assert await conn.ping(WAIT) >= 0
        assert conn.alive
    finally:
        await conn.aclose()
    async with _HungServer(pki) as hung:
        conn = await open_connection(pki, hung.port)
        try:
            with pytest.raises(ApnsTransportError, match="PING"):
                await conn.ping(0.05)
            assert not conn.alive
            assert not conn.available
        finally:
            await conn.aclose()
