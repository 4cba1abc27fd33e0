"""The gateway's commands (ring, test push, reload, status, learn) with typed results.

One service, two doors: the control socket (``edgebell`` commands, see
:mod:`edgebell.commands`) and the cloud's ``P/cmd`` (:mod:`edgebell.cloud.commands`)
each turn its requests into calls here and the typed results into their own replies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edgebell.apns.model import Outcome, PushRequest, PushResult
from edgebell.config import Config
from edgebell.control import JSON
from edgebell.outbox.dispatcher import push_request
from edgebell.outbox.store import OutboxStore
from edgebell.privacy import short_token
from edgebell.radio.events import Frame
from edgebell.ringpath import RingPath
from edgebell.rings import Notification, Ring, new_id
from edgebell.status import ConfigState, StatusReport
from edgebell.tokens import AuthorisedToken, TokenBook

log = logging.getLogger(__name__)

LEARN_QUEUE = 100  # frames kept for one `edgebell learn` that reads slowly (memory bound)


@dataclass(frozen=True, slots=True)
class RingAccepted:
    """A ring from a person (CLI, cloud); ``persisted``: its rows are on disk."""

    ring: Ring
    persisted: bool
    disk_error: str | None = None  # why not on disk yet, when not persisted


@dataclass(frozen=True, slots=True)
class UnknownButton:
    """A ring asked for a button that is not configured."""

    button: str
    known: tuple[str, ...]


RingResult = RingAccepted | UnknownButton


@dataclass(frozen=True, slots=True)
class ReloadVerdict:
    """What a reload did: taken (``restart_needed`` names what waits) or refused (``error``)."""

    taken: bool
    file: str
    error: str | None = None
    restart_needed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Listening:
    """``learn``'s first answer: which port it listens on and whether the receiver is there."""

    port: str
    connected: bool


@dataclass(frozen=True, slots=True)
class Heard:
    """A frame that matches no button, and when it came (epoch seconds)."""

    frame: Frame
    at: float


class Sender(Protocol):
    """Sends one push now and says what Apple answered (the APNs client)."""

    async def send(self, request: PushRequest) -> PushResult: ...


class DeadTokens(Protocol):
    """Learns from a test push what a ring would (the dispatcher)."""

    def token_dead(self, n: Notification, result: PushResult) -> None: ...


class CommandService:
    """What the control socket and the cloud may ask of one running gateway."""

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        ring_path: RingPath,
        store: OutboxStore,
        tokens: TokenBook,
        sender: Sender,
        dead_tokens: DeadTokens,
        status: Callable[[], StatusReport],
        reload: Callable[[], bool],
        config_state: Callable[[], ConfigState],
        receiver_connected: Callable[[], bool],
    ) -> None:
        # A getter, not the config: a reload replaces it.
        self._config = config
        self._ring_path = ring_path
        self._store = store
        self._tokens = tokens
        self._sender = sender
        self._dead_tokens = dead_tokens
        self._status = status
        self._reload = reload
        self._config_state = config_state
        self._receiver_connected = receiver_connected
        self._learners: set[asyncio.Queue[Heard]] = set()

    def status(self) -> StatusReport:
        return self._status()

    def ring(self, button: str) -> RingResult:
        """Ring ``button`` now (no debounce, no cooldown)."""
        ring = self._ring_path.ring_button(button)
        if ring is None:
            return UnknownButton(button, tuple(b.id for b in self._ring_path.rules.tracker.buttons))
        if self._store.is_durable(ring.ring_id):
            return RingAccepted(ring, persisted=True)
        # Rung from memory: the ring is lost if the daemon stops before Apple has it.
        return RingAccepted(ring, persisted=False, disk_error=self._store.health().last_error)

    def acknowledge(self) -> list[str]:
        """The operator has seen the losses status names: clear those notices."""
        said = self._store.acknowledge()
        for notice in said:
            log.warning("acknowledged by the operator: %s", notice)
        return said

    def reload(self) -> ReloadVerdict:
        """Re-read the config file now, as SIGHUP does."""
        taken = self._reload()
        state = self._config_state()
        if not taken:
            return ReloadVerdict(False, state.file, state.reload_error)
        return ReloadVerdict(True, state.file, restart_needed=tuple(state.restart_needed))

    async def test_push(self, token: str | None) -> Sequence[PushResult]:
        """Push a test notification now (no queue, no retry); one result per phone."""
        config = self._config()
        if token is not None:
            token = token.lower()
            entry = self._tokens.get(token)
            targets = [entry or AuthorisedToken(token, config.apns.environment)]
        else:
            targets = self._tokens.active()
        ring = Ring(new_id(), "test", "test push", time.time(), manual=True)
        notifier = self._ring_path.rules.notifier
        payload = notifier.payload(
            ring, title="edgebell test", body="Test push from your doorbell gateway"
        )
        notifications = notifier.fan_out(ring, targets, payload=payload)
        topic = config.apns.topic
        results = await asyncio.gather(
            *(self._sender.send(push_request(n, topic)) for n in notifications)
        )
        for n, result in zip(notifications, results, strict=True):
            if result.outcome is Outcome.TOKEN_DEAD:
                self._dead_tokens.token_dead(n, result)  # a test push learns what a ring would
        return results

    # -- learn --------------------------------------------------------------------------------

    def tell_learners(self, frame: Frame) -> None:
        """Pass a frame that matches no button to every ``edgebell learn`` listening."""
        if not self._learners:
            log.debug("frame matches no button: %s", frame.raw)
            return
        heard = Heard(frame, time.time())
        for queue in self._learners:
            if queue.qsize() < LEARN_QUEUE:  # a stuck client must not grow memory
                queue.put_nowait(heard)

    async def learn(self) -> AsyncIterator[Listening | Heard]:
        """Where it listens, then each frame that matches no button until the caller stops."""
        queue: asyncio.Queue[Heard] = asyncio.Queue()
        self._learners.add(queue)
        try:
            yield Listening(self._config().radio.port, self._receiver_connected())
            while True:
                yield await queue.get()
        finally:
            self._learners.discard(queue)


def push_result_json(result: PushResult) -> JSON:
    """One test push's result as both doors word it (the token shortened)."""
    return {
        "token": short_token(result.request.token),
        "env": result.request.environment.value,
        "outcome": result.outcome.name.lower(),
        "status": result.status,
        "reason": result.reason,
        "detail": result.detail,
    }
