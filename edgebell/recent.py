"""Answers to recent requests by id: a retried or redelivered command is answered, not run twice."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

RECENT_LIMIT = 256  # far more than the commands a person or the cloud sends within a retry


class RecentReplies(Generic[T]):
    """The results of the last ``limit`` requests, by request id (oldest forgotten first)."""

    def __init__(self, limit: int = RECENT_LIMIT) -> None:
        self._limit = limit
        self._results: OrderedDict[str, asyncio.Future[T]] = OrderedDict()

    async def once(self, request_id: str, run: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run ``run`` for a new id; for an id seen before, its first result. ``(result, repeat)``.

        A repeat that comes while the first is still running waits for the same result.
        A request that failed with an exception is forgotten, so a retry runs it again.
        """
        known = self._results.get(request_id)
        if known is not None:
            return await asyncio.shield(known), True
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._results[request_id] = future
        while len(self._results) > self._limit:
            self._results.popitem(last=False)
        try:
            result = await run()
        except BaseException as exc:
            self._results.pop(request_id, None)
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a repeat that waited gets it, nobody else
            raise
        future.set_result(result)
        return result, False
