"""The test fixtures' port picker: brokers with two listeners need two different ports."""

from __future__ import annotations

from testkit.mosquitto import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
