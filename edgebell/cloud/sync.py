"""The MQTT link to the cloud: token lists and provider JWTs in, events out, reconnecting forever.

One persistent session (clean session off, QoS 1, client id = gateway id) at a
time; the reconnect loop with backoff and jitter is here, explicit, around
aiomqtt's client. Each connection subscribes again (a broker that lost its
sessions forgets subscriptions), one topic at a time so a broker that closes the
connection over a forbidden one shows which; republishes the retained ``online``
status; says ``P/hello`` so the cloud sends what retained delivery may not have
(RabbitMQ keeps retained messages per node); then sends what waited in the
durable outgoing queue, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import aiomqtt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgebell import mqttlink
from edgebell.apns.model import MAX_JWT_AGE
from edgebell.backoff import Backoff
from edgebell.cloud import commands, topics
from edgebell.cloud.messages import (
    OFFLINE,
    ProviderToken,
    delivery_message,
    feedback_message,
    hello_message,
    parse_provider_token,
    ring_message,
    status_online,
)
from edgebell.cloud.outgoing import OutgoingQueue
from edgebell.cloud.packetsize import NegotiatedClient, ProtocolChoice
from edgebell.cloud.refusals import Action, Refusals, Request
from edgebell.cloud.tokenlist import TokenList, TokenListKeeper, TokenListRefused, Verdict
from edgebell.config import CloudConfig
from edgebell.errors import ApnsAuthError, CloudError, ConfigError
from edgebell.outbox.dispatcher import DeliveryReport, Feedback
from edgebell.outbox.store import OutboxStore
from edgebell.recent import RecentReplies
from edgebell.rings import Ring, iso_time
from edgebell.secrets import read_file

log = logging.getLogger(__name__)

# Keys of the outbox database's kv table (names, not secrets).
KV_LIST = "cloud.token_list"
KV_LIST_VER = "cloud.token_list_ver"
KV_PROVIDER_JWT = "cloud.apns_jwt"

PUBLISH_WINDOW = 10  # messages in flight at once (aiomqtt warns above 10 pending calls)
RESYNC_WAIT = 5.0  # how long `resync` waits for a list (retained or the cloud's hello answer)
STOP_FLUSH = 2.0  # on SIGTERM, how long queued messages may take to leave before "offline"
NOT_AUTHORIZED = (4, 5, 0x86, 0x87)  # CONNACK: bad user name or password / not authorised

T = TypeVar("T")


class GatewayHooks(commands.CommandTarget, Protocol):
    """What the sync needs of the daemon."""

    def token_list_changed(self, token_list: TokenList) -> None:
        """A new list is in use: push to exactly its tokens from now on."""
        ...

    def pending_pushes(self) -> int:
        """Notifications waiting in the outbox (``P/status.queue``)."""
        ...

    def use_provider_token(self, token: ProviderToken) -> bool:
        """Use the cloud's APNs JWT if it is newer than the one held; True if taken."""
        ...


class MqttClient(mqttlink.MqttSession, Protocol):
    """The part of ``aiomqtt.Client`` the sync uses (a test double implements this)."""

    async def subscribe(self, topic: list[tuple[str, int]], /) -> Any: ...


Connector = Callable[[], AbstractAsyncContextManager[MqttClient]]


class _Stop(Exception):
    """Ends the session after a clean goodbye."""


def aiomqtt_connector(config: CloudConfig, client_id: str, status_topic: str) -> Connector:
    """A new aiomqtt client per connection attempt, with the retained offline last will."""
    context = None
    if config.tls:
        context = mqttlink.tls_context(
            config.ca_file, config.cert_file, config.key_file, section="cloud", error=CloudError
        )
    will = aiomqtt.Will(status_topic, OFFLINE, qos=1, retain=True)

    choice = ProtocolChoice()  # MQTT 5 (packets over 128 KB refused unread) where it can

    def connect() -> AbstractAsyncContextManager[MqttClient]:
        return NegotiatedClient(
            aiomqtt.Client,
            choice,
            hostname=config.host,
            port=config.port,
            identifier=client_id,
            keepalive=mqttlink.keepalive_seconds(config.keepalive),
            timeout=config.connect_timeout,
            tls_context=context,
            will=will,
            # A ring event is one small packet: send it now, not after the last one's ACK.
            socket_options=mqttlink.NO_DELAY,
        )

    return connect


def load_token_list_key(config: CloudConfig) -> Ed25519PublicKey:
    data = read_file(config.token_list_key, what="token list key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{config.token_list_key} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{config.token_list_key} is not an Ed25519 public key")
    return key


