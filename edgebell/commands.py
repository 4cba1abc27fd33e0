"""The control socket's commands (status, ring, test-push, learn, reload ...) as JSON lines.

Each command is a call to the :class:`~edgebell.service.CommandService`; this module
only reads the request and words the typed result as the reply ``edgebell`` expects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from edgebell import __version__
from edgebell.control import JSON
from edgebell.control_server import Handler
from edgebell.radio.keys import match_snippet
from edgebell.rings import iso_time
from edgebell.service import CommandService, Heard, Listening, UnknownButton, push_result_json
from edgebell.tokens import is_device_token


class ControlCommands:
    """The control socket's door to the command service."""

    def __init__(self, service: CommandService) -> None:
        self._service = service

    def handlers(self) -> Mapping[str, Handler]:
        return {
            "status": self._cmd_status,
            "ring": self._cmd_ring,
            "test-push": self._cmd_test_push,
            "learn": self._cmd_learn,
            "ping": self._cmd_ping,
            "reload": self._cmd_reload,
            "acknowledge": self._cmd_acknowledge,
        }

    async def _cmd_learn(self, request: JSON) -> AsyncIterator[JSON]:
        async for item in self._service.learn():
            if isinstance(item, Listening):
                yield {"ok": True, "listening": item.port, "connected": item.connected}
            elif isinstance(item, Heard):
                yield _heard_json(item)

    async def _cmd_ping(self, request: JSON) -> JSON:
        return {"ok": True, "version": __version__}

    async def _cmd_status(self, request: JSON) -> JSON:
        return {"ok": True, "status": self._service.status().data}

    async def _cmd_ring(self, request: JSON) -> JSON:
        result = self._service.ring(str(request.get("button", "")))
        if isinstance(result, UnknownButton):
            known = ", ".join(result.known) or "none configured"
            return {"ok": False, "error": f"unknown button {result.button!r} (buttons: {known})"}
        ring = result.ring
        answer: JSON = {"ok": True, "ring_id": ring.ring_id, "button": ring.button}
        answer["persisted"] = result.persisted
        if not result.persisted:
            # Rang from memory: say so, the ring is lost if the daemon stops before Apple has it.
            answer["warning"] = f"not on disk yet: {result.disk_error or 'outbox failing'}"
        return answer

    async def _cmd_reload(self, request: JSON) -> JSON:
        """Re-read the config file now (as SIGHUP does) and answer with the verdict.

        ``edgebell reload`` (the unit's ExecReload=) waits for this answer, so a file the
        daemon refuses makes ``systemctl reload`` fail instead of looking like success.
        """
        verdict = self._service.reload()
        if not verdict.taken:
            return {"ok": False, "file": verdict.file, "error": verdict.error}
        return {"ok": True, "file": verdict.file, "restart_needed": list(verdict.restart_needed)}

    async def _cmd_acknowledge(self, request: JSON) -> JSON:
        return {"ok": True, "acknowledged": self._service.acknowledge()}

    async def _cmd_test_push(self, request: JSON) -> JSON:
        token = request.get("token")
        if token is not None and not (isinstance(token, str) and is_device_token(token)):
            # Nothing is sent (nor counted as sent and failed) for what is no device token.
            return {"ok": False, "error": "token must be hex (16 to 200 digits, even count)"}
        results = await self._service.test_push(token)
        return {"ok": True, "results": [push_result_json(r) for r in results]}


def _heard_json(heard: Heard) -> JSON:
    frame = heard.frame
    return {
        "raw": frame.raw,
        "match": match_snippet(dict(frame.match)),
        "fields": dict(frame.fields),
        "at": iso_time(heard.at),
    }
