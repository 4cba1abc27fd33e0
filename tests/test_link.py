"""The link's decisions, pure: reconnect and probe, the window of requests, the 5xx pause."""

from __future__ import annotations

import asyncio

import pytest

from edgebell.outbox.agenda import Agenda
from edgebell.outbox.link import MAX_WINDOW, RESTART_WINDOW, Link, LinkState


def make_link() -> Link:
    # Delays that show which attempt asked: reconnect n waits n s, the n-th 5xx pauses n/10 s.
    return Link("sandbox", reconnect_delay=float, pause_delay=lambda n: n / 10)


def send_all(link: Link, now: float = 0.0) -> list[int]:
    """Send while the link allows; the request numbers."""
    sent = []
    while link.may_send(now):
        seq, _ = link.sent()
        sent.append(seq)
    return sent


def test_a_fresh_link_sends_a_full_window() -> None:
    link = make_link()
    assert len(send_all(link)) == MAX_WINDOW


def test_an_abrupt_loss_restarts_small_and_widens_with_each_answer() -> None:
    link = make_link()
    first = send_all(link)
    # The connection dies: the client reports it before its requests fail.
    link.lost(0.0, "connection reset", abrupt=True)
    assert link.state is LinkState.DOWN
    assert link.due_to_connect(0.0)  # the first reconnect goes at once
    for seq in first:  # the failures of the dead connection say nothing more
        link.unanswered(seq, probe=False, processed=True, now=0.0, detail="reset")
    assert link.state is LinkState.DOWN
    link.connecting = True
    link.connected(waiting=True)
    assert link.state is LinkState.PROBING
    [probe] = send_all(link)  # exactly one probe
    link.answered(probe, probe=True, overloaded=False, now=0.0)
    assert link.state is LinkState.UP
    window = send_all(link)
    assert len(window) == RESTART_WINDOW + 1  # the probe's answer widened it by one
    for seq in window:  # one answer each: one more slot each (slow start)
        link.answered(seq, probe=False, overloaded=False, now=0.0)
    assert len(send_all(link)) == 2 * (RESTART_WINDOW + 1)


def test_an_idle_goaway_reconnects_without_shrinking_the_window() -> None:
    link = make_link()
    for seq in send_all(link):
        link.answered(seq, probe=False, overloaded=False, now=0.0)
    link.lost(0.0, "GOAWAY NO_ERROR", abrupt=False)  # nothing in flight: routine
    link.connecting = True
    link.connected(waiting=False)  # nothing waits: no probe needed
    assert link.state is LinkState.UP
    assert len(send_all(link)) == MAX_WINDOW


def test_a_goaway_under_load_restarts_small() -> None:
    link = make_link()
    sent = send_all(link)
    link.lost(0.0, "GOAWAY NO_ERROR", abrupt=False)
    for seq in sent[10:]:  # above the last stream id: certainly not processed
        link.unanswered(seq, probe=False, processed=False, now=0.0, detail="GOAWAY")
    link.connecting = True
    link.connected(waiting=False)
    assert len(send_all(link)) == RESTART_WINDOW


def test_5xx_pauses_the_environment_longer_only_while_nothing_else_comes_back() -> None:
    link = make_link()
    sent = send_all(link)
    for seq in sent[:3]:  # three 503s in a row
        link.answered(seq, probe=False, overloaded=True, now=10.0)
    assert link.paused_until == pytest.approx(10.3)  # the third 5xx in a row: 0.3 s
    assert not link.may_send(10.2)
    link.answered(sent[3], probe=False, overloaded=False, now=10.2)  # a success in between
    link.answered(sent[4], probe=False, overloaded=True, now=10.2)
    assert link.paused_until == pytest.approx(10.3)  # the run of 5xx starts again: 0.1 s
    # Past the pause the window is whole again: the pause, not a shrinking window, is what
    # spares a busy Apple (a storm of random 503s must not crawl).
    assert link.window >= MAX_WINDOW - 1
    assert link.may_send(10.31)


def test_failed_reconnects_back_off_and_a_fresh_ring_hurries_the_next() -> None:
    link = make_link()
    link.connect_failed(0.0, "refused")  # at start: down, the first retry at once
    assert link.due_to_connect(0.0)
    link.connecting = True
    link.connect_failed(0.0, "refused")
    assert not link.due_to_connect(0.5)
    assert link.due_to_connect(1.0)  # reconnect_delay(1)
    link.connecting = True
    link.connect_failed(1.0, "refused")
    assert link.reconnect_at == 3.0  # reconnect_delay(2)
    link.hurry(1.5)
    assert link.due_to_connect(1.5)


class Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stamp = 0
        self.filed = False


@pytest.mark.asyncio
async def test_the_agenda_calls_each_item_once_at_its_latest_filed_time() -> None:
    loop = asyncio.get_running_loop()
    due: list[str] = []
    done = loop.create_future()

    def on_due(item: Item) -> None:
        due.append(item.name)
        if item.name == "last":
            done.set_result(None)

    agenda: Agenda[Item] = Agenda(on_due, loop.time)
    a, b, c, last = Item("a"), Item("b"), Item("c"), Item("last")
    now = loop.time()
    agenda.file(a, now + 0.02)
    agenda.file(b, now + 0.01)
    agenda.file(c, now + 0.01)
    agenda.file(a, now + 0.03)  # refiled: only the later time counts
    agenda.withdraw(c)
    agenda.file(last, now + 0.05)
    await asyncio.wait_for(done, 5.0)
    assert due == ["b", "a", "last"]
    assert len(agenda) == 0
