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
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
import paho.mqtt.client as mqtt

from edgebell.cloud.messages import parse_hello
from edgebell.cloud.topics import HELLO, Topics, fleet_jwt_topic, gateway_of
from edgebell.errors import CloudError
from testkit.mqtt_peer import TIMEOUT as _TIMEOUT
from testkit.mqtt_peer import MqttPeer, Received
from testkit.pki import CertFiles

__all__ = ["CloudPeer", "Received"]


class CloudPeer(MqttPeer):
    """``with CloudPeer(host, port, ca=..., identity=...) as cloud:`` connects and subscribes.

    ``subscribe`` topics (wildcards allowed) are subscribed again after every
    reconnect, which paho makes by itself after a broker restart.
    """

    refused = "broker refused the cloud peer"
    late = "the cloud peer did not connect and subscribe in time"

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
        super().__init__(
            host,
            port,
            topics=subscribe,
            client_id=client_id or identity.common_name,
            clean_session=clean_session,
        )
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(identity.cert, identity.key)
        self._client.tls_set_context(context)

    # -- lifecycle ---------------------------------------------------------------------

    def wait_reconnected(self, connects: int, timeout: float = _TIMEOUT) -> None:
        """Block until the peer has connected ``connects`` times and is subscribed again."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self.connects >= connects and self._subscribed, timeout
            ):
                raise TimeoutError(f"the cloud peer did not reconnect ({self.connects} connects)")

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

    # -- paho callback (its network thread) ------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received = self._record(message)
        gateway_id = gateway_of(message.topic, self.prefix, HELLO)
        if gateway_id is not None:
            self._answer_hello(client, gateway_id, received.payload)


def _matches(message: Received, predicate: Callable[[Any], bool]) -> bool:
    try:
        document = message.json()
    except ValueError:
        return False
    return bool(predicate(document))
