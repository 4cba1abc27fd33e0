"""The registry's MQTT link: what gateways send in, signed lists and JWTs out, reconnecting forever.

It connects with the cloud's own certificate (the broker's ACL lets that identity
use every gateway's topics) and subscribes to ``hello``, ``feedback``, ``ring`` and
``delivery`` of every gateway, as a shared subscription by default, so that with
several instances each message is handled by one of them.
"""

from __future__ import annotations

import asyncio
import logging
import random

import aiomqtt
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgebell import mqttlink
from edgebell.backoff import Backoff
from edgebell.cloud import topics
from edgebell.errors import CloudError
from edgebell.registry.config import MqttConfig
from edgebell.registry.service import NotConnected, RegistryService

log = logging.getLogger(__name__)

KINDS = (topics.HELLO, topics.FEEDBACK, topics.RING, topics.DELIVERY)


def certificate_cn(path: str) -> str:
    try:
        cert = x509.load_pem_x509_certificate(open(path, "rb").read())  # noqa: SIM115
    except (OSError, ValueError) as exc:
        raise CloudError(f"cannot read the certificate {path}: {exc}") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise CloudError(f"{path} has no CN: give mqtt.client_id")
    return str(names[0].value)


def subscriptions(prefix: str, group: str) -> list[tuple[str, int]]:
    share = f"$share/{group}/" if group else ""
    return [(f"{share}{prefix}/+/{kind}", 1) for kind in KINDS]


def split_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``(gateway, kind)`` of ``<prefix>/<gateway>/<kind>``; None for anything else."""
    for kind in KINDS:
        gateway = topics.gateway_of(topic, prefix, kind)
        if gateway is not None and gateway != "fleet":
            return gateway, kind
    return None


class _Client:
    """The service's ``Broker``: publishes on the connected aiomqtt client."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        try:
            await self._client.publish(topic, payload, qos=1, retain=retain)
        except aiomqtt.MqttError as exc:
            raise NotConnected(str(exc)) from exc


class RegistryLink:
    def __init__(
        self,
        config: MqttConfig,
        service: RegistryService,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._service = service
        self._client_id = config.client_id or certificate_cn(str(config.cert_file))
        self._context = None
        if config.tls:
            self._context = mqttlink.tls_context(
                config.ca_file, config.cert_file, config.key_file, section="MQTT", error=CloudError
            )
        self._backoff = Backoff(
            config.reconnect_min, config.reconnect_max, (rng or random.Random()).random
        )
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Forever: connect, subscribe, publish what waited, handle messages; back off."""
        prefix = self._service.prefix
        while True:
            try:
                async with aiomqtt.Client(
                    self._config.host,
                    self._config.port,
                    identifier=self._client_id,
                    clean_session=False,
                    keepalive=mqttlink.keepalive_seconds(self._config.keepalive),
                    timeout=self._config.connect_timeout,
                    tls_context=self._context,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    # A list is one small packet right after the PUBACK of what caused it:
                    # Nagle would hold it for the broker's delayed ACK (40 ms).
                    socket_options=mqttlink.NO_DELAY,
                ) as client:
                    await client.subscribe(subscriptions(prefix, self._config.shared_group))
                    log.info("connected to %s as %s", self._config.url, self._client_id)
                    self._backoff.reset()
                    self._service.connected(_Client(client))
                    self.connected.set()
                    # Lists committed while away go out first, then the fleet JWT.
                    catch_up = asyncio.create_task(self._catch_up())
                    try:
                        async for message in client.messages:
                            where = split_topic(prefix, str(message.topic))
                            if where is None or not isinstance(message.payload, bytes):
                                continue
                            await self._service.on_message(*where, message.payload)
                    finally:
                        catch_up.cancel()
            except aiomqtt.MqttError as exc:
                log.warning("MQTT: %s", exc)
            finally:
                self._service.connected(None)
                self.connected.clear()
            await asyncio.sleep(self._backoff.next())

    async def _catch_up(self) -> None:
        try:
            await self._service.publish_pending()
            await self._service.fleet_tick()
        except CloudError as exc:
            log.warning("after connecting: %s", exc)
