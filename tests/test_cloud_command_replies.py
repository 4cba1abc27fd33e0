"""P/cmd replies as the contract words them, from the command service's typed results."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from edgebell.apns.model import Environment, Outcome, PushRequest, PushResult
from edgebell.cloud import commands
from edgebell.recent import RecentReplies
from edgebell.rings import Ring
from edgebell.service import RingAccepted, RingResult, UnknownButton


class Target:
    """The command service's two calls the cloud uses, answering typed results."""

    def __init__(self, results: Sequence[PushResult] = ()) -> None:
        self.rings: list[Ring] = []
        self.results = results

    def ring(self, button: str) -> RingResult:
        if button != "front":
            return UnknownButton(button, ("front",))
        ring = Ring(f"ring-{len(self.rings) + 1}", "front", "Front door", 1000.0, manual=True)
        self.rings.append(ring)
        return RingAccepted(ring, persisted=True)

    async def test_push(self, token: str | None) -> Sequence[PushResult]:
        return self.results


async def no_resync() -> tuple[bool, str]:
    return False, "not connected to the broker"


async def ask(
    target: Target, command: dict[str, object], recent: RecentReplies[bytes] | None = None
) -> dict[str, object]:
    reply = await commands.answer(
        json.dumps(command).encode(), target, no_resync, version="9.9", recent=recent
    )
    answer: dict[str, object] = json.loads(reply)
    return answer


@pytest.mark.asyncio
async def test_ring_reply_carries_the_ring_id_in_detail() -> None:
    target = Target()
    reply = await ask(target, {"id": "7", "cmd": "ring", "button": "front"})
    assert reply == {
        "id": "7",
        "ok": True,
        "detail": "ring-1",
        "ring_id": "ring-1",
        "button": "front",
    }


@pytest.mark.asyncio
async def test_unknown_button_is_not_ok() -> None:
    reply = await ask(Target(), {"id": "8", "cmd": "ring", "button": "gate"})
    assert reply == {"id": "8", "ok": False, "detail": "unknown button 'gate'"}


@pytest.mark.asyncio
async def test_test_push_is_ok_only_when_every_push_was_delivered() -> None:
    request = PushRequest("ab" * 32, Environment.SANDBOX, "t", b"{}", "id", "c", 0)
    delivered = PushResult(request, Outcome.DELIVERED, 200, None, None, "id", None)
    failed = PushResult(request, Outcome.FAILED, 400, "BadTopic", None, "id", "refused")
    reply = await ask(Target([delivered, failed]), {"id": "9", "cmd": "test-push"})
    assert reply["ok"] is False
    assert reply["detail"] == "1 of 2 delivered"
    results = reply["results"]
    assert isinstance(results, list)
    assert [r["outcome"] for r in results] == ["delivered", "failed"]
    assert {r["token"] for r in results} == {"abababab…"}  # never the whole token
    empty = await ask(Target(), {"id": "10", "cmd": "test-push"})
    assert empty["ok"] is False
    assert empty["detail"] == "no phone to push to (the token list is empty)"


@pytest.mark.asyncio
async def test_a_repeated_command_id_gets_the_first_reply_and_rings_once() -> None:
    target = Target()
    recent: RecentReplies[bytes] = RecentReplies()
    first = await ask(target, {"id": "11", "cmd": "ring", "button": "front"}, recent=recent)
    again = await ask(target, {"id": "11", "cmd": "ring", "button": "front"}, recent=recent)
    assert again == first
    assert len(target.rings) == 1
