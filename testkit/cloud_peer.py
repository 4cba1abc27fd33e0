"""The cloud's side of the MQTT contract, for tests, the demo and benchmarks (paho in a thread).

It connects with the cloud's client certificate, records every message on the
topics it subscribes to, publishes token lists, commands and provider JWTs, and
waits for conditions with deadlines. Its methods are safe from any thread.

Like the cloud it stands in for, it answers every ``P/hello`` it hears: with the
gateway's current list (``set_list``) on ``P/tokens`` when the gateway's
``tokens_ver`` is another, and with the fleet JWT (``set_fleet_jwt``) on
``P/apns-jwt`` to a gateway it delegates APNs auth for (``delegate``).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import jwt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgebell.cloud.messages import parse_hello
from edgebell.cloud.topics import HELLO, Topics, fleet_jwt_topic, gateway_of
from edgebell.errors import CloudError
from testkit.pki import CertFiles

_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Received:
    """One message the peer received; ``at_ns`` is ``time.monotonic_ns()`` on arrival."""

    topic: str
    payload: bytes
    retain: bool
    at_ns: int

    def json(self) -> Any:
        return json.loads(self.payload)


class CloudPeer:
    """``with CloudPeer(host, port, ca=..., identity=...) as cloud:`` connects and subscribes.

    ``subscribe`` topics (wildcards allowed) are subscribed again after every
    reconnect, which paho makes by itself after a broker restart.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ca: Path,
        identity: CertFiles,
        subscribe: Sequence[str] = ("edgebell/#",),
        client_id: str | None = None,
        clean_session: bool = True,
        prefix: str = "edgebell",
    ) -> None:
        self.identity = identity
        self.prefix = prefix
        self._lists: dict[str, tuple[int, str]] = {}
        self._fleet_jwt: str | None = None
        self._delegated: set[str] = set()
        self.hello_answers: list[tuple[str, str]] = []  # (gateway id, "tokens" | "apns-jwt")
        self._host = host
        self._port = port
        self._topics = tuple(subscribe)
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._connected = False
        self._subscribed = False
        self.connects = 0
        self._connect_error: str | None = None
        self._pending_sub: int | None = None
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or identity.common_name,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(identity.cert, identity.key)
        self._client.tls_set_context(context)
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------

    def connect(self, timeout: float = _TIMEOUT) -> Self:
        """Connect and return once the subscriptions are acknowledged."""
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        try:
            self.wait_subscribed(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_subscribed(self, timeout: float = _TIMEOUT) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._subscribed or self._connect_error is not None, timeout
            )
            if self._connect_error is not None:
                raise ConnectionError(f"broker refused the cloud peer: {self._connect_error}")
            if not ok:
                raise TimeoutError("the cloud peer did not connect and subscribe in time")

    def wait_reconnected(self, connects: int, timeout: float = _TIMEOUT) -> None:
        """Block until the peer has connected ``connects`` times and is subscribed again."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self.connects >= connects and self._subscribed, timeout
            ):
                raise TimeoutError(f"the cloud peer did not reconnect ({self.connects} connects)")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- publishing --------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        retain: bool = False,
        qos: int = 1,
        timeout: float = _TIMEOUT,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic} not acknowledged (rc {info.rc})")

    def publish_json(self, topic: str, document: Any, *, retain: bool = False) -> None:
        self.publish(topic, json.dumps(document), retain=retain)

    # -- the cloud's state, and its answer to hello -----------------------------------------

    def set_list(self, gateway_id: str, jws: str, *, publish: bool = True) -> int:
        """Make ``jws`` the gateway's current list (its ``ver`` returned) and publish it retained.

        ``publish=False`` changes the list without publishing: the gateway gets it
        only by saying hello, as one whose broker lost the retained message would.
        """
        ver = int(jwt.decode(jws, options={"verify_signature": False})["ver"])
        with self._cond:
            self._lists[gateway_id] = (ver, jws)
        if publish:
            self.publish(Topics(self.prefix, gateway_id).tokens, jws, retain=True)
        return ver

    def set_fleet_jwt(self, payload: bytes | str, *, publish: bool = True) -> None:
        """The fleet's current ``{"jwt", "iat"}``, published retained on the fleet topic."""
        text = payload.decode() if isinstance(payload, bytes) else payload
        with self._cond:
            self._fleet_jwt = text
        if publish:
            self.publish(fleet_jwt_topic(self.prefix), text, retain=True)

    def delegate(self, gateway_id: str) -> None:
        """The cloud signs APNs requests for this gateway: its hello gets the fleet JWT."""
        with self._cond:
            self._delegated.add(gateway_id)

    def _answer_hello(self, client: mqtt.Client, gateway_id: str, payload: bytes) -> None:
        """The contract's answer; on paho's thread, so published without waiting."""
        try:
            hello = parse_hello(payload)
        except CloudError:
            return
        topics = Topics(self.prefix, gateway_id)
        with self._cond:
            current = self._lists.get(gateway_id)
            fleet_jwt = self._fleet_jwt if gateway_id in self._delegated else None
            if current is not None and hello.wants_list(current[0]):
                client.publish(topics.tokens, current[1], qos=1, retain=True)
                self.hello_answers.append((gateway_id, "tokens"))
            if fleet_jwt is not None:
                client.publish(topics.apns_jwt, fleet_jwt, qos=1)
                self.hello_answers.append((gateway_id, "apns-jwt"))
            self._cond.notify_all()

    # -- what arrived -------------------------------------------------------------------

    def messages(self, topic: str | None = None) -> list[Received]:
        """A copy of what arrived so far (on ``topic`` only, when given)."""
        with self._cond:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = _TIMEOUT
    ) -> list[Received]:
        """Block until ``predicate(all messages so far)``; AssertionError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._messages), timeout):
                shown = [(m.topic, m.payload[:200]) for m in self._messages[-10:]]
                raise AssertionError(f"cloud peer: condition not met in {timeout} s; last {shown}")
            return list(self._messages)

    def wait_message(
        self,
        topic: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        timeout: float = _TIMEOUT,
    ) -> Received:
        """The first JSON message on ``topic`` whose document satisfies ``predicate``."""
        found: list[Received] = []

        def match(messages: list[Received]) -> bool:
            for m in messages:
                if m.topic == topic and _matches(m, predicate):
                    found.append(m)
                    return True
            return False

        self.wait_for(match, timeout)
        return found[0]

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    # -- paho callbacks (its network thread) ----------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: Any,
        properties: Any = None,
    ) -> None:
        with self._cond:
            if reason_code.is_failure:
                self._connect_error = str(reason_code)
                self._cond.notify_all()
                return
            self._connected = True
            self._subscribed = False
            self.connects += 1
            sock = client.socket()
            if isinstance(sock, socket.socket):  # as the gateway does: no Nagle delay
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _, mid = client.subscribe([(topic, 1) for topic in self._topics])
            self._pending_sub = mid
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: Any,
        properties: Any = None,
    ) -> None:
        with self._cond:
            self._connected = False
            self._subscribed = False
            self._cond.notify_all()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        with self._cond:
            if mid == self._pending_sub:
                self._subscribed = True
                self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received = Received(
            message.topic, bytes(message.payload), bool(message.retain), time.monotonic_ns()
        )
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()
        gateway_id = gateway_of(message.topic, self.prefix, HELLO)
        if gateway_id is not None:
            self._answer_hello(client, gateway_id, received.payload)


def _matches(message: Received, predicate: Callable[[Any], bool]) -> bool:
    try:
        document = message.json()
    except ValueError:
        return False
    return bool(predicate(document))
