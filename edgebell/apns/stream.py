"""One HTTP/2 request-response exchange, shaped onto h2's public stream calls.

:class:`ApnsConnection` owns the connection (socket, settings, pings, GOAWAY);
a :class:`Stream` owns one request: its headers and body going out under flow
control, its answer coming in. It never touches the socket: it only queues
frames in h2 for the connection to flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import h2.connection

from edgebell.errors import ApnsTransportError

Headers = Sequence[tuple[bytes, bytes]]
Response = tuple[int, list[tuple[bytes, bytes]], bytes]

# Apple's answers are headers plus a small JSON reason; anything far larger is not APNs.
MAX_RESPONSE_BODY = 64 * 1024


class StreamFailed(ApnsTransportError):
    """A request got no answer; ``unprocessed``: APNs certainly did not act on it (resend it)."""

    def __init__(self, message: str, *, unprocessed: bool = False) -> None:
        super().__init__(message)
        self.unprocessed = unprocessed


class Requeued(StreamFailed):
    """The request never got a stream: the connection stopped taking new ones (GOAWAY, a
    retirement, no stream ids left) while it waited. It may go on another connection."""

    def __init__(self, message: str) -> None:
        super().__init__(message, unprocessed=True)


class Stream:
    """One request, from queued (``sid`` 0) to answered."""

    __slots__ = ("body", "chunks", "future", "headers", "received", "response", "sid")

    def __init__(self, headers: Headers, body: bytes, future: asyncio.Future[Response]) -> None:
        self.headers = headers
        self.body = body  # still to send: trimmed as flow control lets it out
        self.future = future
        self.sid = 0
        self.response: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.received = 0

    def start(self, h2conn: h2.connection.H2Connection, sid: int) -> bool:
        """Queue the headers (and what flow control allows of the body) on stream ``sid``;
        True while some of the body still waits for window."""
        self.sid = sid
        h2conn.send_headers(sid, self.headers, end_stream=not self.body)
        return bool(self.body) and self.send_body(h2conn)

    def send_body(self, h2conn: h2.connection.H2Connection) -> bool:
        """Send what the windows allow; True while some of the body still waits."""
        sid = self.sid
        body = self.body
        window = h2conn.local_flow_control_window(sid)
        frame = h2conn.max_outbound_frame_size
        if len(body) <= window and len(body) <= frame:  # the usual case: one DATA frame
            h2conn.send_data(sid, body, end_stream=True)
            self.body = b""
            return False
        sent = 0
        allowed = min(window, len(body))
        while sent < allowed:
            chunk = body[sent : sent + min(frame, allowed - sent)]
            sent += len(chunk)
            h2conn.send_data(sid, chunk, end_stream=sent == len(body))
        self.body = body[sent:]
        return bool(self.body)

    def take_data(self, data: bytes) -> bool:
        """Keep a piece of the answer's body; False once it is too large to be APNs."""
        self.received += len(data)
        if self.received > MAX_RESPONSE_BODY:
            return False
        self.chunks.append(data)
        return True

    def status(self) -> int | None:
        """The answer's ``:status``, once its headers are in (None if absent or garbled)."""
        for name, value in self.response:
            if name == b":status":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    def answer(self, status: int | None) -> None:
        """The server ended the stream: resolve the future with the answer."""
        if self.future.done():
            return
        if status is None:
            self.future.set_exception(StreamFailed("response without a valid :status"))
            return
        self.future.set_result((status, self.response, b"".join(self.chunks)))

    def fail(self, failure: StreamFailed) -> None:
        if not self.future.done():
            self.future.set_exception(failure)
