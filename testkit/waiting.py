"""Waiting on a condition that another process brings about: a poll with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL = 0.02  # short: the wait ends moments after the condition holds


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = POLL,
) -> T:
    """``predicate()``'s first true value; AssertionError naming ``what`` after ``timeout`` s.

    For conditions nothing signals (a file another process writes, a line in its log);
    where there is an event or a condition variable, wait on that instead. ``what``
    may be a callable, so diagnostics (a log tail) are read only on a timeout.
    """
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            told = what() if callable(what) else what
            raise AssertionError(f"not within {timeout:g} s: {told}")
        time.sleep(interval)
    return value


async def eventually(
    predicate: Callable[[], T],
    within: float,
    what: str | Callable[[], str],
    *,
    interval: float = POLL,
) -> T:
    """:func:`wait_until` for a test on the event loop: the loop runs while it waits."""
    deadline = time.monotonic() + within
    while not (value := predicate()):
        if time.monotonic() > deadline:
            told = what() if callable(what) else what
            raise AssertionError(f"not within {within:g} s: {told}")
        await asyncio.sleep(interval)
    return value
