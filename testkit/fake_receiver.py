"""A fake serial receiver on a pseudo-terminal, for tests and the demo (no hardware needed)."""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

RFLINK_PING = b"10;PING;"
RFLINK_PONG = b"20;99;PONG;\r\n"
RFLINK_BANNER = b"20;00;Nodo RadioFrequencyLink - RFLink Gateway V1.1 - R46;\r\n"

_EOL = re.compile(rb"\r\n|\r|\n")
_IDLE_POLL_MS = 10  # while nobody has the port open the master only reports hang-up


class FakeReceiver:
    """A receiver "plugged in" at ``link``: a symlink to the slave side of a fresh pty.

    The daemon opens ``link`` like ``/dev/serial/by-id/...``; the test writes what
    the receiver would print with :meth:`write_line`. :meth:`unplug` closes the
    pty (the reader sees a hang-up) and removes the link, :meth:`plug` makes a new
    pty and points the link at it, like a USB receiver that comes back. A thread
    reads what the host sends (kept in :attr:`received`) and, while
    :attr:`answer_pings` is true, answers RFLink's ``10;PING;`` with ``20;99;PONG;``.

    Works from plain synchronous code and from asyncio tests alike::

        with FakeReceiver(tmp_path / "ttyRF", answer_pings=True) as rx:
            ...  # start the daemon on str(rx.path), wait until it reports the radio up
            rx.write_line("20;01;EV1527;ID=0f7499;SWITCH=04;CMD=ON;")

    Opening a serial port discards input queued before it, so write frames that
    must arrive only once the reader reports itself connected;
    :meth:`wait_opened` only says the port is open.
    """

    def __init__(self, link: str | os.PathLike[str], *, answer_pings: bool = False) -> None:
        self.path = Path(link)
        self.answer_pings = answer_pings
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._received: list[bytes] = []
        self._pings = 0
        self._peer_open = False
        self._master: int | None = None
        self._slave_name: str | None = None
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> FakeReceiver:
        if not self.plugged:
            self.plug()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_name(self) -> str | None:
        """The pty device the link points at now (``/dev/pts/N``), None while unplugged."""
        return self._slave_name

    def plug(self) -> None:
        """Make a new pty and point the link at it: the receiver is (back) on the bus."""
        if self.plugged:
            raise RuntimeError("already plugged in")
        master, slave = os.openpty()
        try:
            # Raw, so line ends pass untouched whoever opens it and however.
            tty.setraw(slave)
            name = os.ttyname(slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            # Nobody holds the slave side: like a real device, it is open only
            # while the host has it open, which is how wait_opened() can tell.
            os.close(slave)
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        staging.symlink_to(name)
        staging.replace(self.path)
        self._wake = os.pipe()
        with self._lock:
            self._master = master
            self._slave_name = name
            self._peer_open = False
        self._thread = threading.Thread(
            target=self._serve, args=(master, self._wake[0]), name="fake-receiver", daemon=True
        )
        self._thread.start()

    def unplug(self) -> None:
        """Pull the receiver out: the host's port hangs up and the link disappears."""
        if not self.plugged:
            return
        assert self._wake is not None
        assert self._thread is not None
        os.write(self._wake[1], b"x")
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            master, self._master = self._master, None
            self._slave_name = None
            self._peer_open = False
            self._changed.notify_all()
        with self._write_lock:
            assert master is not None
            os.close(master)
        for fd in self._wake:
            os.close(fd)
        self._wake = None
        self._thread = None

    def replug(self) -> None:
        """Unplug and plug straight back in (a new pty: the host must reopen)."""
        self.unplug()
        self.plug()

    def close(self) -> None:
        self.unplug()

    # -- the receiver's side -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send raw bytes as the receiver would (no line end added)."""
        with self._write_lock:
            master = self._master
            if master is None:
                raise RuntimeError("the fake receiver is unplugged")
            view = memoryview(data)
            while view:
                view = view[os.write(master, view) :]

    def write_line(self, line: str | bytes, end: bytes = b"\r\n") -> None:
        """Send one line with the firmware's line end (CR LF by default)."""
        self.write((line.encode() if isinstance(line, str) else line) + end)

    def write_banner(self) -> None:
        """Print the RFLink start-up banner, as after a firmware reset."""
        self.write(RFLINK_BANNER)

    # -- what the host did -------------------------------------------------------------

    @property
    def received(self) -> list[bytes]:
        """Lines the host wrote to the receiver so far, without line ends."""
        with self._lock:
            return list(self._received)

    @property
    def pings(self) -> int:
        """How many ``10;PING;`` the host sent (answered or not)."""
        with self._lock:
            return self._pings

    @property
    def peer_open(self) -> bool:
        """Whether the host has the port open right now."""
        with self._lock:
            return self._peer_open

    def wait_opened(self, timeout: float = 5.0) -> None:
        """Block until the host has the port open; TimeoutError after ``timeout`` seconds."""
        self._wait(lambda: self._peer_open, timeout, "the port to be opened")

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Block until the host has closed the port; TimeoutError after ``timeout`` seconds."""
        self._wait(lambda: not self._peer_open, timeout, "the port to be closed")

    def wait_pings(self, count: int, timeout: float = 5.0) -> None:
        """Block until the host has sent ``count`` pings in all; TimeoutError otherwise."""
        self._wait(lambda: self._pings >= count, timeout, f"{count} pings")

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake receiver: gave up waiting for {what}")
                self._changed.wait(left)

    # -- the thread that listens to the host ---------------------------------------------

    def _serve(self, master: int, wake: int) -> None:
        poller = select.poll()
        poller.register(master, select.POLLIN)
        poller.register(wake, select.POLLIN)
        waker = select.poll()
        waker.register(wake, select.POLLIN)
        pending = b""
        while True:
            ready = dict(poller.poll(None if self.peer_open else _IDLE_POLL_MS))
            if wake in ready:
                return
            flags = ready.get(master, 0)
            data = b""
            if flags & select.POLLIN:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    data = b""  # EIO: the host closed its side
            if data:
                self._set_peer_open(True)
                pending = self._take(pending + data)
                continue
            hung_up = bool(flags & (select.POLLHUP | select.POLLERR | select.POLLIN))
            self._set_peer_open(not hung_up)
            if hung_up:
                pending = b""
                if waker.poll(_IDLE_POLL_MS):
                    return

    def _take(self, data: bytes) -> bytes:
        *lines, rest = _EOL.split(data)
        for line in lines:
            if not line:
                continue
            is_ping = line == RFLINK_PING
            with self._lock:
                self._received.append(line)
                self._pings += is_ping
                self._changed.notify_all()
            if is_ping and self.answer_pings:
                with contextlib.suppress(RuntimeError, OSError):
                    self.write(RFLINK_PONG)
        return rest

    def _set_peer_open(self, value: bool) -> None:
        with self._lock:
            if self._peer_open != value:
                self._peer_open = value
                self._changed.notify_all()
