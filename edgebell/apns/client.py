"""The APNs client: one long-lived HTTP/2 connection per environment, one attempt per push.

The client is the connection pool and speaks APNs: it builds the request, says what
a refused or exhausted connection means (a 5xx retires it; a request that never got
a stream goes on the next connection) and turns every answer into a ``PushResult``.
It never resends a push and never reconnects on its own: whoever owns the retries
(the delivery engine) asks again, and hears of a lost connection through ``on_lost``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import hpack

from edgebell.apns.auth import ApnsAuth
from edgebell.apns.connection import ApnsConnection, Requeued, StreamFailed
from edgebell.apns.model import APNS_PORT, Environment, Outcome, PushRequest, PushResult, classify
from edgebell.errors import ApnsTransportError
from edgebell.privacy import short_token
from edgebell.tokens import is_device_token

log = logging.getLogger(__name__)

_Header = tuple[bytes, bytes]
# Apple's 410 timestamp is epoch milliseconds; from 2^53 on it is no real time (nor one a
# float or SQLite holds exactly): such a value is treated as absent.
_MAX_TIMESTAMP_MS = 2**53
_POST = (b":method", b"POST")
_HTTPS = (b":scheme", b"https")


@dataclass(frozen=True, slots=True)
class ApnsStatus:
    """The client's part of ``status``: ``sent`` = ``delivered`` + ``failed`` + in flight."""

    connected: dict[str, bool]
    auth: str
    sent: int
    delivered: int
    failed: int  # attempts that did not deliver, whatever the reason (retries count again)
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Target:
    """Where an environment's pushes go."""

    host: str
    port: int
    authority: tuple[bytes, bytes]


