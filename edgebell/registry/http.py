"""A small HTTP/1.1 JSON server on asyncio streams, with h11 doing the protocol.

Enough for an API that apps and a maker's backend call: keep-alive, bodies up
to ``MAX_BODY``, a timeout for idle connections. TLS is a reverse proxy's job
(or a load balancer's), as is usual for such a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h11

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024
IDLE_TIMEOUT = 60.0
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    409: b"Conflict",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: Mapping[str, str] = field(repr=False)  # names lowercased
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    document: Any
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


async def start_http(
    handler: Handler,
    host: str,
    port: int,
    *,
    on_refusal: Callable[[Response], None] = lambda _: None,
) -> asyncio.Server:
    """Serve ``handler``; ``on_refusal`` hears of requests refused before reaching it."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve(handler, reader, writer, on_refusal)
        except (OSError, TimeoutError, h11.ProtocolError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(connection, host, port)


async def _serve(
    handler: Handler,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    on_refusal: Callable[[Response], None],
) -> None:
    conn = h11.Connection(h11.SERVER)
    while True:
        request = await _read_request(conn, reader)
        if request is None:
            return
        if isinstance(request, Response):
            response = request
            on_refusal(response)
        else:
            try:
                response = await handler(request)
            except Exception:  # a bug must answer 500, not drop the connection silently
                log.exception("HTTP %s %s failed", request.method, request.target)
                response = Response(500, {"error": "internal error"})
        body = json.dumps(response.document, ensure_ascii=False).encode() + b"\n"
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            *response.headers,
        ]
        if isinstance(request, Response):
            headers.append(("connection", "close"))
        writer.write(
            conn.send(
                h11.Response(
                    status_code=response.status,
                    headers=headers,
                    reason=_REASONS.get(response.status, b""),
                )
            )
            or b""
        )
        writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        if conn.our_state is h11.MUST_CLOSE or isinstance(request, Response):
            return
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> Request | Response | None:
    """The next request; a Response for one that must be refused; None at the end."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Response(400, {"error": f"bad HTTP request: {exc}"})
        if event is h11.NEED_DATA:
            data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
            conn.receive_data(data)
            if not data and head is None:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return Response(400, {"error": f"the body is larger than {MAX_BODY} bytes"})
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return Request(
                method=head.method.decode("ascii", "replace"),
                target=head.target.decode("ascii", "replace"),
                headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers},
                body=bytes(body),
            )
        elif isinstance(event, h11.ConnectionClosed):
            return None
