"""The APNs stand-in: a real TLS HTTP/2 server that answers as Apple's provider API, with faults."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from edgebell.privacy import short_token
from testkit.apns_auth import MAX_TOKEN_AGE, AuthKeys, ProviderTokenVerifier
from testkit.apns_connection import Headers, Request, StandInConnection
from testkit.apns_rules import (
    Reason,
    Rejection,
    Target,
    check_device,
    check_headers,
    check_payload,
    check_target,
    is_uuid,
)

KNOBS = frozenset(
    {
        "auth_keys",
        "delay",
        "drop_after",
        "fail_rate",
        "fail_reason",
        "fail_status",
        "goaway_after",
        "hang",
        "jwt_max_age",
        "max_concurrent_streams",
        "on_response",
        "refuse",
        "sandbox",
        "seed",
        "token_errors",
        "token_update_limit",
        "topic",
        "unregistered_timestamp_ms",
    }
)
"""Everything :meth:`ApnsStandIn.set` may change while the stand-in runs."""

_CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ReceivedPush:
    """One answered request: what arrived and what the stand-in said.

    ``received_ns`` is ``time.monotonic_ns()`` when the request's last frame was
    read; CLOCK_MONOTONIC is shared by every process on a Linux machine, so a
    benchmark may subtract it from a timestamp taken in another process.
    ``timestamp`` is the one sent in a 410 body (ms since the epoch).
    """

    token: str
    headers: Mapping[str, str]
    payload: bytes
    status: int
    reason: str | None
    received_ns: int
    connection: int
    apns_id: str = ""
    stream_id: int = 0
    timestamp: int | None = None

    def json(self) -> Any:
        """The payload decoded from JSON."""
        return json.loads(self.payload)

    @property
    def short_token(self) -> str:
        return short_token(self.token)

    @property
    def to_device(self) -> bool:
        """False for a request to a token no device has (a credentials check, not a ring)."""
        return check_device(self.token) is None


class ApnsStandIn:
    """Answers ``POST /3/device/<token>`` exactly as APNs documents, and records every request.

    Use as ``async with ApnsStandIn(certfile=..., keyfile=...) as apns:``. Fault
    knobs (see :data:`KNOBS`) are plain attributes, changeable at any time, also
    through :meth:`set`; they apply to requests that complete afterwards, and the
    stream-counting ones (``goaway_after``, ``drop_after``) count per connection.

    Authentication follows Apple: a request carrying ``authorization: bearer <jwt>``
    is checked against ``auth_keys``; one without needs a connection with a
    verified client certificate (``client_ca`` set; required unless
    ``client_cert_optional``), else 403 MissingProviderToken.

    Records: ``responses`` (every answered request), ``received`` (those answered
    200), ``requests_received`` (every request read in full, answered or not: hung
    and dropped ones too), ``connections`` (served; serial numbers start at 1),
    ``refused``, ``tls_failures`` (handshake failed or no ALPN h2), and
    ``max_concurrent_seen`` (most streams one connection had open at once).
    """

    def __init__(
        self,
        *,
        certfile: Path,
        keyfile: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        topic: str | None = None,
        auth_keys: AuthKeys | None = None,
        client_ca: Path | None = None,
        client_cert_optional: bool = False,
        max_concurrent_streams: int = 1000,
        sandbox: bool = False,
        token_update_limit: int | None = None,
        seed: int | None = None,
        validate_headers: bool = True,
    ) -> None:
        self.ssl_context = server_ssl_context(
            certfile, keyfile, client_ca=client_ca, client_cert_optional=client_cert_optional
        )
        self.host = host
        self.topic = topic
        self.sandbox = sandbox
        self.token_update_limit = token_update_limit
        # How old a provider JWT may be (Apple: an hour); -1 calls every JWT expired.
        self.jwt_max_age: float = MAX_TOKEN_AGE
        # h2's checks of every received header (lowercase names, no connection headers
        # ...) as Apple's front end would refuse them; about a fifth of the stand-in's
        # time per request, which a benchmark of the client may prefer to spend elsewhere.
        self.validate_headers = validate_headers

        # fault knobs
        self.token_errors: dict[str, tuple[int, str]] = {}
        self.unregistered_timestamp_ms: int | None = None
        self.fail_rate = 0.0
        self.fail_status = 503
        self.fail_reason: str = Reason.SERVICE_UNAVAILABLE
        self.goaway_after: int | None = None
        self.delay = 0.0
        self.hang = False
        self.drop_after: int | None = None
        self.refuse = False
        self.on_response: Callable[[ReceivedPush], None] | None = None

        # records
        self.received: list[ReceivedPush] = []
        self.responses: list[ReceivedPush] = []
        self.connections = 0
        self.refused = 0
        self.tls_failures = 0
        self.requests_received = 0
        self.max_concurrent_seen = 0

        self._port = port
        self._max_concurrent_streams = max_concurrent_streams
        self._seed = seed
        self._rng = random.Random(seed)
        self._verifier = ProviderTokenVerifier(auth_keys)
        self._live: set[StandInConnection] = set()
        self._server: asyncio.Server | None = None
        self._waiters: list[asyncio.Future[None]] = []

    # lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: StandInConnection(self, self.ssl_context), self.host, self._port
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        live = list(self._live)
        for conn in live:
            conn.abort()
        if live:
            await asyncio.wait([conn.closed for conn in live], timeout=_CLOSE_TIMEOUT)
        await server.wait_closed()
        self._changed()  # waiters re-check, then time out with a summary

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self._port}"

    # knobs

    def set(self, **knobs: Any) -> None:
        """Change several knobs at once, refusing names that are not knobs."""
        unknown = sorted(set(knobs) - KNOBS)
        if unknown:
            raise TypeError(f"unknown stand-in knob(s) {unknown}; knobs are {sorted(KNOBS)}")
        for name, value in knobs.items():
            setattr(self, name, value)

    @property
    def auth_keys(self) -> AuthKeys:
        """Key id -> (team id, public key). Assign a new mapping to change it at runtime."""
        return self._verifier.keys

    @auth_keys.setter
    def auth_keys(self, keys: AuthKeys) -> None:
        self._verifier.keys = keys

    @property
    def seed(self) -> int | None:
        return self._seed

    @seed.setter
    def seed(self, seed: int | None) -> None:
        """Restart the ``fail_rate`` dice from ``seed``: the same seed gives the same faults."""
        self._seed = seed
        self._rng = random.Random(seed)

    @property
    def max_concurrent_streams(self) -> int:
        return self._max_concurrent_streams

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        """New connections advertise ``value``; open ones get a SETTINGS update."""
        self._max_concurrent_streams = value
        for conn in self._live:
            conn.update_max_concurrent_streams(value)

    # waiting and reporting

    async def wait_for(
        self,
        predicate: Callable[[ApnsStandIn], object],
        timeout: float = 5.0,  # noqa: ASYNC109 (the stand-in's API: one call, one deadline)
    ) -> None:
        """Return once ``predicate(self)`` is true; AssertionError with a summary after ``timeout``.

        The predicate is re-checked whenever the stand-in's records change.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"stand-in condition not met in {timeout}s: {self.summary()}")
            changed: asyncio.Future[None] = loop.create_future()
            self._waiters.append(changed)
            try:
                await asyncio.wait_for(changed, remaining)
            except TimeoutError:
                pass
            finally:
                if changed in self._waiters:
                    self._waiters.remove(changed)

    def summary(self) -> str:
        """The state in one line, tokens shortened: for assertion messages and logs."""
        last = ", ".join(
            f"{push.short_token}:{push.status}{'/' + push.reason if push.reason else ''}"
            for push in self.responses[-5:]
        )
        return (
            f"connections={self.connections} live={len(self._live)} refused={self.refused} "
            f"tls_failures={self.tls_failures} requests={self.requests_received} "
            f"responses={len(self.responses)} received={len(self.received)} "
            f"max_concurrent_seen={self.max_concurrent_seen} last=[{last}]"
        )

    # ConnectionHost: called by the connections

    def track(self, conn: StandInConnection) -> int:
        self._live.add(conn)
        if self.refuse:
            self.refused += 1
            serial = 0
        else:
            self.connections += 1
            serial = self.connections
        self._changed()
        return serial

    def untrack(self, conn: StandInConnection) -> None:
        self._live.discard(conn)
        self._changed()

    def note_tls_failure(self) -> None:
        self.tls_failures += 1
        self._changed()

    def note_open_streams(self, count: int) -> None:
        if count > self.max_concurrent_seen:
            self.max_concurrent_seen = count

    def note_request(self) -> None:
        self.requests_received += 1
        if self._waiters:
            self._changed()

    def respond(self, conn: StandInConnection, request: Request) -> tuple[Headers, bytes]:
        target = check_target(request.method, request.path)
        token = target.token if isinstance(target, Target) else ""
        headers = request.headers
        apns_id = headers.get("apns-id")
        if apns_id is None or not is_uuid(apns_id):
            apns_id = str(uuid.uuid4())
        rejection = target if isinstance(target, Rejection) else self._judge(conn, request, token)
        response: Headers = [(":status", "200"), ("apns-id", apns_id)]
        body = b""
        timestamp = None
        if rejection is None:
            status, reason = 200, None
            if self.sandbox:
                response.append(("apns-unique-id", str(uuid.uuid4())))
        else:
            status, reason = rejection.status, str(rejection.reason)
            error: dict[str, object] = {"reason": reason}
            if status == 410:
                timestamp = self.unregistered_timestamp_ms
                if timestamp is None:
                    timestamp = time.time_ns() // 1_000_000
                error["timestamp"] = timestamp
            body = json.dumps(error, separators=(",", ":")).encode()
            response[0] = (":status", str(status))
            response.append(("content-type", "application/json"))
            response.append(("content-length", str(len(body))))
        push = ReceivedPush(
            token=token,
            headers=headers,
            payload=request.payload,
            status=status,
            reason=reason,
            received_ns=request.received_ns,
            connection=conn.serial,
            apns_id=apns_id,
            stream_id=request.stream_id,
            timestamp=timestamp,
        )
        self.responses.append(push)
        if status == 200:
            self.received.append(push)
        if self.on_response is not None:
            self.on_response(push)
        if self._waiters:
            self._changed()
        return response, body

    def _judge(self, conn: StandInConnection, request: Request, token: str) -> Rejection | None:
        """Apple's checks in order (auth, headers, payload, device), then the configured faults."""
        headers = request.headers
        return (
            self._authenticate(conn, headers)
            or check_headers(headers, duplicated=request.duplicated, topic=self.topic)
            or check_payload(request.payload, request.size, push_type=headers.get("apns-push-type"))
            or self._fault(token)
            or check_device(token)
        )

    def _authenticate(
        self, conn: StandInConnection, headers: Mapping[str, str]
    ) -> Rejection | None:
        authorization = headers.get("authorization")
        if authorization is None:
            if conn.cert_verified:
                return None
            return Rejection(403, Reason.MISSING_PROVIDER_TOKEN)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer":
            return Rejection(403, Reason.INVALID_PROVIDER_TOKEN)
        if not token:
            return Rejection(403, Reason.MISSING_PROVIDER_TOKEN)
        reason = self._verifier.check(token, time.time(), self.jwt_max_age)
        if reason is not None:
            return Rejection(403, reason)
        if token not in conn.provider_tokens:
            limit = self.token_update_limit
            if limit is not None and len(conn.provider_tokens) >= limit:
                return Rejection(429, Reason.TOO_MANY_PROVIDER_TOKEN_UPDATES)
            conn.provider_tokens.add(token)
        return None

    def _fault(self, token: str) -> Rejection | None:
        if self.token_errors:
            error = self.token_errors.get(token) or self.token_errors.get(token.lower())
            if error is not None:
                return Rejection(error[0], error[1])
        if self.fail_rate > 0 and self._rng.random() < self.fail_rate:
            return Rejection(self.fail_status, self.fail_reason)
        return None

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def server_ssl_context(
    certfile: Path,
    keyfile: Path,
    *,
    client_ca: Path | None = None,
    client_cert_optional: bool = False,
) -> ssl.SSLContext:
    """TLS 1.2+ with ALPN h2 and RFC 7540's cipher rules; client certificates when ``client_ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # HTTP/2 forbids TLS 1.2 suites without forward secrecy and AEAD (RFC 7540 9.2.2).
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.set_alpn_protocols(["h2"])
    context.load_cert_chain(certfile, keyfile)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL if client_cert_optional else ssl.CERT_REQUIRED
    return context
