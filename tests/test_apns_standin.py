"""The APNs stand-in answers as Apple documents, and its fault knobs, records and CLI work."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import pkcs12
from fixtures_apns import (
    GATEWAY_ID,
    KEY_ID,
    TEAM_ID,
    TOPIC,
    apns_standin,
    apns_standin_thread,
    pki,
    provider_jwt,
)
from h2.errors import ErrorCodes

from testkit.apns_server import ApnsStandIn, StandInThread
from testkit.pki import TestPki, make_client_cert, make_p12
from testkit.waiting import wait_until

TOKEN = "8b3c" + "0f" * 30  # 32 bytes, as iOS hands them out today
OTHER = "a1b2c3d4" * 10  # tokens are variable length: 40 bytes
PAYLOAD = json.dumps({"aps": {"alert": {"title": "Doorbell", "body": "Someone is there"}}}).encode()
WAIT = 5.0
FIXTURES = (apns_standin, apns_standin_thread, pki)  # pytest finds them by name in this module


# A minimal HTTP/2 client: stdlib ssl + h2, trusting the test CA.


@dataclass
class Response:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: ErrorCodes | int | None = None

    def error(self) -> dict[str, object]:
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


class _H2Client(h2.connection.H2Connection):
    """h2 moves to CLOSED on GOAWAY and refuses every later frame, while RFC 9113 6.8 lets
    the streams up to ``last_stream_id`` finish: stay open to read their answers."""

    def _receive_goaway_frame(self, frame: Any) -> Any:
        result = super()._receive_goaway_frame(frame)
        self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return result


class MiniClient:
    """Just enough HTTP/2 to poke the stand-in: send requests, read answers, see GOAWAY."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, strict: bool = True
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = _H2Client(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding="utf-8",
                validate_outbound_headers=strict,
                normalize_outbound_headers=strict,  # which would drop forbidden headers
            )
        )
        self.h2.initiate_connection()
        self.writer.write(self.h2.data_to_send())
        self.responses: dict[int, Response] = {}
        self.done: dict[int, asyncio.Future[Response]] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.settings = asyncio.Event()
        self.settings_changes: list[dict[int, int]] = []
        self.pings: list[bytes] = []
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        port: int,
        pki: TestPki,
        *,
        cert: bool = False,
        alpn: bool = True,
        strict: bool = True,
    ) -> MiniClient:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        if alpn:
            context.set_alpn_protocols(["h2"])
        if cert:
            context.load_cert_chain(pki.client.cert, pki.client.key)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context), WAIT
        )
        return cls(reader, writer, strict=strict)

    def send(
        self,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes = PAYLOAD,
        *,
        method: str = "POST",
        flush: bool = True,
    ) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        request = [
            (":method", method),
            (":scheme", "https"),
            (":path", path),
            (":authority", "127.0.0.1"),
            *headers,
        ]
        self.h2.send_headers(stream_id, request, end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.responses[stream_id] = Response()
        self.done[stream_id] = asyncio.get_running_loop().create_future()
        if flush:
            self.flush()
        return stream_id

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    async def response(self, stream_id: int, within: float = WAIT) -> Response:
        return await asyncio.wait_for(asyncio.shield(self.done[stream_id]), within)

    async def request(
        self,
        token: str = TOKEN,
        headers: Sequence[tuple[str, str]] | None = None,
        body: bytes = PAYLOAD,
        *,
        path: str | None = None,
        method: str = "POST",
    ) -> Response:
        sent = self.send(
            path if path is not None else f"/3/device/{token}",
            headers if headers is not None else apns_headers(),
            body,
            method=method,
        )
        return await self.response(sent)

    async def wait(self, condition: object, within: float = WAIT) -> None:
        """Wait until ``condition()`` holds, re-checking whenever a frame arrives."""
        assert callable(condition)
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def ping(self, data: bytes) -> None:
        self.h2.ping(data)
        self.flush()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.h2.receive_data(data):
                    self._on_event(event)
                self.writer.write(self.h2.data_to_send())
                self.changed.set()
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed.set()
            self.changed.set()
            for future in self.done.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed before the answer"))
                    future.exception()  # seen here: only the tests that wait for it care

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            assert event.stream_id is not None
            assert event.headers is not None
            response = self.responses[event.stream_id]
            response.headers = {str(k): str(v) for k, v in event.headers}
            response.status = int(response.headers[":status"])
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            self.responses[event.stream_id].body += event.data or b""
            self.h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            self.done[event.stream_id].set_result(self.responses[event.stream_id])
        elif isinstance(event, h2.events.StreamReset):
            assert event.stream_id is not None
            self.responses[event.stream_id].reset = event.error_code
            self.done[event.stream_id].set_result(self.responses[event.stream_id])
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_changes.append(
                {int(k): v.new_value for k, v in event.changed_settings.items()}
            )
            self.settings.set()
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings.append(event.ping_data or b"")


def apns_headers(jwt: str | None = None, **overrides: str | None) -> list[tuple[str, str]]:
    """The headers edgebell sends; ``overrides`` replace (None: drop) them, ``_`` for ``-``."""
    headers: dict[str, str | None] = {
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": str(int(time.time()) + 900),
        "apns-collapse-id": "ring-0001",
        "apns-id": str(uuid.uuid4()),
    }
    if jwt is not None:
        headers["authorization"] = f"bearer {jwt}"
    for name, value in overrides.items():
        headers[name.replace("_", "-")] = value
    return [(name, value) for name, value in headers.items() if value is not None]


@contextlib.asynccontextmanager
async def connected(port: int, pki: TestPki, **kwargs: bool) -> AsyncIterator[MiniClient]:
    client = await MiniClient.connect(port, pki, **kwargs)
    try:
        yield client
    finally:
        await client.close()


# Success


@pytest.mark.asyncio
async def test_ok_is_200_headers_only_and_echoes_apns_id(
    pki: TestPki, apns_standin: ApnsStandIn
) -> None:
    headers = apns_headers(provider_jwt(pki))
    apns_id = dict(headers)["apns-id"]
    before = time.monotonic_ns()
    async with connected(apns_standin.port, pki) as client:
        response = await client.request(TOKEN, headers)
    after = time.monotonic_ns()

    assert response.status == 200
    assert response.body == b""
    assert response.headers["apns-id"] == apns_id
    assert "apns-unique-id" not in response.headers
    [push] = apns_standin.received
    assert apns_standin.responses == [push]
    assert push.token == TOKEN
    assert push.status == 200
    assert push.reason is None
    assert push.payload == PAYLOAD
    assert push.json()["aps"]["alert"]["title"] == "Doorbell"
    assert push.headers["apns-topic"] == TOPIC
    assert push.headers["apns-collapse-id"] == "ring-0001"
    assert push.apns_id == apns_id
    assert push.connection == 1
    assert push.short_token == "8b3c0f0f…"
    assert before <= push.received_ns <= after
    assert apns_standin.connections == 1
    assert apns_standin.url == f"https://127.0.0.1:{apns_standin.port}"


@pytest.mark.asyncio
async def test_apns_id_is_generated_when_absent(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    async with connected(apns_standin.port, pki) as client:
        response = await client.request(OTHER, apns_headers(provider_jwt(pki), apns_id=None))
    assert response.status == 200
    assert uuid.UUID(response.headers["apns-id"])
    assert apns_standin.received[0].apns_id == response.headers["apns-id"]
    assert apns_standin.received[0].token == OTHER


@pytest.mark.asyncio
async def test_sandbox_answers_with_apns_unique_id(pki: TestPki) -> None:
    async with (
        ApnsStandIn(
            certfile=pki.server.cert,
            keyfile=pki.server.key,
            auth_keys=pki.auth_key.auth_keys(),
            sandbox=True,
        ) as standin,
        connected(standin.port, pki) as client,
    ):
        response = await client.request(TOKEN, apns_headers(provider_jwt(pki)))
    assert response.status == 200
    assert uuid.UUID(response.headers["apns-unique-id"])


@pytest.mark.asyncio
async def test_many_requests_share_one_connection(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    token = provider_jwt(pki)
    async with connected(apns_standin.port, pki) as client:
        sent = [
            client.send(f"/3/device/{TOKEN}", apns_headers(token), flush=False) for _ in range(50)
        ]
        client.flush()
        responses = [await client.response(stream_id) for stream_id in sent]
    assert {response.status for response in responses} == {200}
    assert len(apns_standin.received) == 50
    assert {push.connection for push in apns_standin.received} == {1}


@pytest.mark.asyncio
async def test_ping_is_answered(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    async with connected(apns_standin.port, pki) as client:
        client.ping(b"edgebell")
        await client.wait(lambda: client.pings)
    assert client.pings == [b"edgebell"]


# Apple's validation


LONG_COLLAPSE_ID = "x" * 65


@pytest.mark.parametrize(
    ("method", "path", "overrides", "body", "status", "reason"),
    [
        pytest.param("GET", f"/3/device/{TOKEN}", {}, b"", 405, "MethodNotAllowed", id="method"),
        pytest.param("POST", f"/3/devices/{TOKEN}", {}, PAYLOAD, 404, "BadPath", id="path"),
        pytest.param("POST", "/3/device/", {}, PAYLOAD, 400, "MissingDeviceToken", id="no-token"),
        pytest.param("POST", "/3/device/abc", {}, PAYLOAD, 400, "BadDeviceToken", id="odd-token"),
        pytest.param("POST", "/3/device/zz", {}, PAYLOAD, 400, "BadDeviceToken", id="hex-token"),
        pytest.param(
            "POST", None, {"apns_topic": None}, PAYLOAD, 400, "MissingTopic", id="no-topic"
        ),
        pytest.param(
            "POST", None, {"apns_topic": "com.other"}, PAYLOAD, 400, "TopicDisallowed", id="topic"
        ),
        pytest.param(
            "POST", None, {"apns_push_type": "ding"}, PAYLOAD, 400, "InvalidPushType", id="type"
        ),
        pytest.param(
            "POST", None, {"apns_priority": "7"}, PAYLOAD, 400, "BadPriority", id="priority"
        ),
        pytest.param(
            "POST", None, {"apns_expiration": "soon"}, PAYLOAD, 400, "BadExpirationDate", id="exp"
        ),
        pytest.param(
            "POST",
            None,
            {"apns_collapse_id": LONG_COLLAPSE_ID},
            PAYLOAD,
            400,
            "BadCollapseId",
            id="collapse-id",
        ),
        pytest.param(
            "POST", None, {"apns_id": "not-a-uuid"}, PAYLOAD, 400, "BadMessageId", id="apns-id"
        ),
        pytest.param("POST", None, {}, b"", 400, "PayloadEmpty", id="empty"),
        pytest.param(
            "POST",
            None,
            {},
            b'{"aps":{"alert":"' + b"x" * 4096 + b'"}}',
            413,
            "PayloadTooLarge",
            id="too-large",
        ),
        pytest.param("POST", None, {}, b"[1, 2]", 400, "PayloadEmpty", id="json-array"),
        pytest.param("POST", None, {}, b"ding dong", 400, "PayloadEmpty", id="not-json"),
    ],
)
@pytest.mark.asyncio
async def test_rejections_carry_apples_status_and_reason(
    pki: TestPki,
    apns_standin: ApnsStandIn,
    method: str,
    path: str | None,
    overrides: dict[str, str | None],
    body: bytes,
    status: int,
    reason: str,
) -> None:
    headers = apns_headers(provider_jwt(pki), **overrides)
    async with connected(apns_standin.port, pki) as client:
        response = await client.request(
            TOKEN, headers, body, path=path or f"/3/device/{TOKEN}", method=method
        )
    assert response.status == status
    assert response.error() == {"reason": reason}
    assert response.headers["content-type"] == "application/json"
    assert uuid.UUID(response.headers["apns-id"])
    assert apns_standin.received == []
    [push] = apns_standin.responses
    assert (push.status, push.reason) == (status, reason)


@pytest.mark.asyncio
async def test_duplicate_headers_are_refused(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    headers = [*apns_headers(provider_jwt(pki)), ("apns-topic", TOPIC)]
    async with connected(apns_standin.port, pki) as client:
        response = await client.request(TOKEN, headers)
    assert (response.status, response.error()) == (400, {"reason": "DuplicateHeaders"})


@pytest.mark.asyncio
async def test_absent_optional_headers_are_fine(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    headers = apns_headers(
        provider_jwt(pki),
        apns_push_type=None,
        apns_priority=None,
        apns_expiration=None,
        apns_collapse_id=None,
        apns_id=None,
    )
    async with connected(apns_standin.port, pki) as client:
        response = await client.request(TOKEN, headers)
    assert response.status == 200


@pytest.mark.asyncio
async def test_voip_payloads_may_be_5k(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    body = b'{"aps":{},"x":"' + b"y" * 5000 + b'"}'
    async with connected(apns_standin.port, pki) as client:
        voip = await client.request(TOKEN, apns_headers(provider_jwt(pki), apns_push_type="voip"))
        alert = await client.request(TOKEN, apns_headers(provider_jwt(pki)), body)
        big_voip = await client.request(
            TOKEN, apns_headers(provider_jwt(pki), apns_push_type="voip"), body
        )
    assert voip.status == 200
    assert alert.status == 413
    assert big_voip.status == 200


# Authentication


@pytest.mark.asyncio
async def test_provider_token_checks(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "valid": (provider_jwt(pki), 200, None),
        "wrong key": (provider_jwt(pki, key=stranger), 403, "InvalidProviderToken"),
        "unknown kid": (provider_jwt(pki, kid="ZZZ999ZZZZ"), 403, "InvalidProviderToken"),
        "wrong team": (provider_jwt(pki, iss="XXX999XXXX"), 403, "InvalidProviderToken"),
        "expired": (
            provider_jwt(pki, iat=int(time.time()) - 3601),
            403,
            "ExpiredProviderToken",
        ),
        "iat in ms": (
            provider_jwt(pki, iat=int(time.time() * 1000)),
            403,
            "InvalidProviderToken",
        ),
        "garbage": ("not.a.jwt", 403, "InvalidProviderToken"),
    }
    async with connected(apns_standin.port, pki) as client:
        for name, (token, status, reason) in cases.items():
            response = await client.request(TOKEN, apns_headers(token))
            assert response.status == status, name
            if reason is not None:
                assert response.error() == {"reason": reason}, name
        missing = await client.request(TOKEN, apns_headers())
    assert (missing.status, missing.error()) == (403, {"reason": "MissingProviderToken"})


@pytest.mark.asyncio
async def test_a_cached_jwt_still_ages(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    # Verified once, cached; replacing the keys drops the cache, so it is judged again.
    token = provider_jwt(pki)
    async with connected(apns_standin.port, pki) as client:
        assert (await client.request(TOKEN, apns_headers(token))).status == 200
        apns_standin.auth_keys = {}
        refused = await client.request(TOKEN, apns_headers(token))
        apns_standin.set(auth_keys=pki.auth_key.auth_keys())
        accepted = await client.request(TOKEN, apns_headers(token))
    assert (refused.status, refused.error()) == (403, {"reason": "InvalidProviderToken"})
    assert accepted.status == 200


@pytest.mark.asyncio
async def test_too_many_provider_token_updates(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    apns_standin.set(token_update_limit=2)
    now = int(time.time())
    first, second, third = (provider_jwt(pki, iat=now - age) for age in (30, 20, 10))
    async with connected(apns_standin.port, pki) as client:
        statuses = [
            (await client.request(TOKEN, apns_headers(token))).status
            for token in (first, first, second, first)
        ]
        too_many = await client.request(TOKEN, apns_headers(third))
    assert statuses == [200, 200, 200, 200]
    assert (too_many.status, too_many.error()) == (
        429,
        {"reason": "TooManyProviderTokenUpdates"},
    )
    async with connected(apns_standin.port, pki) as fresh:
        assert (await fresh.request(TOKEN, apns_headers(third))).status == 200


@pytest.mark.asyncio
async def test_client_certificate_required(pki: TestPki) -> None:
    async with ApnsStandIn(
        certfile=pki.server.cert, keyfile=pki.server.key, client_ca=pki.ca.cert, topic=TOPIC
    ) as standin:
        # TLS 1.3 reports the missing certificate after the client's side of the handshake.
        with pytest.raises((OSError, ConnectionError)):
            async with connected(standin.port, pki) as client:
                await client.request(TOKEN, apns_headers())
        await standin.wait_for(lambda s: s.tls_failures == 1)

        async with connected(standin.port, pki, cert=True) as client:
            response = await client.request(TOKEN, apns_headers())
        assert response.status == 200
        assert standin.responses[-1].connection == 2


@pytest.mark.asyncio
async def test_optional_client_certificate(pki: TestPki) -> None:
    async with ApnsStandIn(
        certfile=pki.server.cert,
        keyfile=pki.server.key,
        client_ca=pki.ca.cert,
        client_cert_optional=True,
        auth_keys=pki.auth_key.auth_keys(),
    ) as standin:
        async with connected(standin.port, pki) as client:
            anonymous = await client.request(TOKEN, apns_headers())
            with_jwt = await client.request(TOKEN, apns_headers(provider_jwt(pki)))
        async with connected(standin.port, pki, cert=True) as client:
            with_cert = await client.request(TOKEN, apns_headers())
    assert (anonymous.status, anonymous.error()) == (403, {"reason": "MissingProviderToken"})
    assert with_jwt.status == 200
    assert with_cert.status == 200


@pytest.mark.asyncio
async def test_alpn_h2_is_required(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    with pytest.raises((OSError, ConnectionError)):
        async with connected(apns_standin.port, pki, alpn=False) as client:
            await client.request(TOKEN, apns_headers(provider_jwt(pki)))
    await apns_standin.wait_for(lambda s: s.tls_failures == 1)


# Concurrency


@pytest.mark.asyncio
async def test_max_concurrent_streams_is_advertised_and_counted(pki: TestPki) -> None:
    async with (
        ApnsStandIn(
            certfile=pki.server.cert,
            keyfile=pki.server.key,
            auth_keys=pki.auth_key.auth_keys(),
            max_concurrent_streams=5,
        ) as standin,
        connected(standin.port, pki) as client,
    ):
        await asyncio.wait_for(client.settings.wait(), WAIT)
        assert client.h2.remote_settings.max_concurrent_streams == 5
        standin.hang = True
        token = provider_jwt(pki)
        for _ in range(5):
            client.send(f"/3/device/{TOKEN}", apns_headers(token))
        await standin.wait_for(lambda s: s.requests_received == 5)
        assert standin.max_concurrent_seen == 5

        standin.max_concurrent_streams = 2  # open connections get a SETTINGS update
        await client.wait(lambda: client.h2.remote_settings.max_concurrent_streams == 2)


@pytest.mark.asyncio
async def test_a_client_exceeding_the_limit_is_recorded(pki: TestPki) -> None:
    async with ApnsStandIn(
        certfile=pki.server.cert,
        keyfile=pki.server.key,
        auth_keys=pki.auth_key.auth_keys(),
        max_concurrent_streams=3,
    ) as standin:
        standin.hang = True  # keep every stream open
        async with connected(standin.port, pki) as client:
            # Sent before the client has read the server's SETTINGS, so its h2 does not stop us.
            token = provider_jwt(pki)
            for _ in range(4):
                client.send(f"/3/device/{TOKEN}", apns_headers(token), flush=False)
            client.flush()
            await client.wait(lambda: client.goaway is not None)
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        assert standin.max_concurrent_seen == 4


@pytest.mark.asyncio
async def test_a_reset_stream_frees_its_slot_within_one_read(pki: TestPki) -> None:
    async with ApnsStandIn(
        certfile=pki.server.cert,
        keyfile=pki.server.key,
        auth_keys=pki.auth_key.auth_keys(),
        max_concurrent_streams=1,
    ) as standin:
        standin.hang = True
        jwt = provider_jwt(pki)
        async with connected(standin.port, pki) as client:
            await client.wait(lambda: client.h2.remote_settings.max_concurrent_streams == 1)
            stuck = client.send(f"/3/device/{TOKEN}", apns_headers(jwt))
            await standin.wait_for(lambda s: s.requests_received == 1)
            standin.hang = False
            # RST_STREAM and the next HEADERS leave in one write, so the stand-in reads both
            # before it handles either: the slot must be free by the time the HEADERS count.
            client.h2.reset_stream(stuck)
            retry = client.send(f"/3/device/{TOKEN}", apns_headers(jwt))
            response = await client.response(retry)
        assert response.status == 200
        assert client.goaway is None
        assert standin.max_concurrent_seen == 1


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.asyncio
async def test_header_validation_can_be_turned_off(pki: TestPki, validate: bool) -> None:
    async with ApnsStandIn(
        certfile=pki.server.cert,
        keyfile=pki.server.key,
        auth_keys=pki.auth_key.auth_keys(),
        validate_headers=validate,
    ) as standin:
        # A connection-specific header, which HTTP/2 forbids (RFC 9113 8.2.2).
        headers = [*apns_headers(provider_jwt(pki)), ("connection", "keep-alive")]
        async with connected(standin.port, pki, strict=False) as client:
            stream_id = client.send(f"/3/device/{TOKEN}", headers)
            await client.wait(lambda: client.done[stream_id].done() or client.goaway is not None)
    if validate:
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        assert standin.responses == []
    else:
        assert client.responses[stream_id].status == 200


# Faults


@pytest.mark.asyncio
async def test_token_errors(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    apns_standin.set(
        token_errors={TOKEN: (410, "Unregistered"), OTHER: (400, "BadDeviceToken")},
        unregistered_timestamp_ms=1_700_000_000_123,
    )
    jwt = provider_jwt(pki)
    async with connected(apns_standin.port, pki) as client:
        gone = await client.request(TOKEN, apns_headers(jwt))
        bad = await client.request(OTHER, apns_headers(jwt))
        fine = await client.request("ab" * 32, apns_headers(jwt))
        apns_standin.unregistered_timestamp_ms = None
        before = time.time_ns() // 1_000_000
        now = await client.request(TOKEN, apns_headers(jwt))
        after = time.time_ns() // 1_000_000
    assert (gone.status, gone.error()) == (
        410,
        {"reason": "Unregistered", "timestamp": 1_700_000_000_123},
    )
    assert (bad.status, bad.error()) == (400, {"reason": "BadDeviceToken"})
    assert fine.status == 200
    timestamp = now.error()["timestamp"]
    assert isinstance(timestamp, int)
    assert before <= timestamp <= after
    assert [push.timestamp for push in apns_standin.responses] == [
        1_700_000_000_123,
        None,
        None,
        timestamp,
    ]


@pytest.mark.asyncio
async def test_fail_rate_is_seedable(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    jwt = provider_jwt(pki)

    async def statuses(count: int) -> list[int | None]:
        return [(await client.request(TOKEN, apns_headers(jwt))).status for _ in range(count)]

    async with connected(apns_standin.port, pki) as client:
        apns_standin.set(fail_rate=1.0)
        always = await client.request(TOKEN, apns_headers(jwt))
        apns_standin.set(fail_rate=0.5, seed=7)
        first = await statuses(30)
        apns_standin.set(seed=7)
        second = await statuses(30)
        apns_standin.set(fail_rate=1.0, fail_status=500, fail_reason="InternalServerError")
        custom = await client.request(TOKEN, apns_headers(jwt))
    assert (always.status, always.error()) == (503, {"reason": "ServiceUnavailable"})
    assert first == second
    assert set(first) == {200, 503}
    assert (custom.status, custom.error()) == (500, {"reason": "InternalServerError"})


@pytest.mark.asyncio
async def test_goaway_after(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    apns_standin.set(goaway_after=2)
    jwt = provider_jwt(pki)
    async with connected(apns_standin.port, pki) as client:
        sent = [client.send(f"/3/device/{TOKEN}", apns_headers(jwt), flush=False) for _ in range(3)]
        client.flush()
        first, second = [await client.response(stream_id) for stream_id in sent[:2]]
        await client.wait(lambda: client.closed.is_set())
    assert (first.status, second.status) == (200, 200)
    assert client.goaway is not None
    assert client.goaway.last_stream_id == sent[1]
    assert client.goaway.error_code == ErrorCodes.NO_ERROR
    assert json.loads(client.goaway.additional_data or b"") == {"reason": "Shutdown"}
    # The third stream is beyond the GOAWAY: refused or cut off, never answered.
    third = client.responses[sent[2]]
    assert third.status is None
    assert third.reset in (None, ErrorCodes.REFUSED_STREAM)
    assert len(apns_standin.responses) == 2

    async with connected(apns_standin.port, pki) as client:
        assert (await client.request(TOKEN, apns_headers(jwt))).status == 200
    assert apns_standin.responses[-1].connection == 2


@pytest.mark.asyncio
async def test_drop_after(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    apns_standin.set(drop_after=2)
    jwt = provider_jwt(pki)
    async with connected(apns_standin.port, pki) as client:
        assert (await client.request(TOKEN, apns_headers(jwt))).status == 200
        with pytest.raises(ConnectionError):
            await client.request(TOKEN, apns_headers(jwt))
    assert apns_standin.requests_received == 2
    assert len(apns_standin.responses) == 1


@pytest.mark.asyncio
async def test_hang_never_answers(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    apns_standin.set(hang=True)
    async with connected(apns_standin.port, pki) as client:
        stream_id = client.send(f"/3/device/{TOKEN}", apns_headers(provider_jwt(pki)))
        await apns_standin.wait_for(lambda s: s.requests_received == 1)
        with pytest.raises(TimeoutError):
            await client.response(stream_id, within=0.2)
    assert apns_standin.responses == []


@pytest.mark.asyncio
async def test_delay_holds_answers_open(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    apns_standin.set(delay=0.05)
    jwt = provider_jwt(pki)
    async with connected(apns_standin.port, pki) as client:
        sent = [client.send(f"/3/device/{TOKEN}", apns_headers(jwt), flush=False) for _ in range(4)]
        client.flush()
        responses = [await client.response(stream_id) for stream_id in sent]
    assert [response.status for response in responses] == [200] * 4
    assert apns_standin.max_concurrent_seen == 4


@pytest.mark.asyncio
async def test_refuse_closes_new_connections(pki: TestPki, apns_standin: ApnsStandIn) -> None:
    apns_standin.set(refuse=True)
    with pytest.raises((OSError, ConnectionError)):
        async with connected(apns_standin.port, pki) as client:
            await client.request(TOKEN, apns_headers(provider_jwt(pki)))
    assert (apns_standin.refused, apns_standin.connections) == (1, 0)
    apns_standin.set(refuse=False)
    async with connected(apns_standin.port, pki) as client:
        assert (await client.request(TOKEN, apns_headers(provider_jwt(pki)))).status == 200
    assert apns_standin.responses[0].connection == 1


@pytest.mark.asyncio
async def test_unknown_knob_is_refused(apns_standin: ApnsStandIn) -> None:
    with pytest.raises(TypeError, match="fail_rat"):
        apns_standin.set(fail_rat=1.0)


@pytest.mark.asyncio
async def test_wait_for_times_out_with_a_summary(apns_standin: ApnsStandIn) -> None:
    with pytest.raises(AssertionError, match=r"received=0"):
        await apns_standin.wait_for(lambda s: len(s.received) > 0, timeout=0.05)


# The threaded stand-in


def test_standin_thread(pki: TestPki, apns_standin_thread: StandInThread) -> None:
    async def push(count: int) -> list[int | None]:
        async with connected(apns_standin_thread.port, pki) as client:
            jwt = provider_jwt(pki)
            return [(await client.request(TOKEN, apns_headers(jwt))).status for _ in range(count)]

    assert asyncio.run(push(2)) == [200, 200]
    apns_standin_thread.wait_for(lambda s: len(s.received) == 2)
    assert [push.token for push in apns_standin_thread.received()] == [TOKEN, TOKEN]
    apns_standin_thread.set(token_errors={TOKEN: (410, "Unregistered")})
    assert asyncio.run(push(1)) == [410]
    assert [push.status for push in apns_standin_thread.responses()] == [200, 200, 410]
    assert apns_standin_thread.call(lambda s: s.connections) == 2
    assert apns_standin_thread.url.endswith(f":{apns_standin_thread.port}")
    with pytest.raises(AssertionError, match="responses=3"):
        apns_standin_thread.wait_for(lambda s: len(s.responses) > 3, timeout=0.05)


def test_standin_thread_reports_a_bad_start(tmp_path: Path, pki: TestPki) -> None:
    thread = StandInThread(certfile=tmp_path / "missing.crt", keyfile=pki.server.key)
    with pytest.raises(FileNotFoundError):
        thread.start()
    thread.stop()


# The command line


def test_cli_serves_and_prints_json_lines(tmp_path: Path, pki: TestPki) -> None:
    port_file = tmp_path / "apns.port"
    command = [
        sys.executable,
        "-m",
        "testkit.apns_server",
        "--cert",
        str(pki.server.cert),
        "--key",
        str(pki.server.key),
        "--topic",
        TOPIC,
        "--auth-key",
        f"{KEY_ID}:{TEAM_ID}:{pki.auth_key.public_key}",
        "--port-file",
        str(port_file),
    ]
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        stdout = process.stdout
        assert stdout is not None

        def read_lines() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=read_lines)
        reader.start()
        try:

            def listening() -> bool:
                assert process.poll() is None, "the stand-in exited before listening"
                return port_file.exists()

            wait_until(listening, 20, "the stand-in's port file")
            port = int(port_file.read_text())

            async def push() -> Response:
                client: MiniClient
                async with connected(port, pki) as client:
                    return await client.request(
                        TOKEN, apns_headers(provider_jwt(pki), apns_collapse_id="ring-7")
                    )

            assert asyncio.run(push()).status == 200
            line = lines.get(timeout=10)
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(10)
            reader.join(10)
    assert code == 0
    assert TOKEN not in line
    assert json.loads(line) == {
        "token": TOKEN[:8] + "…",
        "status": 200,
        "reason": None,
        "title": "Doorbell",
        "body": "Someone is there",
        "apns-collapse-id": "ring-7",
        "apns-priority": "10",
        "apns-expiration": json.loads(line)["apns-expiration"],
        "connection": 1,
    }
    assert int(json.loads(line)["apns-expiration"]) > time.time()


def test_cli_rejects_a_bad_auth_key_spec(pki: TestPki) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "testkit.apns_server",
            "--cert",
            str(pki.server.cert),
            "--key",
            str(pki.server.key),
            "--auth-key",
            "nonsense",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "KID:TEAM" in result.stderr


# The PKI


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_pki_files(pki: TestPki) -> None:
    for private in (
        pki.ca.key,
        pki.server.key,
        pki.server.combined,
        pki.client.key,
        pki.auth_key.private_key,
        pki.token_list_key.private_key,
    ):
        assert _mode(private) == 0o600, private
    assert pki.auth_key.private_key.name == "AuthKey_ABC123DEFG.p8"
    assert (pki.auth_key.key_id, pki.auth_key.team_id) == (KEY_ID, TEAM_ID)
    # Apple's .p8 is PKCS#8 PEM: the file is exactly that serialisation of its key.
    key = pki.auth_key.load_private_key()
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert pki.auth_key.private_key.read_bytes() == pkcs8
    assert isinstance(pki.auth_key.load_public_key(), ec.EllipticCurvePublicKey)

    server = pki.server.load_cert()
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]

    client = pki.client.load_cert()
    [cn] = client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert cn.value == GATEWAY_ID == pki.client.common_name
    assert client.issuer == pki.ca.load_cert().subject
    assert pki.client.combined.read_bytes() == (
        pki.client.cert.read_bytes() + pki.client.key.read_bytes()
    )

    signing = serialization.load_pem_private_key(pki.token_list_key.private_key.read_bytes(), None)
    verifying = serialization.load_pem_public_key(pki.token_list_key.public_key.read_bytes())
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    assert isinstance(verifying, ed25519.Ed25519PublicKey)


def test_p12_and_encrypted_keys(tmp_path: Path, pki: TestPki) -> None:
    bundle = make_p12(pki.client, tmp_path, "s3cret")
    assert _mode(bundle) == 0o600
    key, cert, _ = pkcs12.load_key_and_certificates(bundle.read_bytes(), b"s3cret")
    assert cert == pki.client.load_cert()
    assert key is not None
    with pytest.raises(ValueError, match=r"(?i)password|mac"):
        pkcs12.load_key_and_certificates(bundle.read_bytes(), b"wrong")

    locked = make_client_cert(pki.ca, tmp_path, "gw-locked", key_passphrase=b"pw")
    assert b"ENCRYPTED PRIVATE KEY" in locked.key.read_bytes()
    assert isinstance(locked.load_key(b"pw"), ec.EllipticCurvePrivateKey)
    context = ssl.create_default_context()
    context.load_cert_chain(locked.combined, password=b"pw")
