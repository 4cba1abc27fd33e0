"""The serial receiver: reads the port without blocking the loop and reopens it when lost."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import serial

from edgebell.backoff import Backoff
from edgebell.errors import RadioError
from edgebell.radio.decoders import StreamDecoder, ping_command
from edgebell.radio.device_access import why_refused
from edgebell.radio.events import BadFrame, Frame, RadioEvent
from edgebell.radio.rflink import Keepalive, PingWatchdog

log = logging.getLogger(__name__)

_T = TypeVar("_T")

READ_SIZE = 4096
# Ports without a file descriptor are read by a thread; this is how often it
# looks up to see whether it should stop (when the port cannot cancel a read).
THREAD_READ_TIMEOUT = 0.1
# A receiver that cannot take a 10-byte PING within this long is stuck.
WRITE_TIMEOUT = 1.0


class SerialPort(Protocol):
    """The part of a pyserial port the receiver uses (an injection point for tests)."""

    timeout: float | None

    def read(self, size: int, /) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def fileno(self) -> int: ...

    @property
    def in_waiting(self) -> int: ...

    def close(self) -> None: ...


Opener = Callable[[str, int], SerialPort]


def open_port(port: str, baudrate: int) -> SerialPort:
    """Open a device path or any pyserial URL exclusively, non-blocking; RadioError if it fails."""
    try:
        return serial.serial_for_url(
            port, baudrate=baudrate, exclusive=True, timeout=0, write_timeout=WRITE_TIMEOUT
        )
    except (OSError, ValueError) as exc:  # SerialException is an OSError
        reason = _describe(exc)
        if getattr(exc, "errno", None) == errno.EPERM:
            cause = why_refused(port)
            reason = reason if cause is None else f"{reason}: {cause}"
        raise RadioError(f"cannot open {port}: {reason}") from exc


def _describe(exc: BaseException) -> str:
    """A short reason for logs and status from whatever pyserial raised."""
    number = getattr(exc, "errno", None)
    if number in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) and "lock" in str(exc):
        return "in use by another program (exclusive lock)"
    if isinstance(number, int) and number > 0:
        # pyserial repeats the port and errno in its message; the OS wording is enough.
        return os.strerror(number)
    text = str(exc) or type(exc).__name__
    if "readiness to read but returned no data" in text:
        return "device disconnected (end of file)"
    return text


@dataclass(frozen=True, slots=True)
class RadioStatus:
    """A snapshot of the receiver for ``status``.

    ``last_frame_at`` is wall-clock epoch seconds; ``reconnects`` counts openings
    after the first; ``last_error`` is the most recent reason the port was lost
    or could not be opened (kept after a successful reconnect, as history).
    """

    connected: bool
    port: str
    last_frame_at: float | None
    frames: int
    bad_frames: int
    reconnects: int
    last_error: str | None


class SerialReceiver:
    """Reads a serial receiver forever: decodes its output and reopens it when lost.

    Each decoded event goes to ``on_event`` synchronously, in the event loop, as
    soon as its line is complete. Ports with a file descriptor (devices,
    ``socket://``) are read with ``loop.add_reader``; other pyserial URLs by a
    thread. The port is lost on a read error, end of file or hang-up (USB
    unplugged), a failed write, or, when the protocol has a ping command (RFLink)
    and ``ping_interval`` is set, when nothing well-formed comes back within
    ``ping_timeout`` of a ping. It is then closed and reopened after an
    exponential backoff with jitter between ``backoff_min`` and ``backoff_max``.
    ``ping_timeout`` should exceed the firmware's boot time (opening an Arduino's
    port resets it).
    """

    def __init__(
        self,
        port: str,
        protocol: str,
        baudrate: int,
        on_event: Callable[[RadioEvent], None],
        *,
        ping_interval: float | None = None,
        ping_timeout: float = 10.0,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        opener: Opener = open_port,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._stream = StreamDecoder.for_protocol(protocol)
        ping = ping_command(protocol)
        if ping_interval is not None and ping is not None:
            # Validates both values up front rather than at the first connection.
            PingWatchdog(ping_interval, ping_timeout, 0.0)
            self._ping: tuple[bytes, float, float] | None = (ping, ping_interval, ping_timeout)
        else:
            self._ping = None
        self._backoff = Backoff(backoff_min, backoff_max, jitter)
        self._backoff_max = backoff_max
        self._port = port
        self._protocol = protocol
        self._baudrate = baudrate
        self._on_event = on_event
        self._clock = clock
        self._wall_clock = wall_clock
        self._opener = opener
        self._connected = asyncio.Event()
        self._watchdog: PingWatchdog | None = None
        self._proved_alive = False
        self._ever_connected = False
        self._running = False
        self._frames = 0
        self._bad_frames = 0
        self._reconnects = 0
        self._last_frame_at: float | None = None
        self._last_error: str | None = None

    @property
    def port(self) -> str:
        return self._port

    def status(self) -> RadioStatus:
        return RadioStatus(
            connected=self._connected.is_set(),
            port=self._port,
            last_frame_at=self._last_frame_at,
            frames=self._frames,
            bad_frames=self._bad_frames,
            reconnects=self._reconnects,
            last_error=self._last_error,
        )

    async def wait_connected(self) -> None:
        """Return once the port is open (at once if it is now)."""
        await self._connected.wait()

    async def run(self) -> None:
        """Open, read and reopen the port until cancelled; closes the port on the way out."""
        if self._running:
            raise RuntimeError("SerialReceiver.run() is already running")
        self._running = True
        try:
            await self._supervise()
        finally:
            self._running = False

    async def _supervise(self) -> None:
        failures = 0
        while True:
            try:
                port = await self._open()
            except (RadioError, OSError) as exc:
                failures += 1
                self._last_error = str(exc)
                # One line when the trouble starts; the retries only at debug.
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "radio: %s; retrying with backoff", exc)
                await asyncio.sleep(self._backoff.next())
                continue
            opened_at = self._clock()
            self._mark_connected(failures)
            failures = 0
            try:
                reason = await self._serve(port)
            finally:
                self._connected.clear()
                await _close(port)
            self._last_error = reason
            log.warning("radio disconnected from %s: %s; reopening", self._port, reason)
            # Only a connection that worked earns a quick retry; one that dies at
            # once (a server that accepts and hangs up) must back off like a failure.
            if self._proved_alive or self._clock() - opened_at >= self._backoff_max:
                self._backoff.reset()
            await asyncio.sleep(self._backoff.next())

    async def _open(self) -> SerialPort:
        # Opening can block (a socket:// connect, an RFC 2217 handshake): not in the loop.
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, self._opener, self._port, self._baudrate)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_abandoned)
            raise

    def _mark_connected(self, failures: int) -> None:
        if self._ever_connected:
            self._reconnects += 1
        after = f" after {failures} failed attempt{'s' if failures > 1 else ''}" if failures else ""
        verb = "reconnected" if self._ever_connected else "connected"
        log.info(
            "radio %s: %s (%s, %d baud)%s",
            verb,
            self._port,
            self._protocol,
            self._baudrate,
            after,
        )
        self._ever_connected = True
        self._proved_alive = False
        self._stream.reset()
        self._connected.set()

    async def _serve(self, port: SerialPort) -> str:
        """Read until the port is lost; returns why."""
        loop = asyncio.get_running_loop()
        link = _Link(loop, port, self._deliver)
        link.start()
        try:
            return await self._keep_alive(port, link.lost)
        finally:
            await link.stop()

    async def _keep_alive(self, port: SerialPort, lost: asyncio.Future[str]) -> str:
        if self._ping is None:
            return await lost
        command, interval, timeout = self._ping
        watchdog = self._watchdog = PingWatchdog(interval, timeout, self._clock())
        try:
            while not lost.done():
                action = watchdog.poll(self._clock())
                if action is Keepalive.DEAD:
                    return f"no answer to PING within {timeout:g} s"
                if action is Keepalive.PING:
                    failure = await _write(port, command)
                    if failure is not None:
                        return failure
                    continue
                delay = max(0.0, watchdog.deadline() - self._clock())
                await asyncio.wait([lost], timeout=delay)
            return lost.result()
        finally:
            self._watchdog = None

    def _deliver(self, data: bytes) -> None:
        for event in self._stream.feed(data):
            if isinstance(event, BadFrame):
                self._bad_frames += 1
            else:
                if isinstance(event, Frame):
                    self._frames += 1
                    self._last_frame_at = self._wall_clock()
                self._proved_alive = True
                if self._watchdog is not None:
                    self._watchdog.alive()
            try:
                self._on_event(event)
            except Exception:
                # The handler's bug must not stop the next press from being read.
                log.exception("radio event handler failed on %r", event)


class _Link:
    """One open port's reading side: a loop reader on its fd, or a thread without one."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        port: SerialPort,
        deliver: Callable[[bytes], None],
    ) -> None:
        self._loop = loop
        self._port = port
        self._deliver = deliver
        self.lost: asyncio.Future[str] = loop.create_future()
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        fd = _fileno(self._port)
        if fd is not None:
            try:
                self._loop.add_reader(fd, self._on_readable)
            except OSError:
                fd = None  # e.g. a regular file, which epoll refuses
        if fd is not None:
            self._fd = fd
            return
        self._port.timeout = THREAD_READ_TIMEOUT
        self._thread = threading.Thread(
            target=self._pump, name="edgebell-radio-reader", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        self._remove_reader()
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        cancel_read = getattr(self._port, "cancel_read", None)
        if callable(cancel_read):
            with contextlib.suppress(Exception):
                cancel_read()
        await asyncio.shield(asyncio.to_thread(thread.join))

    def _lose(self, reason: str) -> None:
        self._remove_reader()
        if not self.lost.done():
            self.lost.set_result(reason)

    def _remove_reader(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None

    def _on_readable(self) -> None:
        try:
            data = self._port.read(READ_SIZE)
        except Exception as exc:  # pyserial and its URL handlers raise a variety
            self._lose(_describe(exc))
            return
        if data:
            self._deliver(data)

    def _pump(self) -> None:
        port = self._port
        while not self._stopping.is_set():
            try:
                data = port.read(port.in_waiting or 1)
            except Exception as exc:
                if not self._stopping.is_set():
                    self._post(self._lose, _describe(exc))
                return
            if data and not self._stopping.is_set():
                self._post(self._deliver, data)

    def _post(self, callback: Callable[[_T], None], arg: _T) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(callback, arg)


def _fileno(port: SerialPort) -> int | None:
    try:
        fd = port.fileno()
    except (OSError, ValueError, AttributeError):
        return None  # URL handlers without one raise io.UnsupportedOperation
    return fd if isinstance(fd, int) and fd >= 0 else None


async def _write(port: SerialPort, data: bytes) -> str | None:
    """Write from a thread (a full output buffer must not stall the loop); the failure or None."""
    try:
        await asyncio.to_thread(port.write, data)
    except Exception as exc:
        return f"write failed: {_describe(exc)}"
    return None


async def _close(port: SerialPort) -> None:
    # Closing a tty waits for its output to drain and pyserial's socket:// sleeps:
    # a thread, shielded so a second cancellation does not leave the port open.
    try:
        await asyncio.shield(asyncio.to_thread(port.close))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("radio: closing the port failed: %s", _describe(exc))


def _close_abandoned(opening: asyncio.Future[SerialPort]) -> None:
    """Close a port whose opening finished after the receiver was cancelled."""
    if opening.cancelled() or opening.exception() is not None:
        return
    with contextlib.suppress(Exception):
        opening.result().close()
