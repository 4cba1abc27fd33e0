"""Telling a broker's refusal from a connection lost by chance (pure state, no broker)."""

from __future__ import annotations

from edgebell.cloud.refusals import Action, Refusals, Request

CMD = Request(Action.SUBSCRIBE, "edgebell/gw/cmd")
RING = Request(Action.PUBLISH, "edgebell/gw/ring")
STATUS = Request(Action.PUBLISH, "edgebell/gw/status")


def test_a_suback_failure_is_a_refusal_at_once_and_an_ack_clears_it() -> None:
    refusals = Refusals()
    refusals.suback_failed(CMD)
    assert refusals.problems() == [
        "the broker refused the subscription to edgebell/gw/cmd: check its ACL"
    ]
    refusals.acknowledged(CMD)
    assert not refusals
    assert refusals.problems() == []


def test_a_connection_closed_twice_on_the_same_request_is_a_refusal() -> None:
    refusals = Refusals()
    assert refusals.closed_during([CMD]) == []  # once: maybe a node went down
    assert refusals.problems() == []
    assert refusals.closed_during([CMD]) == [CMD]
    assert refusals.problems() == [
        "the broker refused the subscription to edgebell/gw/cmd (it closed the connection):"
        " check its ACL"
    ]


def test_a_broker_that_was_away_in_between_proves_nothing() -> None:
    refusals = Refusals()
    refusals.closed_during([RING])
    refusals.connect_failed()  # the node is down: the closure was the node going away
    assert refusals.closed_during([RING]) == []
    assert not refusals


def test_a_closure_with_a_window_in_flight_narrows_to_one_message_at_a_time() -> None:
    refusals = Refusals()
    refusals.closed_during([RING, STATUS])
    assert refusals.narrowing
    assert refusals.closed_during([RING]) == [RING]
    assert refusals.problems() == [
        "the broker refused publishing to edgebell/gw/ring (it closed the connection):"
        " check its ACL"
    ]
    refusals.acknowledged(RING)
    assert not refusals
    assert not refusals.narrowing
