"""Backoff delays for retries and reconnects (pure: the random source is passed in)."""

from __future__ import annotations

from collections.abc import Callable


def ceiling(attempt: int, minimum: float, maximum: float) -> float:
    """The upper bound before attempt ``attempt`` (1-based): doubling from minimum up to maximum."""
    return min(maximum, minimum * 2.0 ** min(max(attempt - 1, 0), 60))


def full_jitter(attempt: int, minimum: float, maximum: float, random: Callable[[], float]) -> float:
    """A retry delay anywhere in [minimum / 2, ceiling]: "full jitter".

    It spreads a crowd of retries (a 500-token ring after a 503 storm) over the
    whole window instead of sending them back in lockstep; the small floor keeps a
    retry from landing in the same millisecond as the failure.
    """
    top = ceiling(attempt, minimum, maximum)
    low = min(minimum / 2, top)
    return low + random() * (top - low)


class Backoff:
    """Reconnect delays: doubling with jitter between ``minimum`` and ``maximum``, with a memory."""

    __slots__ = ("_attempt", "_jitter", "_maximum", "_minimum")

    def __init__(self, minimum: float, maximum: float, jitter: Callable[[], float]) -> None:
        """``jitter`` returns a float in [0, 1), like ``random.random``."""
        if minimum <= 0 or maximum < minimum:
            raise ValueError("backoff needs 0 < minimum <= maximum")
        self._minimum = minimum
        self._maximum = maximum
        self._jitter = jitter
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to ``maximum``."""
        self._attempt += 1
        top = ceiling(self._attempt, self._minimum, self._maximum)
        # Half fixed, half random: retries still grow, yet gateways that lost the
        # same USB hub (or server) at once do not all come back in step.
        return max(self._minimum, top / 2 + self._jitter() * top / 2)

    def reset(self) -> None:
        self._attempt = 0
