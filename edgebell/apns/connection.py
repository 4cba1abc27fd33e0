"""One HTTP/2 connection to APNs over verified TLS: h2's state machine driven by asyncio."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import ssl
from collections.abc import Callable, Sized
from typing import Any, ClassVar

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from edgebell.apns.encoder import RequestEncoder
from edgebell.apns.h2_goaway import tolerate_goaway
from edgebell.apns.stream import Headers, Requeued, Response, Stream, StreamFailed
from edgebell.errors import ApnsTransportError

log = logging.getLogger(__name__)

__all__ = ["ApnsConnection", "Headers", "Requeued", "Response", "StreamFailed"]

# How long a deliberate close waits for the TLS goodbye before dropping the socket.
CLOSE_GRACE = 1.0
# Streams we keep open on one connection at most, whatever the server allows (Apple
# allows 1,000 once the first request is through).
MAX_OPEN_STREAMS = 1000

_MAX_CONCURRENT = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS


class _CountingH2Connection(h2.connection.H2Connection):
    """h2's connection, counting open streams from our own table instead of walking h2's.

    ``open_outbound_streams`` is public h2 API; h2 itself reads it once per new stream,
    and computes it by walking every stream it still knows: at a few hundred streams in
    flight that walk costs more than the rest of the request. ``ApnsConnection`` knows
    exactly the streams that are open in the RFC's sense (a stream leaves its table only
    once closed: answered after our END_STREAM, or reset either way), so that count is
    returned. h2's own walk is also what forgets closed streams; it still runs, through
    the same public property, once enough of those have piled up.
    """

    def __init__(self, config: h2.config.H2Configuration, open_streams: Sized) -> None:
        super().__init__(config=config)
        self._edgebell_open = open_streams
        self.encoder = RequestEncoder()

    @property
    def open_outbound_streams(self) -> int:
        count = len(self._edgebell_open)
        if len(self.streams) > 2 * count + 128:
            super().open_outbound_streams  # noqa: B018 - h2 forgets closed streams on this walk
        return count


class ApnsConnection(asyncio.Protocol):
    """A client HTTP/2 connection: many concurrent requests, PING health checks, GOAWAY drain.

    Open with :meth:`open`; then :meth:`request` until :attr:`available` turns False, and
    :meth:`aclose`. Every failure surfaces as :class:`StreamFailed` (an ``ApnsTransportError``).
    It only reports: it never resends nor reconnects. :meth:`retire` starts no new stream
    on it, lets open ones finish, then closes it; ``retire_on(status)`` is the pool's rule
    for answers that retire it (a reason, or None), applied before the answer's stream
    slot goes to a waiting request.
    ``on_lost(conn, reason)`` is called once when the connection stops taking new requests
    (a failure, a failed health PING, the server's close or GOAWAY, a retirement, no stream
    ids). ``describe_goaway`` turns a GOAWAY's debug data into words (APNs sends JSON).

    Only h2's public API is used. Header indexing is the caller's choice: a plain tuple
    may enter the HPACK dynamic table (the provider JWT: sent once per connection, then
    an index), an ``hpack.NeverIndexedHeaderTuple`` never does (the device token).
    """

    def __init__(
        self,
        *,
        name: str,
        ping_interval: float,
        ping_timeout: float,
        on_lost: Callable[[ApnsConnection, str], None] | None = None,
        describe_goaway: Callable[[bytes | None], str | None] = lambda _: None,
        retire_on: Callable[[int], str | None] = lambda _: None,
    ) -> None:
        self.name = name
        self._describe_goaway = describe_goaway
        self._retire_on = retire_on
        self._loop = asyncio.get_running_loop()
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._on_lost = on_lost
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            # Apple's answers are a status and a few headers, read by our own code only.
            validate_inbound_headers=False,
            # Our own fixed, lower-case headers: h2's per-request checks would only cost time.
            # Without normalisation h2 also keeps our choice of indexing per header (it would
            # otherwise force "authorization" to never-indexed: the JWT on every request).
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._streams: dict[int, Stream] = {}  # started and not closed, by stream id
        self._h2 = _CountingH2Connection(config, self._streams)
        tolerate_goaway(self._h2)
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[Stream] = collections.deque()
        self._blocked: set[Stream] = set()  # started, body waiting for flow-control window
        self._max_streams = 1  # until the server's SETTINGS say otherwise
        self._limit = 1  # the lower of that and MAX_OPEN_STREAMS
        self._settled: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._draining = False  # GOAWAY received, retired or closing: no new streams
        self._dead: str | None = None  # why no request can succeed any more
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count(1)
        self._health_ping: bytes | None = None
        self._health_timer: asyncio.TimerHandle | None = None
        self.last_error: str | None = None
        self.retired = False  # taken out of use by retire(), not lost

    # -- life cycle -------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        ping_interval: float,
        ping_timeout: float,
        on_lost: Callable[[ApnsConnection, str], None] | None = None,
        describe_goaway: Callable[[bytes | None], str | None] = lambda _: None,
        retire_on: Callable[[int], str | None] = lambda _: None,
    ) -> ApnsConnection:
        """Connect, verify TLS, agree on h2 (ALPN) and wait for the server's SETTINGS."""
        name = f"{host}:{port}"
        conn = cls(
            name=name,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            describe_goaway=describe_goaway,
            retire_on=retire_on,
        )
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=host,
                    ssl_shutdown_timeout=CLOSE_GRACE,
                )
                await asyncio.shield(conn._settled)
        except TimeoutError as exc:
            conn._abort("connect timed out")
            raise ApnsTransportError(
                f"connecting to {name} timed out after {connect_timeout:g} s"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise ApnsTransportError(
                f"TLS to {name}: certificate not trusted: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            raise ApnsTransportError(f"TLS to {name} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise ApnsTransportError(
                f"cannot connect to {name}: {exc.strerror or type(exc).__name__}"
            ) from exc
        except ApnsTransportError:
            conn._abort("connect failed")
            raise
        except BaseException:
            conn._abort("connect cancelled")
            raise
        conn._on_lost = on_lost
        conn._schedule_health_ping()
        return conn

    @property
    def available(self) -> bool:
        """True while new requests may be started on this connection."""
        return self._dead is None and not self._draining

    @property
    def alive(self) -> bool:
        """True until the connection failed or was closed (it may be draining after GOAWAY)."""
        return self._dead is None

    @property
    def closed(self) -> bool:
        return self._lost.done()

    def close(self, reason: str = "closed by edgebell") -> None:
        """Close now: requests still open fail with :class:`StreamFailed`."""
        if self._transport is None:
            self._fail_all(reason)
            return
        try:
            self._h2.close_connection()
            self._flush()
        except h2.exceptions.ProtocolError:
            pass  # already closed at the HTTP/2 level: just drop the socket
        self._fail_all(reason)
        self._transport.close()

    async def aclose(self) -> None:
        """Close, and wait (briefly) until the socket is gone."""
        self.close()
        if not self._lost.done():
            try:
                async with asyncio.timeout(CLOSE_GRACE):
                    await asyncio.shield(self._lost)
            except TimeoutError:
                self._abort("close timed out")
                await asyncio.shield(self._lost)

    def _abort(self, reason: str) -> None:
        self._fail_all(reason)
        if self._transport is not None:
            self._transport.abort()

    # -- requests ---------------------------------------------------------------------

    # The timeout is ours, not asyncio.timeout's: it must also reset the stream on the wire.
    async def request(self, headers: Headers, body: bytes, timeout: float) -> Response:  # noqa: ASYNC109
        """Send one request and return ``(status, headers, body)`` of the answer.

        Waits for a free stream slot if the server's concurrency limit is reached; the
        ``timeout`` covers the wait and the answer. Raises :class:`StreamFailed`.
        """
        if not self.available:
            raise StreamFailed(self._unavailable_reason(), unprocessed=True)
        stream = Stream(headers, body, self._loop.create_future())
        if len(self._streams) < self._limit and not self._waiting:
            self._start(stream)
            self._flush()  # written now, in this event-loop turn: no flush timer
        else:
            self._waiting.append(stream)
        future = stream.future
        timer = self._loop.call_later(timeout, self._expire, stream, timeout)
        try:
            return await future
        finally:
            timer.cancel()
            if future.cancelled() and stream.sid:
                # The caller was cancelled: free the slot (a queued one is skipped anyway).
                self._reset(stream)

    async def ping(self, timeout: float) -> float:  # noqa: ASYNC109
        """Round-trip an HTTP/2 PING; returns seconds. No answer in time closes the connection."""
        if self._dead is not None:
            raise StreamFailed(self._dead)
        started = self._loop.time()
        opaque = self._send_ping()
        future = self._pings[opaque] = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._ping_missed, opaque, timeout)
        try:
            await future
        finally:
            timer.cancel()
            self._pings.pop(opaque, None)
        return self._loop.time() - started

    def _start(self, stream: Stream) -> None:
        h2conn = self._h2
        try:
            sid = h2conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            # 2^30 requests on one connection: time for a new one.
            reason = "connection ran out of stream ids"
            stream.fail(Requeued(reason))
            self.retire(reason)
            return
        try:
            blocked = stream.start(h2conn, sid)
        except h2.exceptions.ProtocolError as exc:
            stream.fail(StreamFailed(f"HTTP/2: {exc}", unprocessed=True))
            return
        self._streams[sid] = stream
        if blocked:
            self._blocked.add(stream)

    def _send_body(self, stream: Stream) -> None:
        if stream.send_body(self._h2):
            self._blocked.add(stream)
        else:
            self._blocked.discard(stream)

    def _release(self) -> None:
        """Start waiting requests while stream slots are free."""
        waiting = self._waiting
        while waiting and len(self._streams) < self._limit and self.available:
            stream = waiting.popleft()
            if not stream.future.done():
                self._start(stream)

    def _finish(self, sid: int) -> Stream | None:
        stream = self._streams.pop(sid, None)
        if stream is not None:
            if stream.body:
                self._blocked.discard(stream)
            if self._waiting:
                self._release()
            elif self._draining and not self._streams:
                self._drained()
        return stream

    def _expire(self, stream: Stream, timeout: float) -> None:
        if stream.future.done():
            return
        if stream.sid == 0:
            stream.future.set_exception(
                StreamFailed(
                    f"no free stream within {timeout:g} s (server allows {self._max_streams})",
                    unprocessed=True,
                )
            )
            return
        self._reset(stream)
        stream.future.set_exception(StreamFailed(f"no answer within {timeout:g} s"))

    def _reset(self, stream: Stream) -> None:
        sid = stream.sid
        if self._streams.get(sid) is not stream:
            return
        if self._dead is None:
            # A ProtocolError: already closed at the HTTP/2 level.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(sid, ErrorCodes.CANCEL)
        self._finish(sid)
        self._flush()  # the reset, and any request that took the freed slot

    # -- pings ------------------------------------------------------------------------

    def _send_ping(self) -> bytes:
        opaque = next(self._ping_ids).to_bytes(8, "big")
        self._h2.ping(opaque)
        self._flush()
        return opaque

    def _ping_missed(self, opaque: bytes, timeout: float) -> None:
        future = self._pings.pop(opaque, None)
        if future is not None and not future.done():
            reason = f"no PING answer within {timeout:g} s"
            future.set_exception(StreamFailed(reason))
            self._die(reason)

    def _schedule_health_ping(self) -> None:
        if self._ping_interval > 0 and self._dead is None:
            self._health_timer = self._loop.call_later(self._ping_interval, self._health_tick)

    def _health_tick(self) -> None:
        self._health_timer = None
        if self._dead is not None:
            return
        # Its answer re-arms the timer (see _on_ping_ack).
        self._health_ping = self._send_ping()
        self._health_timer = self._loop.call_later(self._ping_timeout, self._health_missed)

    def _health_missed(self) -> None:
        self._health_timer = None
        self._die(f"no PING answer within {self._ping_timeout:g} s")

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            self._dead = "the server did not agree to HTTP/2 (ALPN h2)"
            self._settled.set_exception(ApnsTransportError(f"{self.name}: {self._dead}"))
            transport.abort()
            return
        self._transport = transport
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._flush()  # h2 has queued a GOAWAY saying why
            self._die(f"HTTP/2 protocol error: {exc}")
            return
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(self, event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if exc is None:
            reason = "connection closed by the server"
        else:
            reason = f"connection lost: {exc.__class__.__name__}: {exc}"
        self._die(reason)
        if not self._lost.done():
            self._lost.set_result(None)

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        # Writing to a transport that is closing makes asyncio log a warning per write:
        # thousands of lines when a connection dies under a burst. The data is moot then.
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    # -- HTTP/2 events ----------------------------------------------------------------

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.response = event.headers

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        # Give the window back at once, even for a stream we no longer track.
        self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
        stream = self._streams.get(sid)
        if stream is None or event.data is None:
            return
        if not stream.take_data(event.data):
            self._reset(stream)
            stream.fail(StreamFailed("oversized response from the server"))

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        sid = event.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            return
        if stream.body:
            # Answered before our body was all out (a 413): stop sending, close the stream.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(sid, ErrorCodes.CANCEL)
        status = stream.status()
        if status is not None:
            retire = self._retire_on(status)
            if retire is not None:
                self.retire(retire)  # before _finish hands the slot to a waiting request
        self._finish(sid)
        stream.answer(status)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self._finish(event.stream_id)
        if stream is None:
            return
        code = event.error_code
        name = code.name if isinstance(code, ErrorCodes) else str(code)
        # REFUSED_STREAM promises the request was not processed (RFC 9113 section 8.7).
        stream.fail(
            StreamFailed(
                f"stream reset by the server ({name})",
                unprocessed=code == ErrorCodes.REFUSED_STREAM,
            )
        )

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        if not self._blocked:
            return
        if event.stream_id == 0:
            for stream in list(self._blocked):
                self._send_body(stream)
        else:
            one = self._streams.get(event.stream_id)
            if one is not None and one in self._blocked:
                self._send_body(one)

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        changed = event.changed_settings.get(_MAX_CONCURRENT)
        if changed is not None:
            self._max_streams = changed.new_value
            self._limit = min(self._max_streams, MAX_OPEN_STREAMS)
        elif not self._settled.done():
            # No limit announced: the protocol's is unlimited; h2 counts the same way.
            self._max_streams = self._h2.remote_settings.max_concurrent_streams
            self._limit = min(self._max_streams, MAX_OPEN_STREAMS)
        if not self._settled.done():
            self._settled.set_result(None)
        if self._blocked:
            # A larger INITIAL_WINDOW_SIZE grows every stream's window without a WINDOW_UPDATE.
            for stream in list(self._blocked):
                self._send_body(stream)
        if self._waiting:
            self._release()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self._draining = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = event.error_code
        why = code.name if isinstance(code, ErrorCodes) else str(code)
        reason = self._describe_goaway(event.additional_data)
        self.last_error = f"GOAWAY {why}" + (f" ({reason})" if reason else "")
        log.info("APNs %s is going away (%s)", self.name, self.last_error)
        # Streams above last_stream_id were never processed: safe to send again elsewhere.
        unprocessed = [s for sid, s in self._streams.items() if sid > last]
        failure = f"{self.last_error} before the request was processed"
        for stream in unprocessed:
            del self._streams[stream.sid]
            self._blocked.discard(stream)
            if not stream.future.done():
                stream.future.set_exception(StreamFailed(failure, unprocessed=True))
        self._fail_waiting(failure, requeue=True)  # never started: nothing was sent
        self._tell_lost(self.last_error)
        if not self._streams:
            self._drained()

    def _on_ping_ack(self, event: h2.events.PingAckReceived) -> None:
        opaque = event.ping_data
        if opaque == self._health_ping:
            self._health_ping = None
            if self._health_timer is not None:
                self._health_timer.cancel()
            self._schedule_health_ping()
            return
        future = self._pings.pop(opaque, None)
        if future is not None and not future.done():
            future.set_result(None)

    _handlers: ClassVar[dict[type[h2.events.Event], Callable[[Any, Any], None]]] = {
        h2.events.ResponseReceived: _on_response,
        h2.events.DataReceived: _on_data,
        h2.events.StreamEnded: _on_end,
        h2.events.StreamReset: _on_reset,
        h2.events.WindowUpdated: _on_window,
        h2.events.RemoteSettingsChanged: _on_settings,
        h2.events.ConnectionTerminated: _on_goaway,
        h2.events.PingAckReceived: _on_ping_ack,
    }

    # -- failure ----------------------------------------------------------------------

    def retire(self, reason: str) -> None:
        """Start no new stream here: queued requests fail as :class:`Requeued` (for a fresh
        connection), open streams finish, then the connection closes (see :meth:`_finish`)."""
        if not self.available:
            return
        self._draining = True
        self.retired = True
        self.last_error = reason
        log.info("APNs %s: %s, no new streams on this connection", self.name, reason)
        self._fail_waiting(reason, requeue=True)
        self._tell_lost(reason)
        if not self._streams:
            self._drained()

    def _drained(self) -> None:
        """After GOAWAY, the last open stream has finished: say goodbye."""
        if self._transport is not None and self._dead is None:
            self.close(self.last_error or "connection retired")

    def _die(self, reason: str) -> None:
        """The connection cannot be used any more: fail everything, drop the socket."""
        first = self._dead is None
        if first:
            self._dead = reason
            if not self.last_error:
                self.last_error = reason
        self._fail_all(reason)
        if self._transport is not None:
            self._transport.abort()
        if first:
            self._tell_lost(reason)

    def _tell_lost(self, reason: str) -> None:
        callback, self._on_lost = self._on_lost, None  # once per connection
        if callback is not None:
            callback(self, reason)

    def _fail_all(self, reason: str) -> None:
        if self._dead is None:
            self._dead = reason
        self._draining = True
        if self._health_timer is not None:
            self._health_timer.cancel()
            self._health_timer = None
        if not self._settled.done():
            self._settled.set_exception(ApnsTransportError(f"{self.name}: {reason}"))
            self._settled.exception()  # retrieved: open() may already have given up
        streams = list(self._streams.values())
        self._streams.clear()
        self._blocked.clear()
        for stream in streams:
            if not stream.future.done():
                # Sent but unanswered: APNs may or may not have acted on it.
                stream.future.set_exception(StreamFailed(reason))
        self._fail_waiting(reason)
        pings = list(self._pings.values())
        self._pings.clear()
        for future in pings:
            if not future.done():
                future.set_exception(StreamFailed(reason))

    def _fail_waiting(self, reason: str, *, requeue: bool = False) -> None:
        waiting = self._waiting
        while waiting:
            stream = waiting.popleft()
            if not stream.future.done():
                stream.future.set_exception(
                    Requeued(reason) if requeue else StreamFailed(reason, unprocessed=True)
                )

    def _unavailable_reason(self) -> str:
        if self._dead is not None:
            return self._dead
        return self.last_error or "connection is closing"
