"""Pytest fixtures and async helpers for the radio tests: a pty receiver, a recorder, a runner."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from edgebell.radio.decoders import default_baudrate
from edgebell.radio.events import BadFrame, Frame, RadioEvent
from edgebell.radio.serial import Opener, SerialReceiver, open_port
from testkit.fake_receiver import FakeReceiver

DEADLINE = 5.0  # generous: only a broken implementation ever waits this long
# Small enough to keep reconnect tests quick, large enough to be a real backoff.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 0.2


# tests/conftest.py imports these two, so every test module can ask for them.
@pytest.fixture
def fake_receiver(tmp_path: Path) -> Iterator[FakeReceiver]:
    """A plugged-in pty receiver at ``tmp_path / "ttyRF"`` that does not answer pings."""
    with FakeReceiver(tmp_path / "ttyRF") as rx:
        yield rx


@pytest.fixture
def rflink_receiver(tmp_path: Path) -> Iterator[FakeReceiver]:
    """A plugged-in pty receiver that answers ``10;PING;`` like RFLink firmware."""
    with FakeReceiver(tmp_path / "ttyRF", answer_pings=True) as rx:
        yield rx


async def wait_until(
    condition: Callable[[], bool], what: str, within: float = DEADLINE, step: float = 0.005
) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` at the deadline."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(step)


class Recorder:
    """An ``on_event`` callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[RadioEvent] = []

    def __call__(self, event: RadioEvent) -> None:
        self.events.append(event)

    @property
    def frames(self) -> list[Frame]:
        return [e for e in self.events if isinstance(e, Frame)]

    @property
    def bad(self) -> list[BadFrame]:
        return [e for e in self.events if isinstance(e, BadFrame)]

    async def wait_frames(self, count: int, within: float = DEADLINE) -> list[Frame]:
        await wait_until(lambda: len(self.frames) >= count, f"{count} frames", within)
        return self.frames

    async def wait_for(
        self, kind: type[RadioEvent], count: int = 1, within: float = DEADLINE
    ) -> None:
        await wait_until(
            lambda: sum(isinstance(e, kind) for e in self.events) >= count,
            f"{count} x {kind.__name__}",
            within,
        )


def make_receiver(
    port: str | Path,
    protocol: str,
    recorder: Recorder,
    *,
    ping_interval: float | None = None,
    ping_timeout: float = 1.0,
    wall_clock: Callable[[], float] = time.time,
    opener: Opener = open_port,
) -> SerialReceiver:
    """A SerialReceiver with test-sized backoff, reporting to ``recorder``."""
    return SerialReceiver(
        str(port),
        protocol,
        default_baudrate(protocol),
        recorder,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        backoff_min=BACKOFF_MIN,
        backoff_max=BACKOFF_MAX,
        wall_clock=wall_clock,
        opener=opener,
    )


@contextlib.asynccontextmanager
async def running(receiver: SerialReceiver, *, connect: bool = True) -> AsyncIterator[None]:
    """Run the receiver in a task for the block (connected first, unless told not to)."""
    task = asyncio.create_task(receiver.run())
    try:
        if connect:
            await asyncio.wait_for(receiver.wait_connected(), DEADLINE)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
