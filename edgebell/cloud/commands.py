"""``P/cmd``: run the cloud's commands (ping, ring, test-push, resync) and word the replies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiomqtt import MqttError

from edgebell.cloud.messages import BadCommand, Command, cmd_reply, parse_command
from edgebell.errors import EdgebellError
from edgebell.recent import RecentReplies
from edgebell.rings import Ring

log = logging.getLogger(__name__)

# resync() says whether the retained list is now the one in use, and what happened.
Resync = Callable[[], Awaitable[tuple[bool, str]]]


class CommandTarget(Protocol):
    """What commands act on: the daemon's own ring and test-push."""

    def ring_button(self, button: str) -> Ring | None:
        """Ring at once (no debounce, no cooldown); None for an unknown button."""
        ...

    async def test_push(self, token: Any) -> list[dict[str, Any]]:
        """Push a test notification now; one outcome per token (tokens shortened)."""
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
    if command.cmd == "ping":
        return cmd_reply(command.id, True, "pong", version=version)
    if command.cmd == "ring":
        assert command.button is not None
        ring = target.ring_button(command.button)
        if ring is None:
            return cmd_reply(command.id, False, f"unknown button {command.button!r}")
        # The contract: the reply's detail carries the ring id.
        return cmd_reply(command.id, True, ring.ring_id, ring_id=ring.ring_id, button=ring.button)
    if command.cmd == "test-push":
        results = await target.test_push(command.token)
        delivered = sum(1 for r in results if r.get("outcome") == "delivered")
        ok = bool(results) and delivered == len(results)
        detail = (
            "no phone to push to (the token list is empty)"
            if not results
            else f"{delivered} of {len(results)} delivered"
        )
        return cmd_reply(command.id, ok, detail, results=results)
    if command.cmd == "resync":
        ok, detail = await resync()
        return cmd_reply(command.id, ok, detail)
    raise BadCommand(f"unknown command {command.cmd!r}", command.id)