class CloudSync:
    """The gateway's side of the MQTT contract; ``start()`` it, ``stop()`` it."""

    def __init__(
        self,
        config: CloudConfig,
        *,
        gateway_id: str,
        version: str,
        started_at: float,
        store: OutboxStore,
        hooks: GatewayHooks,
        delegated: bool = False,
        connector: Connector | None = None,
        key: Ed25519PublicKey | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        resync_wait: float = RESYNC_WAIT,
    ) -> None:
        self._config = config
        self._topics = topics.Topics(config.topic_prefix, gateway_id)
        self._version = version
        self._started_at = started_at
        self._store = store
        self._recent: RecentReplies[bytes] = RecentReplies()  # cmd ids answered lately
        self._hooks = hooks
        self._delegated = delegated
        self._connect = connector or aiomqtt_connector(config, gateway_id, self._topics.status)
        self._keeper = TokenListKeeper(key or load_token_list_key(config), gateway_id)
        self._clock = clock
        self._rng = rng or random.Random()
        self._resync_wait = resync_wait
        self._outgoing = OutgoingQueue(store)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._commands: set[asyncio.Task[None]] = set()
        self._client: MqttClient | None = None
        self._resync_waiters: list[asyncio.Future[Verdict]] = []
        self._status_dirty = False
        self._reported: dict[str, int | None] = {}
        self.connected_since: float | None = None
        self.last_sync_at: float | None = None
        self.last_error: str | None = None
        self.connects = 0
        self.provider_iat: int | None = None
        self._refusals = Refusals()
        self.login_problem: str | None = None
        self._in_flight: list[Request] = []
        self._closed_while: list[Request] = []
        self.identity_problem = _identity_problem(config, gateway_id) if connector is None else None
        if self.identity_problem is not None:
            log.error("%s", self.identity_problem)

    # -- start and stop -----------------------------------------------------------------

    def restore(self) -> None:
        """Take back, from the state directory, the last good list, the queue and the JWT.

        Call once, before the store's writer thread starts.
        """
        raw_ver = self._store.load_value(KV_LIST_VER)
        highest = int(raw_ver) if raw_ver and raw_ver.isdigit() else None
        try:
            token_list = self._keeper.restore(self._store.load_value(KV_LIST), highest)
        except TokenListRefused as exc:
            log.error("the saved token list is no longer valid (%s): waiting for the cloud's", exc)
        else:
            if token_list is not None:
                log.info(
                    "using the saved token list ver %d (%d phones) until the cloud sends one",
                    token_list.ver,
                    len(token_list.tokens),
                )
                self._hooks.token_list_changed(token_list)
        self._outgoing.restore(self._store.load_outgoing())
        if len(self._outgoing):
            log.info("%d messages for the cloud wait from the last run", len(self._outgoing))
        saved = self._store.load_value(KV_PROVIDER_JWT)
        if saved is not None and self._delegated:
            with contextlib.suppress(CloudError, ApnsAuthError):
                self._take_provider_token(parse_provider_token(saved), persist=False)

    @property
    def token_list(self) -> TokenList | None:
        return self._keeper.current

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cloud")

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period
        """Send what waits (briefly), publish the retained offline status, disconnect."""
        self._stopping.set()
        self._wake.set()
        for command in self._commands:
            command.cancel()
        await mqttlink.stop_task(self._task, timeout, self._commands)

    # -- events from the daemon -----------------------------------------------------------

    def ring(self, ring: Ring) -> None:
        self._enqueue(topics.RING, ring_message(ring))

    def delivery(self, report: DeliveryReport) -> None:
        self._enqueue(topics.DELIVERY, delivery_message(report))

    def feedback(self, feedback: Feedback, registered_at: int | None) -> None:
        """Report a dead token once per registration (concurrent pushes all hear the 410)."""
        if feedback.token in self._reported and self._reported[feedback.token] == registered_at:
            return
        self._reported[feedback.token] = registered_at
        self._enqueue(topics.FEEDBACK, feedback_message(feedback))

    def _enqueue(self, suffix: str, payload: bytes) -> None:
        self._outgoing.put(suffix, payload)
        self._idle.clear()
        self._wake.set()

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``cloud`` object of ``edgebell status``; ``problems`` go to the top level."""
        connected = self.connected_since is not None
        current = self._keeper.current
        problems = []
        refusals = self._refusals.problems()
        if self.login_problem is not None and not connected:
            refusals.insert(0, self.login_problem)
        if not connected and not refusals:
            why = f" ({self.last_error})" if self.last_error else ""
            problems.append(
                f"cloud broker unreachable{why}" if self.connects or why else "cloud not connected"
            )
        if self.identity_problem is not None:
            problems.append(self.identity_problem)
        problems.extend(refusals)
        if self._delegated:
            if self.provider_iat is None:
                problems.append("no APNs provider token from the cloud yet (delegated auth)")
            elif self._clock() - self.provider_iat >= MAX_JWT_AGE:
                problems.append("the cloud's APNs provider token is over an hour old")
        status: dict[str, Any] = {
            "connected": connected,
            "last_sync_at": None if self.last_sync_at is None else iso_time(self.last_sync_at),
            "broker": f"{self._config.host}:{self._config.port}",
            "connected_since": (
                None if self.connected_since is None else iso_time(self.connected_since)
            ),
            "connects": self.connects,
            "tokens_ver": None if current is None else current.ver,
            "refused_lists": self._keeper.refused,
            "last_refusal": self._keeper.last_refusal,
            "outgoing_queued": len(self._outgoing),
            "outgoing_dropped": self._outgoing.dropped,
            "last_error": self.last_error,
            "problems": problems,
        }
        if self._delegated:
            status["apns_jwt_iat"] = self.provider_iat
        return status

    def _status_payload(self) -> bytes:
        current = self._keeper.current
        return status_online(
            version=self._version,
            since=self._started_at,
            tokens_ver=None if current is None else current.ver,
            queue=self._hooks.pending_pushes(),
            refused_lists=self._keeper.refused,
            last_refusal=self._keeper.last_refusal,
        )

    def _status_changed(self) -> None:
        self._status_dirty = True
        self._wake.set()

    # -- the connection loop -----------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self._config.reconnect_min, self._config.reconnect_max, self._rng.random)
        failures = 0
        while not self._stopping.is_set():
            error: BaseException | None = None
            connects = self.connects
            opened = False
            self._closed_while = []
            try:
                async with self._connect() as client:
                    opened = True
                    backoff.reset()
                    failures = 0
                    await self._session(client)
            except* (aiomqtt.MqttError, OSError) as group:
                error = group.exceptions[0]
            except* Exception as group:
                # A bug must not end cloud sync for good: say so loudly, then reconnect.
                error = group.exceptions[0]
                log.error("cloud sync failed", exc_info=error)
            if self._stopping.is_set():
                break
            self._judge_closure(opened, error)
            failures += 1
            self._lost(error, was_connected=self.connects > connects, first=failures == 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff.next())

    def _judge_closure(self, opened: bool, error: BaseException | None) -> None:
        if not opened:
            self._refusals.connect_failed()
            self.login_problem = _login_refusal(error, self._topics.status)
            if self.login_problem is not None:
                log.error("%s", self.login_problem)
            return
        for request in self._refusals.closed_during(self._closed_while):
            verb = "subscribe to" if request.action is Action.SUBSCRIBE else "publish to"
            log.error(
                "the broker closed the connection twice when asked to %s %s: it refuses it;"
                " check its ACL for this gateway's certificate",
                verb,
                request.topic,
            )

    def _lost(self, error: BaseException | None, *, was_connected: bool, first: bool) -> None:
        self.connected_since = None
        self._client = None
        self.last_error = mqttlink.describe(error)
        where = f"{self._config.host}:{self._config.port}"
        if was_connected or first:
            log.warning(
                "cloud broker %s %s (%s): retrying with backoff",
                where,
                "lost" if was_connected else "unreachable",
                self.last_error,
            )
        else:
            log.debug("cloud broker %s still unreachable: %s", where, self.last_error)

    async def _session(self, client: MqttClient) -> None:
        self._in_flight = []
        try:
            async with asyncio.TaskGroup() as group:
                # Started first: a broker that closes the connection over a forbidden
                # SUBSCRIBE or PUBLISH ends the message stream at once (aiomqtt would
                # otherwise only time out the pending request).
                group.create_task(self._receiver(client))
                await self._subscribe(client)
                await self._acked(
                    Action.PUBLISH,
                    self._topics.status,
                    client.publish(self._topics.status, self._status_payload(), qos=1, retain=True),
                )
                self._client = client
                self.connected_since = self._clock()
                self.connects += 1
                self.last_error = None
                self.login_problem = None
                log.info(
                    "connected to the cloud broker %s:%d as %s%s",
                    self._config.host,
                    self._config.port,
                    self._topics.gateway_id,
                    f"; sending {len(self._outgoing)} queued messages"
                    if len(self._outgoing)
                    else "",
                )
                await self._say_hello(client)
                group.create_task(self._publisher(client))
                group.create_task(self._goodbye(client))
        except* _Stop:
            log.info("disconnected from the cloud broker")
        finally:
            self._client = None
            self.connected_since = None

    async def _subscribe(self, client: MqttClient) -> None:
        """One SUBSCRIBE per topic: a broker that closes the connection names the topic so."""
        wanted = [self._topics.tokens, self._topics.cmd]
        if self._delegated:
            wanted += [self._topics.apns_jwt, self._topics.fleet_jwt]
        for topic in wanted:
            granted = await self._acked(Action.SUBSCRIBE, topic, client.subscribe([(topic, 1)]))
            if any(code >= 0x80 for code in _codes(granted)):
                # The broker's ACL does not give this certificate its own topics.
                self._refusals.suback_failed(Request(Action.SUBSCRIBE, topic))
                log.error("the broker refused the subscription to %s: check its ACL", topic)

    async def _say_hello(self, client: MqttClient) -> None:
        """``P/hello``: the cloud answers with the list (and JWT) this gateway lacks."""
        current = self._keeper.current
        payload = hello_message(
            version=self._version,
            tokens_ver=None if current is None else current.ver,
            jwt_iat=self.provider_iat if self._delegated else None,
            at=self._clock(),
        )
        await self._acked(
            Action.PUBLISH, self._topics.hello, client.publish(self._topics.hello, payload, qos=1)
        )

    async def _acked(self, action: Action, topic: str, request: Awaitable[T]) -> T:
        """Await the broker's acknowledgement of ``request``, known as in flight meanwhile."""
        entry = Request(action, topic)
        self._in_flight.append(entry)
        try:
            result = await request
        finally:
            self._in_flight.remove(entry)
        self._refusals.acknowledged(entry)
        return result

    async def _publisher(self, client: MqttClient) -> None:
        """Sends the status when it changed and the queue head, a window at a time, in order."""
        while True:
            self._wake.clear()
            sent = False
            if self._status_dirty and not self._stopping.is_set():
                self._status_dirty = False
                await self._acked(
                    Action.PUBLISH,
                    self._topics.status,
                    client.publish(self._topics.status, self._status_payload(), qos=1, retain=True),
                )
                sent = True
            # One at a time after the broker closed the connection with a window in
            # flight: if it was a refusal, the next closure names the one topic.
            batch = self._outgoing.head(1 if self._refusals.narrowing else PUBLISH_WINDOW)
            if batch:
                # Sent in order on one connection; all acknowledged before the next window.
                await asyncio.gather(
                    *(
                        self._acked(
                            Action.PUBLISH,
                            self._topics.of(item.suffix),
                            client.publish(self._topics.of(item.suffix), item.payload, qos=1),
                        )
                        for item in batch
                    )
                )
                self._outgoing.done(batch)
                sent = True
            if not sent:
                self._idle.set()
                await self._wake.wait()

    async def _goodbye(self, client: MqttClient) -> None:
        await self._stopping.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_FLUSH)
        # A clean disconnect discards the last will, so say "offline" ourselves.
        await client.publish(self._topics.status, OFFLINE, qos=1, retain=True)
        raise _Stop

    async def _receiver(self, client: MqttClient) -> None:
        try:
            async for message in client.messages:
                self._on_message(str(message.topic), _payload_bytes(message.payload))
        except aiomqtt.MqttError:
            # The connection closed: note what the broker had not acknowledged by then.
            self._closed_while = list(self._in_flight)
            raise

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            if topic == self._topics.tokens:
                self._on_token_list(payload)
            elif topic == self._topics.cmd:
                self._spawn(self._on_command(payload))
            elif topic in (self._topics.fleet_jwt, self._topics.apns_jwt) and self._delegated:
                # The fleet topic and the cloud's answer to this gateway's hello alike.
                self._on_provider_token(payload)
            else:
                log.debug("ignoring a message on %s", topic)
        except Exception:
            log.exception("cannot handle the message on %s", topic)

    # -- what the cloud sends ------------------------------------------------------------------

    def _on_token_list(self, data: bytes) -> None:
        offer = self._keeper.offer(data)
        if offer.verdict is Verdict.REFUSED:
            current = self._keeper.current
            log.warning(
                "refused a token list (%s); %s",
                offer.refusal,
                "keeping none" if current is None else f"keeping ver {current.ver}",
            )
            self._status_changed()
        else:
            token_list = offer.token_list
            assert token_list is not None
            self.last_sync_at = self._clock()
            if offer.verdict is Verdict.NEW:
                self._store.put_value(KV_LIST, token_list.jws.encode())
                self._store.put_value(KV_LIST_VER, str(token_list.ver).encode())
                self._hooks.token_list_changed(token_list)
                log.info(
                    "token list ver %d in use: %d phones", token_list.ver, len(token_list.tokens)
                )
                self._status_changed()
            else:
                log.debug("token list ver %d received again: still current", token_list.ver)
        waiters, self._resync_waiters = self._resync_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(offer.verdict)

    def _on_provider_token(self, data: bytes) -> None:
        try:
            token = parse_provider_token(data)
            self._take_provider_token(token, persist=True)
        except (CloudError, ApnsAuthError) as exc:
            log.warning("refused the cloud's APNs provider token: %s", exc)

    def _take_provider_token(self, token: ProviderToken, *, persist: bool) -> None:
        if not self._hooks.use_provider_token(token):
            log.debug("APNs provider token iat %d is not newer than the one in use", token.iat)
            return
        self.provider_iat = token.iat
        age = self._clock() - token.iat
        log.info("using the cloud's APNs provider token (iat %d, %.0f s old)", token.iat, age)
        if persist:
            document = {"jwt": token.jwt, "iat": token.iat}
            self._store.put_value(KV_PROVIDER_JWT, json.dumps(document).encode())

    async def _on_command(self, data: bytes) -> None:
        reply = await commands.answer(
            data, self._hooks, self._resync, version=self._version, recent=self._recent
        )
        self._enqueue(topics.CMD_REPLY, reply)

    async def _resync(self) -> tuple[bool, str]:
        """Subscribe to ``P/tokens`` again (the retained list, where the broker keeps it for
        this node) and say hello (the cloud sends the list when this gateway's is not current)."""
        client = self._client
        if client is None:
            return False, "not connected to the broker"
        waiter: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._resync_waiters.append(waiter)
        try:
            await self._acked(
                Action.SUBSCRIBE, self._topics.tokens, client.subscribe([(self._topics.tokens, 1)])
            )
            await self._say_hello(client)
            verdict = await asyncio.wait_for(waiter, self._resync_wait)
        except TimeoutError:
            if self._keeper.current is None:
                return False, f"hello sent, but no token list on {self._topics.tokens} yet"
            # The cloud answers a hello only when the gateway's list is not current.
            return True, f"hello sent, no newer list from the cloud; {self._in_use()}"
        finally:
            if waiter in self._resync_waiters:
                self._resync_waiters.remove(waiter)
        if verdict is Verdict.REFUSED:
            return False, f"retained list refused ({self._keeper.last_refusal}); {self._in_use()}"
        return True, self._in_use()

    def _in_use(self) -> str:
        current = self._keeper.current
        if current is None:
            return "no list in use"
        return f"list ver {current.ver} in use ({len(current.tokens)} phones)"

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine, name="cloud-command")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)


