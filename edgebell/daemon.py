"""The daemon: wires radio, buttons, notifier, outbox and APNs client into one asyncio process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from edgebell import __version__
from edgebell.apns.auth import ApnsAuth, CertificateAuth, DelegatedAuth, TokenAuth
from edgebell.apns.client import ApnsClient
from edgebell.apns.credentials import CredentialsCheck
from edgebell.apns.model import Environment
from edgebell.buttons import Button, ButtonTracker, Verdict
from edgebell.commands import ControlCommands
from edgebell.config import (
    CertificateAuthConfig,
    Config,
    DelegatedAuthConfig,
    TokenAuthConfig,
    check_config,
    load_config,
)
from edgebell.control import JSON
from edgebell.control_server import ControlServer
from edgebell.errors import ApnsError, ConfigError
from edgebell.logs import set_level
from edgebell.notifier import Notifier, Template
from edgebell.outbox.dispatcher import DeliveryReport, Dispatcher, Feedback
from edgebell.outbox.store import OutboxStore
from edgebell.radio.events import BadFrame, Banner, Frame, RadioEvent
from edgebell.radio.serial import SerialReceiver
from edgebell.reload import adopt, differences
from edgebell.rings import Notification, Ring, new_id
from edgebell.sdnotify import Notifier as SystemdNotifier
from edgebell.secrets import read_passphrase, read_secret
from edgebell.status import ConfigState, StatusReport, build_status
from edgebell.tokens import AuthorisedToken, Suppression, TokenBook

if TYPE_CHECKING:  # the MQTT stack is imported only by gateways that have a cloud section
    from edgebell.cloud.messages import ProviderToken
    from edgebell.cloud.sync import CloudSync
    from edgebell.cloud.tokenlist import TokenList
    from edgebell.homeassistant.link import HomeAssistantLink

log = logging.getLogger(__name__)

OUTBOX_PAGE_SIZE = 4096  # SQLite's default page: outbox.max_size becomes a page count

DRAIN_TIMEOUT = 5.0  # SIGTERM: how long stopping may take, in-flight pushes finishing first
READY_GRACE = 10.0  # how long start-up waits for the receiver before reporting READY anyway
STATUS_EVERY = 5.0  # how stale systemd's STATUS= line (systemctl status) may get
CLOUD_STOP_TIMEOUT = 3.0  # SIGTERM: sending what waits for the cloud, then "offline"
CLOSE_RESERVE = 0.5  # SIGTERM: of DRAIN_TIMEOUT, kept for closing connections and the database


def make_auth(config: Config) -> ApnsAuth:
    """The APNs credentials the configuration names (key files read once, here)."""
    auth = config.apns.auth
    if isinstance(auth, TokenAuthConfig):
        key = read_secret(auth.key_file, what="APNs auth key")
        return TokenAuth(key, auth.key_id, auth.team_id, refresh_after=config.apns.jwt_refresh)
    if isinstance(auth, CertificateAuthConfig):
        passphrase = None
        if auth.passphrase_file is not None:
            passphrase = read_passphrase(auth.passphrase_file)
        return CertificateAuth(auth.cert_file, passphrase)
    if isinstance(auth, DelegatedAuthConfig):
        return DelegatedAuth()
    raise TypeError(f"unknown auth config {auth!r}")


class Daemon:
    """One running gateway. ``run()`` returns the process exit code."""

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] = os.environ,
        ready_grace: float = READY_GRACE,
    ) -> None:
        self.config = config
        self.config_state = ConfigState(str(config.source), time.time())
        self._environ = environ
        self._ready_grace = ready_grace
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._stop = asyncio.Event()
        self._systemd = SystemdNotifier(environ)
        self.tokens = TokenBook(topic=config.apns.topic)
        max_size = config.outbox.max_size
        self.store = OutboxStore(
            config.state_dir / "outbox.sqlite3",
            max_page_count=None if max_size is None else max_size // OUTBOX_PAGE_SIZE,
        )
        self.tracker = ButtonTracker(
            [Button(b.id, b.name, b.key) for b in config.buttons],
            debounce=config.radio.debounce,
            cooldown=config.radio.cooldown,
        )
        n = config.apns.notification
        self.notifier = Notifier(
            Template(n.title, n.body, n.sound, n.collapsed),
            expiration=config.apns.expiration,
            default_env=config.apns.environment,
        )
        self.rings: dict[str, tuple[float | None, int]] = {b.id: (None, 0) for b in config.buttons}
        self.commands = ControlCommands(self)
        self.client: ApnsClient | None = None
        self.dispatcher: Dispatcher | None = None
        self.receiver: SerialReceiver | None = None
        self.cloud: CloudSync | None = None
        self.home_assistant: HomeAssistantLink | None = None
        self._background: set[asyncio.Task[None]] = set()  # fire-and-forget tasks, kept alive
        self._auth: ApnsAuth | None = None
        self.credentials: CredentialsCheck | None = None
        self.ready = False

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        auth = self._auth = make_auth(self.config)
        apns = self.config.apns
        # Built here, used only after the control socket is ours: none of these does I/O yet.
        client = ApnsClient(
            auth=auth,
            host_override=apns.host,
            ca_file=apns.ca_file,
            connect_timeout=apns.connect_timeout,
            request_timeout=apns.request_timeout,
            ping_interval=apns.ping_interval,
        )
        self.credentials = CredentialsCheck(
            client,
            apns.topic,
            enabled=apns.verify_credentials,
            retry=(apns.retry_min, apns.retry_max),
        )
        self.dispatcher = Dispatcher(
            sender=client,
            store=self.store,
            tokens=self.tokens,
            topic=apns.topic,
            retry_min=apns.retry_min,
            retry_max=apns.retry_max,
            collapse=self._collapse,
            on_feedback=self._on_feedback,
            on_report=self._on_report,
        )
        client.on_lost = self.dispatcher.connection_lost  # the engine decides when to reconnect
        radio = self.config.radio
        self.receiver = SerialReceiver(
            radio.port,
            radio.protocol,
            radio.baudrate,
            self._on_radio_event,
            ping_interval=radio.ping_interval or None,
            ping_timeout=radio.ping_timeout,
            backoff_min=radio.reconnect_min,
            backoff_max=radio.reconnect_max,
        )
        control = ControlServer(self.config.control_socket, self.commands.handlers())
        # The control socket is the single-instance lock: a second `edgebell run` stops here,
        # before it touches the running daemon's database or takes over its MQTT session.
        await control.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            # No await until the rows are resumed: no ring (from the socket) can be queued
            # before the outbox's own rows are read, so none is read back as a second copy.
            self.store.open()
            pending = self.store.load_pending()
            self._load_tokens()
            self._open_cloud()
            self.client = client  # after restore: the warm-up below connects what the list needs
            self.store.start()
            if pending:
                log.info("resuming %d undelivered notifications from the outbox", len(pending))
            self.dispatcher.resume(pending)
            if self.cloud is not None:
                self.cloud.start()
            self._open_home_assistant()
            tasks.append(asyncio.create_task(self.receiver.run(), name="radio"))
            if self._systemd.enabled:
                # Already while starting: STATUS= then says what start-up is waiting for.
                tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
            # SIGTERM while still waiting for the receiver stops now, not after the grace:
            # `systemctl stop` of a gateway whose receiver is missing must not take 10 s.
            warm_up = asyncio.create_task(self._warm_up(), name="warm-up")
            tasks.append(warm_up)
            stopping = asyncio.create_task(self._stop.wait(), name="stop")
            try:
                await asyncio.wait({warm_up, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not self._stop.is_set():
                    warm_up.result()  # its failure, if any, as when it was awaited
                    self._announce_ready()
                    await stopping
            finally:
                stopping.cancel()
        finally:
            await self._shut_down(control, client, tasks)
        log.info("stopped")
        self._systemd.close()
        return 0

    async def _shut_down(
        self, control: ControlServer, client: ApnsClient, tasks: list[asyncio.Task[None]]
    ) -> None:
        """Stop within one budget: in-flight pushes and the cloud's goodbye share it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        self._systemd.stopping("draining in-flight pushes")
        log.info("stopping: letting in-flight pushes finish")

        def left(reserve: float = 0.0) -> float:
            return max(0.0, deadline - reserve - loop.time())

        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.credentials is not None:
            await self.credentials.aclose()
        steps = [control.close()]
        if self.dispatcher is not None:
            steps.append(self.dispatcher.drain(left(CLOSE_RESERVE)))
        if self.cloud is not None:
            steps.append(self.cloud.stop(min(CLOUD_STOP_TIMEOUT, left(CLOSE_RESERVE))))
        if self.home_assistant is not None:
            steps.append(self.home_assistant.stop(min(CLOUD_STOP_TIMEOUT, left(CLOSE_RESERVE))))
        await asyncio.gather(*steps)
        # Last, once the drain has queued its writes: the connections, and the database
        # (its writer joined off the loop, so a slow disk cannot stall the deadline).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.aclose(), max(left(), 0.1))
        await asyncio.to_thread(self.store.close, max(left(), 0.5))

    def request_stop(self) -> None:
        self._stop.set()

    async def _warm_up(self) -> None:
        """Open the APNs connections now so the first ring finds them warm; wait for the radio."""
        assert self.client is not None
        assert self.receiver is not None
        envs = {Environment(t.env) for t in self.tokens.active()} or {
            Environment(self.config.apns.environment)
        }
        results = await asyncio.gather(
            *(self.client.connect(env) for env in envs), return_exceptions=True
        )
        for env, result in zip(envs, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("APNs %s not reachable at start (%s): will retry", env.value, result)
                assert self.dispatcher is not None
                self.dispatcher.connect_failed(env, str(result))
        assert self.credentials is not None
        self.credentials.recheck(envs, "start")
        # READY's STATUS= line then carries Apple's verdict, not "not yet proven".
        apns = self.config.apns
        await asyncio.gather(
            _within(self.receiver.wait_connected(), self._ready_grace),
            _within(self.credentials.wait_answered(), apns.connect_timeout + apns.request_timeout),
        )

    def _envs_in_use(self) -> set[Environment]:
        return {Environment(t.env) for t in self.tokens.active()} or {
            Environment(self.config.apns.environment)
        }

    def _announce_ready(self) -> None:
        self.ready = True
        report = self.status()
        log.info("edgebell %s ready: %s", __version__, report.summary)
        self._systemd.ready(report.summary)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 and STATUS= from a task: the pings stop when the event loop stops turning."""
        pings = self._systemd.watchdog_interval
        interval = STATUS_EVERY if pings is None else min(pings, STATUS_EVERY)
        last_summary = ""
        while True:
            if pings is not None:
                self._systemd.watchdog()
            summary = self.status().summary
            if summary != last_summary:
                self._systemd.status(summary)
                last_summary = summary
            await asyncio.sleep(interval)

    def _load_tokens(self) -> None:
        self._apply_static_tokens()
        self.tokens.restore_suppressed(
            {
                s.token: Suppression(s.status, s.reason, s.timestamp_ms, s.env, s.topic)
                for s in self.store.load_suppressed()
            }
        )

    def _apply_static_tokens(self) -> None:
        """The config's ``tokens`` and the cloud's list into the book (start, reload, new list)."""
        default_env = self.config.apns.environment
        static = [AuthorisedToken(t.token, t.env or default_env) for t in self.config.tokens]
        cloud_list = None if self.cloud is None else self.cloud.token_list
        if cloud_list is None:
            self.tokens.replace(static, None)
        else:
            # A token in both comes from the cloud's list: its buttons, its registered_at.
            listed = {t.token for t in cloud_list.tokens}
            merged = [t for t in static if t.token not in listed] + list(cloud_list.tokens)
            self.tokens.replace(merged, cloud_list.ver)

    # -- SIGHUP: reload the configuration ------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file and apply what can change without dropping a connection.

        A file that does not load or names a bad key file is refused: the running
        configuration stays and ``status`` says so. Settings that need a restart are named
        in the log and in ``status``. Returns whether the new file was taken.
        """
        if self.ready:  # while starting, systemd waits for the first READY=1 anyway
            self._systemd.reloading(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        source = self.config.source
        try:
            new = load_config(source, environ=self._environ)
            warnings = check_config(new)
        except ConfigError as exc:
            self.config_state = dataclasses.replace(self.config_state, reload_error=str(exc))
            log.error("reload refused, still running the previous configuration: %s", exc)
            self._reloaded()
            return False
        for warning in warnings:
            log.warning("%s", warning)
        running = adopt(self.config, new)
        applied = differences(self.config, running)
        pending = differences(running, new)
        self.config = running
        self.tracker = self.tracker.reconfigured(
            [Button(b.id, b.name, b.key) for b in running.buttons],
            debounce=running.radio.debounce,
            cooldown=running.radio.cooldown,
        )
        for b in running.buttons:
            self.rings.setdefault(b.id, (None, 0))
        n = running.apns.notification
        self.notifier = Notifier(
            Template(n.title, n.body, n.sound, n.collapsed),
            expiration=running.apns.expiration,
            default_env=running.apns.environment,
        )
        self._apply_static_tokens()
        if self.dispatcher is not None:
            self.dispatcher.purge_inactive()  # queued pushes to tokens no longer listed go
        self._reload_home_assistant()
        if self.credentials is not None and self.ready:
            self.credentials.recheck(self._envs_in_use(), "reload")
        set_level(running.log_level)
        self.config_state = ConfigState(str(source), time.time(), None, tuple(pending))
        log.info(
            "configuration reloaded from %s: %s",
            source,
            f"applied {', '.join(applied)}" if applied else "no change to apply",
        )
        if pending:
            log.warning("changed, but applied only at the next restart: %s", ", ".join(pending))
        self._reloaded()
        return True

    def _reloaded(self) -> None:
        if self.ready:
            self._systemd.ready(self.status().summary)  # READY=1 ends systemd's "reloading"

    # -- the ring path ------------------------------------------------------------------

    def _on_radio_event(self, event: RadioEvent) -> None:
        if isinstance(event, Frame):
            press = self.tracker.on_frame(event.key, time.monotonic())
            if press.verdict is Verdict.RING and press.button is not None:
                self.ring(press.button, press.presses)
            elif press.verdict is Verdict.UNKNOWN:
                self.commands.tell_learners(event)
            elif press.verdict is Verdict.COOLDOWN and press.button is not None:
                log.info("button %s pressed again within cooldown: counted", press.button.id)
        elif isinstance(event, Banner):
            log.info("receiver announced itself: %s", event.text)
        elif isinstance(event, BadFrame):
            log.debug("undecodable receiver output (%s)", event.reason)

    def ring(self, button: Button, presses: int = 1, *, manual: bool = False) -> Ring:
        """Accept a ring: fan out to every authorised phone at once."""
        assert self.dispatcher is not None
        ring = Ring(new_id(), button.id, button.name, time.time(), presses, manual)
        notifications: list[Notification] = []
        try:
            notifications = self.notifier.fan_out(ring, self.tokens.for_button(button.id))
            # Accepted: every phone's row in one commit, before anything else happens (no
            # log line, no push); the dispatcher may then fold them into waiting pushes.
            self.store.add(notifications)
            with self.store.transaction():
                self.dispatcher.submit(notifications)
        except Exception:
            # A bug in the fan-out must not lose the ring: it is still counted and published.
            log.exception("ring %s: cannot push it to the phones", ring.ring_id[:8])
            notifications = []
        # Everything below acknowledges the ring: the dispatcher has committed its rows
        # (store.add), or they wait in memory for a failing disk and the log line says so.
        durable = self.store.is_durable(ring.ring_id)
        if self.cloud is not None:
            self.cloud.ring(ring)
        if self.home_assistant is not None:
            self.home_assistant.ring(ring)  # a queue append: published by the link's own task
        _, count = self.rings.get(button.id, (None, 0))
        self.rings[button.id] = (ring.at, count + 1)
        log.info(
            "ring %s: %s (%s)%s, pushing to %d phone%s%s",
            ring.ring_id[:8],
            button.id,
            button.name,
            f", {presses} presses" if presses > 1 else "",
            len(notifications),
            "" if len(notifications) == 1 else "s",
            "" if durable else f"; NOT on disk yet ({self.store.health().last_error})",
        )
        if not notifications:
            self.dispatcher.open_ring(ring.ring_id)
        return ring

    def _on_feedback(self, feedback: Feedback) -> None:
        if self.cloud is not None:
            entry = self.tokens.get(feedback.token)
            self.cloud.feedback(feedback, None if entry is None else entry.registered_at)

    def _collapse(self, older: Notification, newer: Notification) -> Notification:
        """One push for two rings of one button that waited for Apple (see Notifier.collapsed)."""
        button = self.tracker.button(newer.button)
        return self.notifier.collapsed(
            older, newer, newer.button if button is None else button.name
        )

    def _on_report(self, report: DeliveryReport) -> None:
        if self.cloud is not None:
            self.cloud.delivery(report)

    # -- the cloud (MQTT) ----------------------------------------------------------------------

    def _open_cloud(self) -> None:
        """The MQTT sync, with what it kept on disk (read before the store's writer starts)."""
        if self.config.cloud is None:
            return
        from edgebell.cloud.sync import CloudSync

        self.cloud = CloudSync(
            self.config.cloud,
            gateway_id=self.config.gateway.id,
            version=__version__,
            started_at=self.started_at,
            store=self.store,
            hooks=self,
            delegated=isinstance(self._auth, DelegatedAuth),
        )
        self.cloud.restore()

    # -- Home Assistant (the home's own MQTT broker) ---------------------------------------------

    def _open_home_assistant(self) -> None:
        if self.config.home_assistant is None:
            return
        from edgebell.homeassistant.gateway import open_link

        self.home_assistant = open_link(self.config, __version__, self)

    def _reload_home_assistant(self) -> None:
        if self.home_assistant is None and self.config.home_assistant is None:
            return
        from edgebell.homeassistant.gateway import reload_link

        self.home_assistant = reload_link(self.home_assistant, self.config, __version__, self)

    def token_list_changed(self, token_list: TokenList) -> None:
        self._apply_static_tokens()
        if self.dispatcher is not None:
            self.dispatcher.purge_inactive()  # queued pushes to removed tokens are dropped now
        self._warm_new_environments()

    def _warm_new_environments(self) -> None:
        """A list that brings the first phone of an environment: connect now, not at the ring."""
        if self.client is None:
            return
        connected = self.client.status().connected
        for env in {Environment(t.env) for t in self.tokens.active()}:
            if not connected.get(env.value):
                task = asyncio.create_task(self._warm(env), name=f"warm {env.value}")
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _warm(self, env: Environment) -> None:
        assert self.client is not None
        try:
            await self.client.connect(env)
        except ApnsError as exc:  # the first push to it will try again and report
            log.warning("APNs %s not reachable (%s): will retry", env.value, exc)

    def pending_pushes(self) -> int:
        return 0 if self.dispatcher is None else self.dispatcher.status().pending

    def use_provider_token(self, token: ProviderToken) -> bool:
        if not isinstance(self._auth, DelegatedAuth):
            return False
        taken = self._auth.set_token(token.jwt, token.iat)
        if taken and self.dispatcher is not None:
            self.dispatcher.wake_all()  # pushes that waited for a JWT go now, not after backoff
        if taken and self.credentials is not None and self.client is not None:
            self.credentials.recheck(self._envs_in_use(), "new provider JWT")
        return taken

    def ring_button(self, button: str) -> Ring | None:
        """Ring ``button`` now, as ``edgebell ring`` does (no debounce, no cooldown)."""
        press = self.tracker.ring_now(button, time.monotonic())
        if press.button is None:
            return None
        return self.ring(press.button, press.presses, manual=True)

    async def test_push(self, token: Any) -> list[JSON]:
        """Push a test notification now, for the cloud's ``test-push`` (see ControlCommands)."""
        return await self.commands.test_push(token)

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> StatusReport:
        assert self.dispatcher is not None
        assert self.client is not None
        assert self.receiver is not None
        assert self.credentials is not None
        return build_status(
            version=__version__,
            started_at=self.started_at,
            uptime_s=time.monotonic() - self._started_mono,
            ready=self.ready,
            radio=self.receiver.status(),
            buttons=[(b.id, *self.rings.get(b.id, (None, 0))) for b in self.tracker.buttons],
            tokens=self.tokens,
            apns=self.credentials.discount(self.client.status()),
            credentials=self.credentials.status(),
            credentials_problem=self.credentials.problem(),
            outbox=self.dispatcher.status(),
            store=self.store.health(),
            cloud=None if self.cloud is None else self.cloud.status(),
            home_assistant=None if self.home_assistant is None else self.home_assistant.status(),
            config=self.config_state,
        )


async def _within(awaitable: Awaitable[None], seconds: float) -> None:
    """Wait for ``awaitable`` at most ``seconds``; start-up goes on either way."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(awaitable, seconds)
