"""The control socket's commands (status, ring, test-push, learn, reload ...), run by the daemon."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from edgebell import __version__
from edgebell.apns.model import Outcome, PushResult
from edgebell.control import JSON
from edgebell.control_server import Handler
from edgebell.outbox.dispatcher import push_request
from edgebell.privacy import short_token
from edgebell.radio.events import Frame
from edgebell.radio.keys import match_snippet
from edgebell.rings import Ring, iso_time, new_id
from edgebell.tokens import AuthorisedToken, is_device_token

if TYPE_CHECKING:  # the daemon imports this module to wire it up
    from edgebell.daemon import Daemon

log = logging.getLogger(__name__)


class ControlCommands:
    """What ``edgebell`` commands can ask of one running daemon, and who listens for ``learn``."""

    def __init__(self, daemon: Daemon) -> None:
        # The daemon, not its parts: a reload replaces its tracker, notifier and config.
        self._daemon = daemon
        self._learners: set[asyncio.Queue[JSON]] = set()

    def handlers(self) -> Mapping[str, Handler]:
        return {
            "status": self._cmd_status,
            "ring": self._cmd_ring,
            "test-push": self._cmd_test_push,
            "learn": self._cmd_learn,
            "ping": self._cmd_ping,
            "reload": self._cmd_reload,
        }

    # -- learn ----------------------------------------------------------------------------------

    def tell_learners(self, frame: Frame) -> None:
        """Pass a frame that matches no button to every ``edgebell learn`` listening."""
        if not self._learners:
            log.debug("frame matches no button: %s", frame.raw)
            return
        message: JSON = {
            "raw": frame.raw,
            "match": match_snippet(dict(frame.match)),
            "fields": dict(frame.fields),
            "at": iso_time(time.time()),
        }
        for queue in self._learners:
            if queue.qsize() < 100:  # a stuck client must not grow memory
                queue.put_nowait(message)

    async def _cmd_learn(self, request: JSON) -> AsyncIterator[JSON]:
        daemon = self._daemon
        queue: asyncio.Queue[JSON] = asyncio.Queue()
        self._learners.add(queue)
        try:
            connected = daemon.receiver is not None and daemon.receiver.status().connected
            yield {"ok": True, "listening": daemon.config.radio.port, "connected": connected}
            while True:
                yield await queue.get()
        finally:
            self._learners.discard(queue)

    # -- one-reply commands ------------------------------------------------------------------------

    async def _cmd_ping(self, request: JSON) -> JSON:
        return {"ok": True, "version": __version__}

    async def _cmd_status(self, request: JSON) -> JSON:
        return {"ok": True, "status": self._daemon.status().data}

    async def _cmd_ring(self, request: JSON) -> JSON:
        button_id = str(request.get("button", ""))
        ring = self._daemon.ring_button(button_id)
        if ring is None:
            known = ", ".join(b.id for b in self._daemon.tracker.buttons) or "none configured"
            return {"ok": False, "error": f"unknown button {button_id!r} (buttons: {known})"}
        answer: JSON = {"ok": True, "ring_id": ring.ring_id, "button": ring.button}
        if not self._daemon.store.is_durable(ring.ring_id):
            # Rang from memory: say so, the ring is lost if the daemon stops before Apple has it.
            answer["persisted"] = False
            answer["warning"] = (
                f"not on disk yet: {self._daemon.store.health().last_error or 'outbox failing'}"
            )
        else:
            answer["persisted"] = True
        return answer

    async def _cmd_reload(self, request: JSON) -> JSON:
        """Re-read the config file now (as SIGHUP does) and answer with the verdict.

        ``edgebell reload`` (the unit's ExecReload=) waits for this answer, so a file the
        daemon refuses makes ``systemctl reload`` fail instead of looking like success.
        """
        taken = self._daemon.reload()
        state = self._daemon.config_state
        if not taken:
            return {"ok": False, "file": state.file, "error": state.reload_error}
        return {"ok": True, "file": state.file, "restart_needed": list(state.restart_needed)}

    async def _cmd_test_push(self, request: JSON) -> JSON:
        token = request.get("token")
        if token is not None and not (isinstance(token, str) and is_device_token(token)):
            # Nothing is sent (nor counted as sent and failed) for what is no device token.
            return {"ok": False, "error": "token must be hex (16 to 200 digits, even count)"}
        results = await self.test_push(token)
        return {"ok": True, "results": results}

    async def test_push(self, token: Any) -> list[JSON]:
        """Push a test notification now (no queue, no retry) and say what Apple answered."""
        daemon = self._daemon
        assert daemon.client is not None
        if token is not None:
            token = str(token).lower()
            entry = daemon.tokens.get(token)
            targets = [entry or AuthorisedToken(token, daemon.config.apns.environment)]
        else:
            targets = daemon.tokens.active()
        ring = Ring(new_id(), "test", "test push", time.time(), manual=True)
        payload = daemon.notifier.payload(
            ring, title="edgebell test", body="Test push from your doorbell gateway"
        )
        notifications = daemon.notifier.fan_out(ring, targets, payload=payload)
        topic = daemon.config.apns.topic
        results = await asyncio.gather(
            *(daemon.client.send(push_request(n, topic)) for n in notifications)
        )
        assert daemon.dispatcher is not None
        for n, result in zip(notifications, results, strict=True):
            if result.outcome is Outcome.TOKEN_DEAD:
                daemon.dispatcher.token_dead(n, result)  # a test push learns what a ring would
        return [_result_json(r) for r in results]


def _result_json(result: PushResult) -> JSON:
    return {
        "token": short_token(result.request.token),
        "env": result.request.environment.value,
        "outcome": result.outcome.name.lower(),
        "status": result.status,
        "reason": result.reason,
        "detail": result.detail,
    }