def _identity_problem(config: CloudConfig, gateway_id: str) -> str | None:
    """Brokers confine a gateway by its certificate's CN: another CN than gateway.id gets nothing
    (Mosquitto even grants the subscriptions, then delivers nothing), so say it at start."""
    try:
        certificate = x509.load_pem_x509_certificate(config.cert_file.read_bytes())
        names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except (OSError, ValueError):
        return None  # check-config reports an unreadable certificate
    common_name = str(names[0].value) if names else None
    if common_name == gateway_id:
        return None
    return (
        f"cloud.cert_file is for {common_name!r} but gateway.id is {gateway_id!r}: the broker"
        " gives a certificate only its own CN's topics, so nothing would arrive"
    )


def _login_refusal(error: BaseException | None, will_topic: str) -> str | None:
    """A CONNACK "not authorised": the certificate's CN has no user, or may not send the will."""
    if not isinstance(error, aiomqtt.MqttCodeError):
        return None
    code = getattr(error.rc, "value", error.rc)
    if code not in NOT_AUTHORIZED:
        return None
    return (
        f"the broker refused this gateway's login ({error}): check that its ACL has a user"
        f" named after the certificate's CN, allowed to publish the last will on {will_topic}"
    )


def _codes(granted: Any) -> list[int]:
    """SUBACK codes as integers, whether paho gave ints or ReasonCodes."""
    try:
        return [int(getattr(code, "value", code)) for code in granted]
    except (TypeError, ValueError):
        return []


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()
