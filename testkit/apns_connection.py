"""One stand-in connection: TLS on memory BIOs and an h2 ``H2Connection``, driven by a Protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hpack.hpack
import hpack.huffman_table
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from testkit.apns_rules import MAX_VOIP_PAYLOAD
from testkit.hpack_memo import MemoisingEncoder, hpack_integer, never_indexed_name

log = logging.getLogger(__name__)

Headers = list[tuple[str, str]]

_READ_SIZE = 256 * 1024
# Many streams share the connection window; a big one saves WINDOW_UPDATE round trips.
_CONNECTION_WINDOW = 16 * 1024 * 1024
# Bodies larger than any APNs limit are counted, not kept: the limit check needs
# only the length, and a client sending megabytes must not cost memory.
_KEEP_BODY = MAX_VOIP_PAYLOAD + 1
# Apple may put the error JSON in a GOAWAY's debug data when it ends a connection.
_GOAWAY_DEBUG = b'{"reason":"Shutdown"}'
# After GOAWAY: how long to keep reading (and dropping) what the client still sends.
_LINGER = 2.0


@dataclass(frozen=True, slots=True)
class Request:
    """A request that has fully arrived (headers, body, end of stream)."""

    stream_id: int
    method: str
    path: str
    headers: dict[str, str]
    duplicated: bool
    payload: bytes
    size: int
    received_ns: int


class ConnectionHost(Protocol):
    """What a connection asks of the stand-in that accepted it: knobs, answers, bookkeeping."""

    hang: bool
    delay: float
    goaway_after: int | None
    drop_after: int | None
    max_concurrent_streams: int
    validate_headers: bool

    def track(self, conn: StandInConnection) -> int:
        """Register a new TCP connection: its serial number, or 0 to refuse it."""
        ...

    def untrack(self, conn: StandInConnection) -> None: ...

    def note_tls_failure(self) -> None: ...

    def note_open_streams(self, count: int) -> None: ...

    def note_request(self) -> None: ...

    def respond(self, conn: StandInConnection, request: Request) -> tuple[Headers, bytes]:
        """Decide and record the answer to ``request``: response headers and body."""
        ...


class _H2Server(h2.connection.H2Connection):
    """h2's server connection, counting open streams from a set instead of a walk.

    h2 walks every stream it knows to count the open ones on each new request: at a
    thousand concurrent streams that walk dominates the per-request cost. Here a
    stream joins ``open_ids`` when its HEADERS frame arrives and leaves it on the
    client's RST_STREAM (both frame by frame, so one read holding many frames is
    counted, and refused, as the RFC wants) or once the stand-in answered it with
    END_STREAM or reset it: exactly RFC 9113's open streams. h2's walk,
    which is also what forgets closed streams, runs only once enough have piled up.
    """

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.open_ids: set[int] = set()
        self.encoder = _ResponseEncoder()
        decoder = _RequestDecoder()
        decoder.max_header_list_size = self.decoder.max_header_list_size
        decoder.max_allowed_table_size = self.decoder.max_allowed_table_size
        self.decoder = decoder

    @property
    def open_inbound_streams(self) -> int:
        if len(self.streams) > 2 * len(self.open_ids) + 128:
            self._open_streams(1)  # clean-up of closed streams, amortised
            # and of any stream h2 closed on its own (a stream error it answered itself)
            self.open_ids.intersection_update(self.streams)
        return len(self.open_ids)

    def _receive_headers_frame(
        self, frame: HeadersFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        new = frame.stream_id not in self.streams
        result = super()._receive_headers_frame(frame)
        if new and frame.stream_id in self.streams:
            self.open_ids.add(frame.stream_id)
        return result

    def _receive_rst_stream_frame(
        self, frame: RstStreamFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        # At frame time too: a reset followed by a new stream in one read is legal.
        self.open_ids.discard(frame.stream_id)
        return super()._receive_rst_stream_frame(frame)


class _RequestDecoder(hpack.Decoder):
    """hpack's decoder as one tight loop, with Huffman-coded strings memoised.

    hpack decodes each header through several calls, each with a debug log call, which
    made HPACK the stand-in's largest cost per request after h2's own bookkeeping. This
    loop decodes exactly the same representations (RFC 7541 section 6) with the same
    errors and limits. Decoding Huffman in Python is slow, and some clients send long
    values Huffman-coded on every request without indexing them (nghttp2 never indexes
    ``authorization``, the provider JWT), so the few distinct strings seen are memoised.
    """

    def __init__(self) -> None:
        super().__init__()
        self._huffman: dict[bytes, bytes] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            return super().decode(data, raw)  # h2 always asks for raw bytes
        data = bytes(data)
        view = memoryview(data)
        table = self.header_table
        headers: list[hpack.HeaderTuple] = []
        inflated = 0
        i, end = 0, len(data)
        while i < end:
            first = data[i]
            if first & 0x80:  # indexed field
                index, i = _prefixed(data, view, i, 7)
                header = hpack.HeaderTuple(*table.get_by_index(index))
            elif first & 0x40 or not first & 0x20:  # a literal, indexed or not
                add = bool(first & 0x40)
                index, i = _prefixed(data, view, i, 6 if add else 4)
                if index:
                    name = table.get_by_index(index)[0]
                else:
                    name, i = self._string(data, view, i)
                value, i = self._string(data, view, i)
                if not add and first & 0x10:
                    header = hpack.NeverIndexedHeaderTuple(name, value)
                else:
                    header = hpack.HeaderTuple(name, value)
                if add:
                    table.add(name, value)
            else:  # dynamic table size update
                if headers:
                    raise hpack.HPACKDecodingError(
                        "Table size update not at the start of the block"
                    )
                size, i = _prefixed(data, view, i, 5)
                if size > self.max_allowed_table_size:
                    raise hpack.InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                continue
            headers.append(header)
            inflated += 32 + len(header[0]) + len(header[1])
            if inflated > self.max_header_list_size:
                raise hpack.OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received"
                )
        self._assert_valid_table_size()
        return headers

    def _string(self, data: bytes, view: memoryview, i: int) -> tuple[bytes, int]:
        if i >= len(data):
            raise hpack.HPACKDecodingError("Truncated header block")
        huffman = data[i] & 0x80
        length, i = _prefixed(data, view, i, 7)
        value = data[i : i + length]
        if len(value) != length:
            raise hpack.HPACKDecodingError("Truncated header block")
        if huffman:
            decoded = self._huffman.get(value)
            if decoded is None:
                decoded = hpack.huffman_table.decode_huffman(value)
                if len(self._huffman) >= _HUFFMAN_MEMO_LIMIT:
                    self._huffman.clear()
                self._huffman[value] = decoded
            value = decoded
        return value, i + length


def _prefixed(data: bytes, view: memoryview, i: int, bits: int) -> tuple[int, int]:
    """The integer with a ``bits``-bit prefix at ``data[i]`` and the index after it."""
    mask = (1 << bits) - 1
    value = data[i] & mask
    if value < mask:
        return value, i + 1
    value, consumed = hpack.hpack.decode_integer(view[i:], bits)
    return value, i + consumed


_HUFFMAN_MEMO_LIMIT = 256


class _ResponseEncoder(MemoisingEncoder):
    """hpack's encoder, with the header block of the repeated response headers memoised.

    Encoding header by header in Python was the stand-in's largest cost after parsing:
    every answer repeats ``:status`` (and, for errors, the content headers) and differs
    only in ``apns-id``/``apns-unique-id``. Those go out as raw never-indexed literals (so
    the dynamic table stays as it is); the rest goes through hpack, and once encoding it
    leaves the table unchanged, the same bytes are reused until the table changes.
    """

    def __init__(self) -> None:
        super().__init__(memo_limit=16)

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        pairs = [(_as_bytes(h[0]), _as_bytes(h[1])) for h in headers]
        if self.header_table.resized:
            return self.encode_resized(pairs, _FRESH, huffman)
        shared = []
        fresh = b""
        for name, value in pairs:
            if name in _FRESH:
                fresh += _FRESH[name] + hpack_integer(len(value), 7, 0) + value
            else:
                shared.append((name, value))
        # The shared block holds :status, which must come first.
        return self.encode_shared(shared, huffman) + fresh


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


_FRESH = {name: never_indexed_name(name) for name in (b"apns-id", b"apns-unique-id")}


class _Stream:
    """A request still arriving or waiting for its answer (mutable, per connection)."""

    __slots__ = ("body", "duplicated", "headers", "method", "path", "size", "stream_id")

    def __init__(
        self, stream_id: int, method: str, path: str, headers: dict[str, str], duplicated: bool
    ) -> None:
        self.stream_id = stream_id
        self.method = method
        self.path = path
        self.headers = headers
        self.duplicated = duplicated
        self.body = bytearray()
        self.size = 0


class StandInConnection(asyncio.Protocol):
    """Speaks TLS and HTTP/2 to one client and hands complete requests to the host.

    TLS runs on memory BIOs rather than asyncio's TLS transport so that the
    stand-in sees the raw TCP connection: ``refuse`` closes it before the
    handshake, handshake failures are counted, and each batch of received bytes
    costs exactly one ``transport.write``.
    """

    def __init__(self, host: ConnectionHost, context: ssl.SSLContext) -> None:
        self.serial = 0
        self.client_cn: str | None = None
        """Common name of the client certificate, when one was presented and verified."""
        self.provider_tokens: set[str] = set()
        """Distinct valid JWTs this connection presented (for TooManyProviderTokenUpdates)."""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._host = host
        self._context = context
        self._transport: asyncio.Transport | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None
        self._h2: _H2Server | None = None
        self._streams: dict[int, _Stream] = {}
        self._bodies_waiting: dict[int, bytes] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._out = bytearray()
        self._goaway_last: int | None = None
        self._opened = 0
        self._completed = 0
        self._done = False

    @property
    def cert_verified(self) -> bool:
        return self.client_cn is not None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.serial = self._host.track(self)
        if not self.serial:
            self.abort()
            return
        self._tls = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    def data_received(self, data: bytes) -> None:
        received_ns = time.monotonic_ns()
        if self._done or self._tls is None:
            return
        self._incoming.write(data)
        if self._h2 is None and not self._handshake():
            return
        plaintext, peer_closed = self._read_plaintext()
        if plaintext and not self._feed(plaintext, received_ns):
            return
        self._flush()
        if peer_closed:
            self._close()
        else:
            self._close_after_goaway()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._host.untrack(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # for the host

    def abort(self) -> None:
        """Close the TCP connection at once with a reset, as a crashing server would."""
        self._done = True
        if self._transport is None or self._transport.is_closing():
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0: the peer gets an RST, not an orderly FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    def update_max_concurrent_streams(self, value: int) -> None:
        if self._h2 is None or self._done:
            return
        self._h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: value})
        self._flush()

    # TLS

    def _handshake(self) -> bool:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._write_tls()
            return False
        except (ssl.SSLError, OSError) as exc:
            log.debug("connection %d: TLS handshake failed: %s", self.serial, exc)
            self._host.note_tls_failure()
            self._write_tls()  # the alert tells the client why
            self._close(notify=False)
            return False
        if self._tls.selected_alpn_protocol() != "h2":
            # APNs speaks only HTTP/2, and only after ALPN agreed on it.
            log.debug("connection %d: client did not offer ALPN h2", self.serial)
            self._host.note_tls_failure()
            self._close()
            return False
        self.client_cn = _common_name(self._tls.getpeercert())
        self._start_h2()
        return True

    def _read_plaintext(self) -> tuple[bytes, bool]:
        assert self._tls is not None
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._tls.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLError):
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
        return b"".join(chunks), False

    def _write_tls(self) -> None:
        pending = self._outgoing.read()
        if pending and self._transport is not None and not self._transport.is_closing():
            self._transport.write(pending)

    def _flush(self) -> None:
        if self._done or self._tls is None:
            return
        data = self._h2.data_to_send() if self._h2 is not None else b""
        if self._out:
            data = bytes(self._out) + data
            self._out.clear()
        if data:
            try:
                self._tls.write(data)
            except ssl.SSLError:
                self.abort()
                return
        self._write_tls()

    def _close(self, *, notify: bool = True) -> None:
        """Orderly close: pending output, TLS close_notify, then FIN."""
        if self._done:
            return
        self._flush()
        if notify and self._tls is not None:
            # unwrap() then waits for the peer's close_notify: ours is queued, that is enough.
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            self._write_tls()
        self._done = True
        if self._transport is not None:
            self._transport.close()

    # HTTP/2

    def _start_h2(self) -> None:
        conn = _H2Server(
            h2.config.H2Configuration(
                client_side=False,
                # Bytes: _on_request decodes the few it keeps, once (h2 would chain a generator).
                header_encoding=None,
                validate_inbound_headers=self._host.validate_headers,
                # Our own fixed, lower-case response headers: h2's checks would only cost time.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        # Set before the preface so the advertised limit is also the one enforced from
        # the first frame (update_settings would enforce h2's default 100 until ACKed).
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._host.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(_CONNECTION_WINDOW)
        self._h2 = conn

    def _feed(self, plaintext: bytes, received_ns: int) -> bool:
        """Process one batch of HTTP/2 bytes; False when the connection is gone."""
        conn = self._h2
        assert conn is not None
        try:
            events = conn.receive_data(plaintext)
        except h2.exceptions.TooManyStreamsError:
            # The client ignored SETTINGS_MAX_CONCURRENT_STREAMS: h2 refuses, we record.
            self._host.note_open_streams(conn.open_inbound_streams + 1)
            self._close()
            return False
        except h2.exceptions.ProtocolError:
            self._close()  # h2 has queued the GOAWAY saying why
            return False
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self._on_data(event)
            elif isinstance(event, h2.events.RequestReceived):
                self._on_request(event)
            elif isinstance(event, h2.events.StreamEnded):
                if not self._on_end(event.stream_id, received_ns):
                    return False
            elif isinstance(event, h2.events.StreamReset):
                self._forget(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                self._send_waiting_bodies()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._close()
                return False
        return True

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        conn = self._h2
        assert conn is not None
        assert event.stream_id is not None
        assert event.headers is not None
        stream_id = event.stream_id
        self._opened += 1
        if self._goaway_last is not None and stream_id > self._goaway_last:
            conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            conn.open_ids.discard(stream_id)
            return
        method = path = ""
        headers: dict[str, str] = {}
        duplicated = False
        for name, value in event.headers:
            key = name.decode() if isinstance(name, bytes) else name
            text = value.decode() if isinstance(value, bytes) else value
            if key == ":method":
                method = text
            elif key == ":path":
                path = text
            elif key in headers:
                duplicated = True
            headers[key] = text
        self._streams[stream_id] = _Stream(stream_id, method, path, headers, duplicated)
        self._host.note_open_streams(len(conn.open_ids))
        if self._host.goaway_after is not None and self._opened == self._host.goaway_after:
            self._send_goaway(stream_id)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        conn = self._h2
        assert conn is not None
        assert event.stream_id is not None
        stream = self._streams.get(event.stream_id)
        if stream is not None and event.data:
            stream.size += len(event.data)
            if len(stream.body) < _KEEP_BODY:
                stream.body += event.data[: _KEEP_BODY - len(stream.body)]
        if event.flow_controlled_length:
            # Also for a stream reset meanwhile: h2 then credits only the connection window.
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _on_end(self, stream_id: int, received_ns: int) -> bool:
        stream = self._streams.get(stream_id)
        if stream is None:
            return True
        self._completed += 1
        self._host.note_request()
        if self._host.drop_after is not None and self._completed >= self._host.drop_after:
            self.abort()
            return False
        if self._host.hang:
            return True  # read, never answered: the client has to time out
        request = Request(
            stream_id=stream_id,
            method=stream.method,
            path=stream.path,
            headers=stream.headers,
            duplicated=stream.duplicated,
            payload=bytes(stream.body),
            size=stream.size,
            received_ns=received_ns,
        )
        if self._host.delay > 0:
            loop = asyncio.get_running_loop()
            self._timers[stream_id] = loop.call_later(self._host.delay, self._answer_later, request)
        else:
            self._answer(request)
        return True

    def _answer_later(self, request: Request) -> None:
        self._timers.pop(request.stream_id, None)
        if self._done:
            return
        self._answer(request)
        self._flush()
        self._close_after_goaway()

    def _answer(self, request: Request) -> None:
        conn = self._h2
        assert conn is not None
        stream_id = request.stream_id
        if self._streams.pop(stream_id, None) is None:
            return  # reset by the client while we waited
        headers, body = self._host.respond(self, request)
        try:
            conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                if conn.local_flow_control_window(stream_id) < len(body):
                    self._bodies_waiting[stream_id] = body
                    return
                conn.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            pass  # closed under us (reset, or the client's GOAWAY): nothing to answer
        conn.open_ids.discard(stream_id)

    def _send_waiting_bodies(self) -> None:
        conn = self._h2
        assert conn is not None
        for stream_id, body in list(self._bodies_waiting.items()):
            try:
                if conn.local_flow_control_window(stream_id) < len(body):
                    continue
                conn.send_data(stream_id, body, end_stream=True)
            except h2.exceptions.ProtocolError:
                pass
            del self._bodies_waiting[stream_id]
            conn.open_ids.discard(stream_id)

    def _forget(self, stream_id: int) -> None:
        timer = self._timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()
        self._streams.pop(stream_id, None)
        self._bodies_waiting.pop(stream_id, None)
        if self._h2 is not None:
            self._h2.open_ids.discard(stream_id)

    def _send_goaway(self, last_stream_id: int) -> None:
        """Graceful shutdown like Apple's: GOAWAY now, finish streams up to it, then close.

        The frame is built by hand because h2 considers a connection that sent
        GOAWAY closed and would refuse to answer the streams it still owes.
        """
        conn = self._h2
        assert conn is not None
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        frame.additional_data = _GOAWAY_DEBUG
        self._out += conn.data_to_send()
        self._out += frame.serialize()
        self._goaway_last = last_stream_id

    def _close_after_goaway(self) -> None:
        last = self._goaway_last
        if last is None or self._done:
            return
        if all(stream_id > last for stream_id in self._streams) and not self._bodies_waiting:
            self._linger()

    def _linger(self) -> None:
        """Close after GOAWAY as a real front end does: close_notify and FIN, then drop what
        the client still sends until it closes too. Closing with its late requests unread
        would make the kernel send a TCP reset, which can destroy answers on their way."""
        transport = self._transport
        if transport is None or not transport.can_write_eof():
            self._close()
            return
        self._flush()
        if self._tls is not None:
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()
            self._write_tls()
        self._done = True  # from now on data_received reads and drops
        transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER, transport.close)


def _common_name(peer: Mapping[str, object] | None) -> str | None:
    """The CN of a verified peer certificate (``getpeercert()`` is empty when unverified)."""
    if not peer:
        return None
    subject = peer.get("subject", ())
    if isinstance(subject, tuple):
        for rdn in subject:
            for attribute in rdn:
                if attribute[0] == "commonName":
                    return str(attribute[1])
    return ""
