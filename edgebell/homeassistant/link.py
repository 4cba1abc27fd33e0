"""The connection to the home's MQTT broker: its own reconnect loop, never in the ring's way.

A second MQTT client, apart from the cloud's: the daemon hands it rings with
``ring()`` (a queue append, nothing more) and it publishes them from its own task,
in parallel with the pushes to Apple and whatever the internet does. Each
connection subscribes to Home Assistant's birth topic, says ``online`` (retained,
with an ``offline`` last will), announces the device and removes entities it
announced before and no longer has (remembered in the state directory), then sends
the rings still fresh. A birth message announces everything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import aiomqtt

from edgebell import mqttlink
from edgebell.backoff import Backoff
from edgebell.config.model import HomeAssistantConfig
from edgebell.errors import ConfigError, HomeAssistantError
from edgebell.homeassistant import discovery
from edgebell.homeassistant.discovery import Button, GatewayState, Layout, Message
from edgebell.homeassistant.events import EventQueue
from edgebell.rings import Ring, iso_time
from edgebell.secrets import read_passphrase

log = logging.getLogger(__name__)

STATE_FILE = "home-assistant.json"  # in the state directory: the discovery topics announced
STATE_EVERY = 5.0  # how often the diagnostic sensors' state is looked at (sent when it changed)
PUBLISH_WINDOW = 10  # messages in flight at once (aiomqtt warns above 10 pending calls)
STOP_FLUSH = 1.0  # on SIGTERM, how long queued rings may take to leave before "offline"


class MqttClient(mqttlink.MqttSession, Protocol):
    """The part of ``aiomqtt.Client`` the link uses."""

    async def subscribe(self, topic: str, /, qos: int = 0) -> Any: ...


Connector = Callable[[], AbstractAsyncContextManager[MqttClient]]


class _Stop(Exception):
    """Ends the session after the clean goodbye."""


def aiomqtt_connector(config: HomeAssistantConfig, layout: Layout) -> Connector:
    """A new aiomqtt client per attempt: clean session, ``offline`` as the retained last will."""
    context = None
    if config.tls:
        context = mqttlink.tls_context(
            config.ca_file,
            config.cert_file,
            config.key_file,
            section="home_assistant",
            error=HomeAssistantError,
        )
    password = None
    if config.password_file is not None:
        try:
            password = read_passphrase(config.password_file).decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{config.password_file} is not UTF-8 text") from exc
    will = aiomqtt.Will(layout.availability, discovery.OFFLINE, qos=1, retain=True)

    def connect() -> AbstractAsyncContextManager[MqttClient]:
        return aiomqtt.Client(
            config.host,
            config.port,
            identifier=layout.node_id,
            username=config.username,
            password=password,
            clean_session=True,  # nothing to keep: every connection announces afresh
            keepalive=mqttlink.keepalive_seconds(config.keepalive),
            timeout=config.connect_timeout,
            tls_context=context,
            will=will,
            protocol=aiomqtt.ProtocolVersion.V311,
            # A ring is one small packet: out now, not after the previous one's ACK.
            socket_options=mqttlink.NO_DELAY,
        )

    return connect


def load_announced(path: Path) -> set[str]:
    """The discovery topics announced by an earlier run (none if the file is missing or bad)."""
    try:
        document = json.loads(path.read_text())
        return {str(topic) for topic in document["announced"]}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s (%s): old Home Assistant entities may stay", path, exc)
        return set()


def save_announced(path: Path, topics: set[str]) -> None:
    """Replace the file atomically: a crash leaves the old list or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps({"announced": sorted(topics)}, indent=1) + "\n")
    os.replace(scratch, path)