class ApnsClient:
    """Sends pushes to APNs; every APNs answer and transport failure becomes a ``PushResult``.

    Connections are opened when a push needs one (or warmed with :meth:`connect`) and
    shared by all sends of an environment. A 5xx answer retires its connection (Apple's
    advice: the retry goes on a fresh one, opened by the next send); when a connection is
    lost (failure, failed health PING, the server's close or GOAWAY)
    ``on_lost(env, reason, abrupt)`` says so (``abrupt``: it died, rather than draining
    after a GOAWAY or a retirement), and the caller decides when to connect again.
    :meth:`send` makes one attempt; a request that never got a stream (its connection
    went away while it queued for a slot) moves to the next connection, once.
    """

    def __init__(
        self,
        *,
        auth: ApnsAuth,
        host_override: str | None = None,
        ca_file: Path | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        ping_interval: float = 60.0,
        on_lost: Callable[[Environment, str, bool], None] | None = None,
    ) -> None:
        self._auth = auth
        self._needs_jwt = auth.mode != "certificate"
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._ping_interval = ping_interval
        self._targets = {env: target(env, host_override) for env in Environment}
        self._ssl = _ssl_context(auth, ca_file)
        self._conns: dict[Environment, ApnsConnection] = {}
        self._retired: list[ApnsConnection] = []  # draining (GOAWAY, 5xx), closed at the end
        self._connecting: dict[Environment, asyncio.Task[ApnsConnection]] = {}
        self.on_lost = on_lost
        self._closed = False
        self._auth_header: tuple[str, tuple[bytes, bytes]] | None = None
        self._sent = 0
        self._delivered = 0
        self._failed = 0
        self._last_error: str | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection; pushes still in flight come back as TRANSPORT."""
        self._closed = True
        for task in self._connecting.values():
            task.cancel()
        conns = [*self._conns.values(), *self._retired]
        self._conns.clear()
        self._retired.clear()
        await asyncio.gather(*(c.aclose() for c in conns))
        await asyncio.gather(*self._connecting.values(), return_exceptions=True)
        await self._auth.aclose()

    @property
    def auth_problem(self) -> str | None:
        """Why the auth mode cannot make a credential now (a JWT the signer did not make)."""
        return self._auth.problem

    async def connect(self, env: Environment) -> None:
        """Make sure ``env`` has a working connection: open one, or PING the one there is.

        Raises ``ApnsTransportError`` when Apple cannot be reached.
        """
        conn = self._conns.get(env)
        if conn is not None and conn.available:
            try:
                await conn.ping(self._request_timeout)
            except ApnsTransportError:
                pass  # that one is gone (and closed): open a new one below
            else:
                return
        await self._connection(env)

    async def send(self, request: PushRequest) -> PushResult:
        """Push once; never raises for APNs answers or transport problems."""
        self._sent += 1
        authorization = self._auth.authorization()
        valid = is_device_token(request.token)
        if authorization is None and self._needs_jwt and valid:
            # None yet (start-up, or Apple called the last one expired): one is being made.
            authorization = await self._auth.wait_authorization()
        if not valid:
            result = _local(request, Outcome.FAILED, "not a device token (16 to 200 hex digits)")
        elif authorization is None and self._needs_jwt:
            why = self._auth.problem or f"{self._auth.mode} auth"
            result = _local(request, Outcome.AUTH_RENEW, f"no provider JWT to send ({why})")
        else:
            result = await self._attempt(request, authorization)
            self._auth.on_result(result, authorization)
        if result.outcome is Outcome.DELIVERED:
            self._delivered += 1
        else:
            self._failed += 1
        log.debug(
            "push %s to %s: %s %s %s",
            request.apns_id,
            short_token(request.token),
            result.outcome.value,
            result.status,
            result.reason or result.detail or "",
        )
        return result

    def status(self) -> ApnsStatus:
        connected = {}
        for env in Environment:
            conn = self._conns.get(env)
            connected[env.value] = conn is not None and conn.alive
        return ApnsStatus(
            connected=connected,
            auth=self._auth.mode,
            sent=self._sent,
            delivered=self._delivered,
            failed=self._failed,
            last_error=self._last_error,
        )

    # -- one attempt ----------------------------------------------------------------------

    async def _attempt(self, request: PushRequest, authorization: str | None) -> PushResult:
        env = request.environment
        headers = self._headers(request, authorization)
        try:
            conn = self._conns.get(env)
            if conn is None or not conn.available:
                conn = await self._connection(env)
            try:
                status, response, body = await conn.request(
                    headers, request.payload, self._request_timeout
                )
            except Requeued:
                # Queued for a stream slot when the connection stopped taking new ones:
                # nothing was sent, so placing it on the next connection is the pool's job
                # (as an HTTP pool does with a full connection), not a retry. Once.
                conn = await self._connection(env)
                status, response, body = await conn.request(
                    headers, request.payload, self._request_timeout
                )
        except ApnsTransportError as exc:
            # A connection that never came up never carried the request.
            unprocessed = exc.unprocessed if isinstance(exc, StreamFailed) else True
            return PushResult(
                request, Outcome.TRANSPORT, None, None, None, None, str(exc), unprocessed
            )
        apns_id = None
        for name, value in response:
            if name == b"apns-id":
                apns_id = value.decode("ascii", "replace")
                break
        if status == 200:
            return PushResult(request, Outcome.DELIVERED, 200, None, None, apns_id, None)
        reason, timestamp = _error_body(body)
        detail = f"APNs answered {status} {reason or '(no reason)'}"
        return PushResult(
            request, classify(status, reason), status, reason, timestamp, apns_id, detail
        )

    def _headers(
        self, request: PushRequest, authorization: str | None
    ) -> list[tuple[bytes, bytes]]:
        auth_header = None
        if authorization is not None:
            cached = self._auth_header
            if cached is None or cached[0] != authorization:
                cached = self._auth_header = (
                    authorization,
                    (b"authorization", authorization.encode("ascii")),
                )
            auth_header = cached[1]
        return request_headers(request, self._targets[request.environment].authority, auth_header)

    # -- connections --------------------------------------------------------------------

    async def _connection(self, env: Environment) -> ApnsConnection:
        """The environment's usable connection; concurrent callers share one connect attempt."""
        if self._closed:
            raise ApnsTransportError("the APNs client is closed")
        conn = self._conns.get(env)
        if conn is not None and conn.available:
            return conn
        task = self._connecting.get(env)
        if task is None:
            task = asyncio.create_task(self._open(env), name=f"apns-connect-{env.value}")
            self._connecting[env] = task
            task.add_done_callback(lambda t: self._connected(env, t))
        # Shielded: one caller giving up must not cancel the attempt the others wait for.
        return await asyncio.shield(task)

    def _connected(self, env: Environment, task: asyncio.Task[ApnsConnection]) -> None:
        if self._connecting.get(env) is task:
            del self._connecting[env]
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have been cancelled

    async def _open(self, env: Environment) -> ApnsConnection:
        target = self._targets[env]
        old = self._conns.pop(env, None)
        if old is not None:
            if old.last_error:
                self._last_error = f"{env.value}: {old.last_error}"
            if not old.closed:
                self._retired.append(old)  # draining after GOAWAY: let its streams finish
        self._retired = [c for c in self._retired if not c.closed]
        try:
            conn = await ApnsConnection.open(
                target.host,
                target.port,
                ssl_context=self._ssl,
                connect_timeout=self._connect_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._request_timeout,
                on_lost=lambda c, reason: self._lost(env, c, reason),
                describe_goaway=_goaway_reason,
                retire_on=_retire_on,
            )
        except ApnsTransportError as exc:
            self._last_error = f"{env.value}: {exc}"
            log.warning("cannot connect to APNs %s: %s", env.value, exc)
            raise
        if self._closed:
            await conn.aclose()
            raise ApnsTransportError("the APNs client is closed")
        self._conns[env] = conn
        log.info("connected to APNs %s at %s", env.value, conn.name)
        return conn

    def _lost(self, env: Environment, conn: ApnsConnection, reason: str) -> None:
        """The connection stopped taking requests by itself: say so; the caller reconnects."""
        if not conn.alive:  # failed; after a GOAWAY or a 5xx it drains (and logged that)
            self._last_error = f"{env.value}: {reason}"
            log.warning("APNs %s connection failed: %s", env.value, reason)
        if conn.retired and conn.alive:
            return  # the pool's own decision (a 5xx): the next push opens the next connection
        if self._conns.get(env) is conn and self.on_lost is not None and not self._closed:
            self.on_lost(env, reason, not conn.alive)


