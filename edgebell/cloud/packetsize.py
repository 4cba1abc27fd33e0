"""MQTT connections that refuse oversize packets before they are buffered: MQTT 5, else 3.1.1.

paho-mqtt (under aiomqtt) reads a packet's length from its header and then buffers
the whole packet before anyone can look at it: a 50 MB message on ``P/cmd`` cost
50 MB (and more) before the 128 KB check of the contract refused it. Neither library
offers a public client-side limit on incoming packets. MQTT 5 has one in the
protocol: the client's CONNECT carries ``Maximum Packet Size`` and the broker must
not send anything larger (Mosquitto drops it for that client). So the gateway
speaks MQTT 5 where the broker does, and falls back to 3.1.1 (no limit the client
can set: the broker's own, e.g. Mosquitto ``max_packet_size`` or AWS IoT's 128 KB,
applies) for a broker that refuses protocol 5.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgebell.cloud.tokenlist import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

# The contract's payload limit plus room for the fixed and variable header (topic, ids,
# properties): the largest packet any message of the contract needs.
MAX_PACKET_BYTES = MAX_MESSAGE_BYTES + 4096
# MQTT 5 keeps a session only for its expiry interval; 3.1.1's clean-session false
# kept it for ever, which this value means in MQTT 5.
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
# CONNACK answers that mean "not this protocol version": 3.1.1's return code 1, MQTT 5's 0x84.
_WRONG_VERSION = frozenset({1, 0x84})

ClientFactory = Callable[..., aiomqtt.Client]


def connect_properties() -> Properties:
    """The MQTT 5 CONNECT properties: the packet size limit and a session kept as in 3.1.1."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.MaximumPacketSize = MAX_PACKET_BYTES
    properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
    return properties


class ProtocolChoice:
    """Which version this broker speaks, learnt once per run: MQTT 5 until it refuses it."""

    def __init__(self) -> None:
        self.mqtt5 = True


class NegotiatedClient:
    """An aiomqtt client context that tries MQTT 5 with the packet limit, then 3.1.1."""

    def __init__(self, make: ClientFactory, choice: ProtocolChoice, **options: Any) -> None:
        self._make = make
        self._choice = choice
        self._options = options
        self._client: aiomqtt.Client | None = None

    async def __aenter__(self) -> aiomqtt.Client:
        if self._choice.mqtt5:
            client = self._make(
                **self._options,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=connect_properties(),
            )
            try:
                self._client = await client.__aenter__()
            except aiomqtt.MqttError as exc:
                if not _maybe_wrong_version(exc):
                    raise
                # Brokers that predate MQTT 5 refuse it (3.1.1's return code 1) or, as
                # RabbitMQ before 3.13 does, never answer the CONNECT: try 3.1.1 at once,
                # and keep to it only if that works.
                self._client = await self._v311()
                self._choice.mqtt5 = False
                log.warning(
                    "the cloud broker does not speak MQTT 5 (%s): using 3.1.1, where only the "
                    "broker's own limit keeps an oversize message from being buffered",
                    exc,
                )
                return self._client
            else:
                return self._client
        self._client = await self._v311()
        return self._client

    async def _v311(self) -> aiomqtt.Client:
        client = self._make(
            **self._options, protocol=aiomqtt.ProtocolVersion.V311, clean_session=False
        )
        return await client.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"NegotiatedClient(mqtt5={self._choice.mqtt5})"


def _maybe_wrong_version(exc: aiomqtt.MqttError) -> bool:
    if isinstance(exc, aiomqtt.MqttCodeError):
        return _code(exc.rc) in _WRONG_VERSION
    return "timed out" in str(exc).lower()


def _code(rc: object) -> int | None:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None
