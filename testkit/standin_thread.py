"""An ApnsStandIn on its own event loop in a background thread, for sync tests and subprocesses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from testkit.apns_standin import ApnsStandIn, ReceivedPush

if TYPE_CHECKING:
    from testkit.pki import TestPki

T = TypeVar("T")

_START_TIMEOUT = 10.0
_CALL_TIMEOUT = 10.0


class StandInThread:
    """Runs ``ApnsStandIn(**kwargs)`` in a thread; every method here is safe from any thread.

    ``with StandInThread(certfile=..., keyfile=...) as apns:`` starts it and stops it.
    Reads go through the stand-in's own loop, so snapshots are consistent.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._standin: ApnsStandIn | None = None
        self._error: BaseException | None = None
        self._port = 0
        self._url = ""

    @classmethod
    def for_pki(cls, pki: TestPki, *, topic: str, **kwargs: Any) -> Self:
        """A stand-in serving ``pki``'s server certificate and trusting its APNs auth key."""
        return cls(
            certfile=pki.server.cert,
            keyfile=pki.server.key,
            topic=topic,
            auth_keys=pki.auth_key.auth_keys(),
            **kwargs,
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the thread and return once the stand-in listens (or raise why it could not)."""
        if self._thread is not None:
            raise RuntimeError("the stand-in thread is already started")
        self._thread = threading.Thread(target=self._run, name="apns-standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("the APNs stand-in did not start in time")
        if self._error is not None:
            self._thread.join(_START_TIMEOUT)
            raise self._error
        return self

    def stop(self) -> None:
        """Close the stand-in and join the thread; idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            thread.join(_START_TIMEOUT)
        self._thread = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return self._url

    def call(self, fn: Callable[[ApnsStandIn], T]) -> T:
        """Run ``fn(standin)`` on the stand-in's loop and return its result."""
        standin, loop = self._standin, self._loop
        if standin is None or loop is None or self._thread is None:
            raise RuntimeError("the stand-in thread is not running")

        async def run() -> T:
            return fn(standin)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(_CALL_TIMEOUT)

    def received(self) -> list[ReceivedPush]:
        """A copy of the requests answered 200 so far."""
        return self.call(lambda standin: list(standin.received))

    def responses(self, *, no_device: bool = False) -> list[ReceivedPush]:
        """A copy of every answered request so far to a device's token.

        Requests to a token no device has (edgebell's credentials check) are left out
        unless ``no_device``: they are no ring's pushes.
        """
        return self.call(lambda standin: [r for r in standin.responses if no_device or r.to_device])

    def set(self, **knobs: Any) -> None:
        """Change knobs (see ``apns_standin.KNOBS``) between two requests of the stand-in."""
        self.call(lambda standin: standin.set(**knobs))

    def wait_for(self, predicate: Callable[[ApnsStandIn], object], timeout: float = 5.0) -> None:
        """Block until ``predicate(standin)`` (evaluated on the stand-in's loop) is true.

        Raises AssertionError with a summary of the stand-in's state after ``timeout``.
        """
        standin, loop = self._standin, self._loop
        if standin is None or loop is None or self._thread is None:
            raise RuntimeError("the stand-in thread is not running")
        future = asyncio.run_coroutine_threadsafe(standin.wait_for(predicate, timeout), loop)
        future.result(timeout + _CALL_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to start(), which raises it in the caller
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ApnsStandIn(**self._kwargs) as standin:
            self._standin = standin
            self._port = standin.port
            self._url = standin.url
            self._ready.set()
            await self._stop.wait()