def _local(request: PushRequest, outcome: Outcome, detail: str) -> PushResult:
    """A result decided without asking Apple (nothing was sent)."""
    return PushResult(request, outcome, None, None, None, None, detail, unprocessed=True)


def request_headers(
    request: PushRequest,
    authority: tuple[bytes, bytes],
    authorization: tuple[bytes, bytes] | None,
) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 headers of one push, each marked for HPACK as it should be compressed.

    Pseudo-headers first. Plain tuples enter the connection's HPACK dynamic table: from
    the second request on, the provider JWT, topic and the like are a byte of index
    each. What differs per push (``:path`` holds the device token, ``apns-id``) is a
    never-indexed literal (RFC 7541 section 6.2.3): no token lingers in a table, and
    the table keeps only what repeats. No header on the connection is chosen by anyone
    else, so no guess at the indexed JWT can be compared against it.
    """
    headers: list[tuple[bytes, bytes]] = [
        _POST,
        _HTTPS,
        hpack.NeverIndexedHeaderTuple(b":path", b"/3/device/" + request.token.encode("ascii")),
        authority,
    ]
    if authorization is not None:
        headers.append(authorization)
    headers += (
        (b"apns-topic", request.topic.encode()),
        (b"apns-push-type", request.push_type.encode()),
        (b"apns-priority", b"%d" % request.priority),
        (b"apns-expiration", b"%d" % request.expiration),
        (b"apns-collapse-id", request.collapse_id.encode()),
        hpack.NeverIndexedHeaderTuple(b"apns-id", request.apns_id.encode()),
    )
    return headers


def _retire_on(status: int) -> str | None:
    """Apple's advice for a 5xx: the retry goes on a fresh connection (the streams open on
    this one still get their answers there)."""
    return f"APNs answered {status}" if status >= 500 else None


def _goaway_reason(data: bytes | None) -> str | None:
    """Apple puts ``{"reason": ...}`` in the GOAWAY debug data."""
    if not data:
        return None
    try:
        reason = json.loads(data).get("reason")
    except (ValueError, AttributeError):
        return None
    return reason if isinstance(reason, str) else None


def _error_body(body: bytes) -> tuple[str | None, int | None]:
    """Apple's error JSON: ``reason`` and, for 410, ``timestamp`` (epoch milliseconds)."""
    try:
        document = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    reason = document.get("reason")
    timestamp = document.get("timestamp")
    if (
        not isinstance(timestamp, int)
        or isinstance(timestamp, bool)
        or not 0 <= timestamp < _MAX_TIMESTAMP_MS
    ):
        timestamp = None
    return reason if isinstance(reason, str) else None, timestamp


def target(env: Environment, override: str | None) -> Target:
    """Where ``env``'s pushes go: Apple's host, or ``override`` (``https://host[:port]``)."""
    if override is None:
        host, port = env.host, APNS_PORT
    else:
        parts = urlsplit(override if "://" in override else f"https://{override}")
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"APNs host must look like https://host[:port], not {override!r}")
        host, port = parts.hostname, parts.port or APNS_PORT
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == APNS_PORT else f"{shown}:{port}"
    return Target(host, port, (b":authority", authority.encode("ascii")))


def _ssl_context(auth: ApnsAuth, ca_file: Path | None) -> ssl.SSLContext:
    """Verified TLS (hostname checked), h2 by ALPN; ``ca_file`` adds a trust anchor."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ApnsTransportError(f"cannot load CA file {ca_file}: {exc}") from exc
    ctx.set_alpn_protocols(["h2"])
    auth.configure(ctx)
    return ctx
