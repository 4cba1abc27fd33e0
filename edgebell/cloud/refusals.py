"""Which of the gateway's requests the broker refused, told apart from a connection lost by chance.

Brokers refuse a request their ACL forbids in two ways: Mosquitto, EMQX and AWS
IoT answer a SUBSCRIBE with a failure code in the SUBACK (and drop a forbidden
PUBLISH silently or close the connection); RabbitMQ 3.x closes the connection.
A closed connection alone proves nothing (a node went down, the network broke),
so a request is taken as refused when the broker closes the connection while it
waits for its acknowledgement on two connections in a row; the same request
acknowledged later clears it. Pure state: the sync reports what happened, this
keeps the verdict and words it for ``edgebell status``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"


@dataclass(frozen=True, slots=True)
class Request:
    """One request the broker has not acknowledged yet."""

    action: Action
    topic: str


class Refusals:
    """The broker's refusals as ``status`` shows them; fed by the sync, never by I/O."""

    def __init__(self) -> None:
        self._suspects: frozenset[Request] = frozenset()
        self._refused: dict[Request, bool] = {}  # request -> seen as a closed connection

    def acknowledged(self, request: Request) -> None:
        """The broker took it: whatever was said against it no longer holds."""
        self._refused.pop(request, None)
        if request in self._suspects:
            self._suspects = self._suspects - {request}

    def suback_failed(self, request: Request) -> None:
        """A SUBACK with a failure code: a refusal in so many words."""
        self._refused[request] = False

    def closed_during(self, in_flight: Iterable[Request]) -> list[Request]:
        """The broker closed the connection with ``in_flight`` unacknowledged.

        Returns the requests now taken as refused: those that were also in flight
        when the previous connection closed.
        """
        pending = frozenset(in_flight)
        confirmed = [r for r in pending if r in self._suspects]
        for request in confirmed:
            self._refused[request] = True
        self._suspects = pending
        return sorted(confirmed, key=lambda r: (r.action.value, r.topic))

    def connect_failed(self) -> None:
        """No connection at all: the broker is away, which says nothing about permissions."""
        self._suspects = frozenset()

    @property
    def narrowing(self) -> bool:
        """One message at a time until a suspect is acknowledged: a refusal then names one topic."""
        return any(r.action is Action.PUBLISH for r in self._suspects)

    def problems(self) -> list[str]:
        """One line per refused request, naming its topic and what to check."""
        lines = []
        for request, closed in self._refused.items():
            what = (
                f"the subscription to {request.topic}"
                if request.action is Action.SUBSCRIBE
                else f"publishing to {request.topic}"
            )
            how = " (it closed the connection)" if closed else ""
            lines.append(f"the broker refused {what}{how}: check its ACL")
        return lines

    def __bool__(self) -> bool:
        return bool(self._refused)