class HomeAssistantLink:
    """``start()`` it, hand it rings, ``stop()`` it; ``status()`` for ``edgebell status``."""

    def __init__(
        self,
        config: HomeAssistantConfig,
        *,
        gateway_id: str,
        version: str,
        buttons: Sequence[Button],
        state_dir: Path,
        snapshot: Callable[[], GatewayState],
        connector: Connector | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        state_every: float = STATE_EVERY,
    ) -> None:
        self.config = config
        self.layout = Layout.of(config)
        self._gateway_id = gateway_id
        self._version = version
        self._buttons = tuple(buttons)
        self._state_file = state_dir / STATE_FILE
        self._snapshot = snapshot
        self._connect = connector or aiomqtt_connector(config, self.layout)
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._state_every = state_every
        self._queue = EventQueue(config.max_event_age)
        self._announced: set[str] = set()  # read at start(): a link it replaces may write it
        self._announce_due = True
        self._last_state: GatewayState | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected_since: float | None = None
        self.connects = 0
        self.last_error: str | None = None
        self.published = 0

    # -- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        self._announced = load_announced(self._state_file)
        self._task = asyncio.create_task(self._run(), name="home-assistant")

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period
        """Send the rings that wait (briefly), publish the retained ``offline``, disconnect."""
        self._stopping.set()
        self._wake.set()
        await mqttlink.stop_task(self._task, timeout)

    # -- from the daemon ------------------------------------------------------------------

    def ring(self, ring: Ring) -> None:
        """Queue the ring; the ring path pays for one append, the link's task for the rest."""
        self._queue.put(ring, self._clock())
        self._idle.clear()
        self._wake.set()

    def reconfigure(self, config: HomeAssistantConfig, buttons: Sequence[Button]) -> bool:
        """Take a reloaded section: False if it needs a new connection (another broker, ...)."""
        if _connection(config) != _connection(self.config):
            return False
        self.config = config
        self._queue.max_age = config.max_event_age
        if tuple(buttons) != self._buttons:
            self._buttons = tuple(buttons)
            self._announce_due = True
            self._wake.set()
        return True

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``home_assistant`` object of ``edgebell status``; ``problems`` go to the top."""
        connected = self.connected_since is not None
        problems = []
        if not connected and (self.connects or self.last_error):
            problems.append(
                f"Home Assistant broker {self.config.url} unreachable ({self.last_error}): rings "
                "do not reach Home Assistant; check home_assistant.url and its credentials"
            )
        if self._queue.dropped_full:
            problems.append(
                f"{self._queue.dropped_full} rings for Home Assistant dropped: its queue was full"
            )
        return {
            "connected": connected,
            "url": self.config.url,
            "connected_since": (
                None
                if self.connected_since is None
                else iso_time(self._wall_clock() - (self._clock() - self.connected_since))
            ),
            "connects": self.connects,
            "last_error": self.last_error,
            "published": self.published,
            "queued": len(self._queue),
            "dropped_stale": self._queue.dropped_stale,
            "max_event_age_s": self.config.max_event_age,
            "entities": len(self._announced),
            "discovery_prefix": self.config.discovery_prefix,
            "node_id": self.config.node_id,
            "base_topic": self.config.base_topic,
            "problems": problems,
        }

    # -- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self.config.reconnect_min, self.config.reconnect_max, self._rng.random)
        failures = 0
        while not self._stopping.is_set():
            error: BaseException | None = None
            connects = self.connects
            try:
                async with self._connect() as client:
                    backoff.reset()
                    failures = 0
                    await self._session(client)
            except* (aiomqtt.MqttError, OSError) as group:
                error = group.exceptions[0]
            except* Exception as group:
                # A bug must not end the link for good: say so loudly, then reconnect.
                error = group.exceptions[0]
                log.error("Home Assistant link failed", exc_info=error)
            if self._stopping.is_set():
                break
            failures += 1
            self._lost(error, was_connected=self.connects > connects, first=failures == 1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff.next())

    def _lost(self, error: BaseException | None, *, was_connected: bool, first: bool) -> None:
        self.connected_since = None
        self.last_error = mqttlink.describe(error)
        if was_connected or first:
            log.warning(
                "Home Assistant broker %s %s (%s): retrying with backoff",
                self.config.url,
                "lost" if was_connected else "unreachable",
                self.last_error,
            )
        else:
            log.debug("Home Assistant broker %s still down: %s", self.config.url, self.last_error)

    async def _session(self, client: MqttClient) -> None:
        await client.subscribe(self.layout.birth, qos=1)
        # The broker answers with the configs it retains for this node: leftovers are cleared.
        await client.subscribe(self.layout.own_configs, qos=1)
        await self._announce(client)
        self.connected_since = self._clock()
        self.connects += 1
        self.last_error = None
        log.info(
            "connected to the Home Assistant broker %s (%d entities)",
            self.config.url,
            len(self._announced),
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._publisher(client))
                group.create_task(self._receiver(client))
                group.create_task(self._goodbye(client))
        except* _Stop:
            log.info("disconnected from the Home Assistant broker")
        finally:
            self.connected_since = None

    async def _announce(self, client: MqttClient) -> None:
        """Discovery for what is configured now; empty configs for what was announced before."""
        self._announce_due = False
        self._last_state = None  # the sensors' state goes out again after (re)discovery
        current = discovery.discovery(
            self.layout, gateway_id=self._gateway_id, version=self._version, buttons=self._buttons
        )
        messages = discovery.announcement(current, self._announced)
        # "online" first, as zigbee2mqtt does on a birth: the entities come up available.
        await self._send(client, discovery.availability(self.layout, online=True))
        for start in range(0, len(messages), PUBLISH_WINDOW):  # removals first, in order
            window = messages[start : start + PUBLISH_WINDOW]
            await asyncio.gather(*(self._send(client, m) for m in window))
        removed = len(messages) - len(current)
        if removed:
            log.info("removed %d Home Assistant entities no longer configured", removed)
        if set(current) != self._announced:
            self._announced = set(current)
            try:
                await asyncio.to_thread(save_announced, self._state_file, self._announced)
            except OSError as exc:
                log.warning("cannot remember the entities (%s): %s", self._state_file, exc)

    async def _publisher(self, client: MqttClient) -> None:
        """Rings first, in order, a window at a time; then discovery and the sensors' state."""
        while True:
            self._wake.clear()
            batch = self._queue.head(self._clock(), PUBLISH_WINDOW)
            if batch:
                await asyncio.gather(
                    *(
                        self._send(client, discovery.event_message(self.layout, item.ring))
                        for item in batch
                    )
                )
                self._queue.done(batch)
                self.published += len(batch)
                continue
            if self._announce_due:
                await self._announce(client)
                continue
            state = self._snapshot()
            if state != self._last_state:
                await self._send(client, discovery.state_message(self.layout, state))
                self._last_state = state
                continue
            self._idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._state_every)

    async def _receiver(self, client: MqttClient) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if topic != self.layout.birth:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                if discovery.leftover(
                    topic, payload, retained=message.retain, current=self._announced
                ):
                    log.info("removing %s: no longer configured", topic)
                    await self._send(client, Message(topic, b"", retain=True))
                continue
            if _text(message.payload).strip().lower() == "online":
                # Home Assistant (re)started: it may have forgotten everything but retained
                # messages; announce again, as it asks of every integration.
                log.info("Home Assistant came online: announcing the doorbell again")
                self._announce_due = True
                self._wake.set()

    async def _goodbye(self, client: MqttClient) -> None:
        await self._stopping.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_FLUSH)
        # A clean disconnect discards the last will, so say "offline" ourselves.
        await self._send(client, discovery.availability(self.layout, online=False))
        raise _Stop

    async def _send(self, client: MqttClient, message: Message) -> None:
        await client.publish(message.topic, message.payload, qos=1, retain=message.retain)


def _connection(config: HomeAssistantConfig) -> tuple[object, ...]:
    """The settings a connection is made with: any change needs a new one."""
    return (
        config.url,
        config.username,
        config.password_file,
        config.ca_file,
        config.cert_file,
        config.key_file,
        config.discovery_prefix,
        config.node_id,
        config.base_topic,
        config.keepalive,
        config.connect_timeout,
        config.reconnect_min,
        config.reconnect_max,
    )


def _text(payload: Any) -> str:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload).decode(errors="replace")
    return "" if payload is None else str(payload)
