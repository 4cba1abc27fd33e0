"""``P/cmd``: the cloud's door to the command service (ping, ring, test-push, resync)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiomqtt import MqttError

from edgebell.apns.model import Outcome, PushResult
from edgebell.cloud.messages import BadCommand, Command, CommandName, cmd_reply, parse_command
from edgebell.errors import EdgebellError
from edgebell.recent import RecentReplies
from edgebell.service import RingResult, UnknownButton, push_result_json

log = logging.getLogger(__name__)

# resync() says whether the retained list is now the one in use, and what happened.
Resync = Callable[[], Awaitable[tuple[bool, str]]]


class CommandTarget(Protocol):
    """What the cloud's commands act on (the gateway's command service)."""

    def ring(self, button: str) -> RingResult:
        """Ring at once (no debounce, no cooldown)."""
        ...

    async def test_push(self, token: str | None) -> Sequence[PushResult]:
        """Push a test notification now; one result per phone."""
        ...


async def answer(
    data: bytes,
    target: CommandTarget,
    resync: Resync,
    *,
    version: str,
    recent: RecentReplies[bytes] | None = None,
) -> bytes:
    """The ``P/cmd/reply`` payload for the ``P/cmd`` message ``data``.

    With ``recent``, a command id seen before (QoS 1 delivers a message again after a
    reconnect; the cloud retries one it had no reply to) gets the first reply again
    instead of a second ring.
    """
    try:
        command = parse_command(data)
    except BadCommand as exc:
        log.warning("refused a cloud command: %s", exc)
        return cmd_reply(exc.command_id, False, str(exc))
    if recent is None:
        return await _answer(command, target, resync, version)
    reply, repeat = await recent.once(command.id, lambda: _answer(command, target, resync, version))
    if repeat:
        log.info("cloud command %s (id %s) again: answered, not run", command.cmd, command.id[:36])
    return reply


async def _answer(command: Command, target: CommandTarget, resync: Resync, version: str) -> bytes:
    log.info("cloud command %s (id %s)", command.cmd, command.id[:36])
    try:
        return await _run(command, target, resync, version)
    except (EdgebellError, MqttError) as exc:
        return cmd_reply(command.id, False, f"{command.cmd} failed: {exc}")
    except Exception:
        log.exception("cloud command %s failed", command.cmd)
        return cmd_reply(command.id, False, f"{command.cmd} failed: internal error (see the log)")


async def _run(command: Command, target: CommandTarget, resync: Resync, version: str) -> bytes:
    match command.cmd:
        case CommandName.PING:
            return cmd_reply(command.id, True, "pong", version=version)
        case CommandName.RING:
            assert command.button is not None  # parse_command refuses a ring without one
            result = target.ring(command.button)
            if isinstance(result, UnknownButton):
                return cmd_reply(command.id, False, f"unknown button {command.button!r}")
            ring = result.ring
            # The contract: the reply's detail carries the ring id.
            return cmd_reply(
                command.id, True, ring.ring_id, ring_id=ring.ring_id, button=ring.button
            )
        case CommandName.TEST_PUSH:
            results = await target.test_push(command.token)
            delivered = sum(1 for r in results if r.outcome is Outcome.DELIVERED)
            ok = bool(results) and delivered == len(results)
            detail = (
                "no phone to push to (the token list is empty)"
                if not results
                else f"{delivered} of {len(results)} delivered"
            )
            return cmd_reply(command.id, ok, detail, results=[push_result_json(r) for r in results])
        case CommandName.RESYNC:
            ok, detail = await resync()
            return cmd_reply(command.id, ok, detail)
