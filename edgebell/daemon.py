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
from typing import TYPE_CHECKING

from edgebell import __version__
from edgebell.apns.auth import ApnsAuth, CertificateAuth, DelegatedAuth, TokenAuth
from edgebell.apns.client import ApnsClient
from edgebell.apns.credentials import CredentialsCheck, Witnessed
from edgebell.apns.signer import Signer
from edgebell.commands import ControlCommands
from edgebell.config import (
    CertificateAuthConfig,
    CloudConfig,
    Config,
    DelegatedAuthConfig,
    TokenAuthConfig,
    check_config,
    load_config,
)
from edgebell.control_server import ControlServer
from edgebell.errors import ConfigError
from edgebell.gatewaystatus import GatewayStatus
from edgebell.logs import set_level
from edgebell.outbox.dispatcher import DeliveryReport, Dispatcher, Feedback
from edgebell.outbox.store import OutboxStore
from edgebell.radio.serial import SerialReceiver
from edgebell.reload import adopt, differences
from edgebell.ringpath import RingPath, RingRules
from edgebell.sdnotify import Notifier as SystemdNotifier
from edgebell.secrets import read_passphrase, read_secret
from edgebell.service import CommandService
from edgebell.status import ConfigState, StatusReport
from edgebell.tokens import TokenBook
from edgebell.tokensources import TokenSources

if TYPE_CHECKING:  # the MQTT stack is imported only by gateways that have a cloud section
    from edgebell.cloud.gateway import CloudHooks
    from edgebell.cloud.sync import CloudSync
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
        # The key's bytes stay here; each JWT is signed by a child process (see signer.py).
        signer = Signer(key, auth.key_id, auth.team_id, name=str(auth.key_file))
        return TokenAuth(
            auth.key_id,
            auth.team_id,
            mint=signer.mint,
            refresh_after=config.apns.jwt_refresh,
            # A signer that failed is tried again at the pace of the longest push backoff.
            retry_after=config.apns.retry_max,
        )
    if isinstance(auth, CertificateAuthConfig):
        passphrase = None
        if auth.passphrase_file is not None:
            passphrase = read_passphrase(auth.passphrase_file)
        return CertificateAuth(auth.cert_file, passphrase)
    if isinstance(auth, DelegatedAuthConfig):
        return DelegatedAuth()
    raise TypeError(f"unknown auth config {auth!r}")


class Daemon:
    """One running gateway, built complete from its config. ``run()`` returns the exit code."""

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
        self._stop = asyncio.Event()
        self._systemd = SystemdNotifier(environ)
        self.ready = False
        started_at = time.time()
        apns, radio = config.apns, config.radio
        # None of these does I/O yet: it starts in run(), once the control socket is ours.
        self.tokens = TokenBook(topic=apns.topic)
        self.token_sources = TokenSources(self.tokens, config)
        max_size = config.outbox.max_size
        self.store = OutboxStore(
            config.state_dir / "outbox.sqlite3",
            max_page_count=None if max_size is None else max_size // OUTBOX_PAGE_SIZE,
        )
        self.auth = make_auth(config)
        self.client = ApnsClient(
            auth=self.auth,
            host_override=apns.host,
            ca_file=apns.ca_file,
            connect_timeout=apns.connect_timeout,
            request_timeout=apns.request_timeout,
            ping_interval=apns.ping_interval,
        )
        self.credentials = CredentialsCheck(
            self.client,
            apns.topic,
            enabled=apns.verify_credentials,
            retry=(apns.retry_min, apns.retry_max),
        )
        self.rules = RingRules(config)
        # The cloud sync is built last (its hooks need the command service); the
        # dispatcher's feedback and reports reach it through these two relays.
        cloud: CloudSync | None = None

        def feedback(fb: Feedback) -> None:
            if cloud is not None:
                entry = self.tokens.get(fb.token)
                cloud.feedback(fb, None if entry is None else entry.registered_at)

        def report(rep: DeliveryReport) -> None:
            if cloud is not None:
                cloud.delivery(rep)

        self.dispatcher = Dispatcher(
            sender=Witnessed(self.client, self.credentials),
            store=self.store,
            tokens=self.tokens,
            topic=apns.topic,
            retry_min=apns.retry_min,
            retry_max=apns.retry_max,
            collapse=self.rules.collapse,
            on_feedback=feedback,
            on_report=report,
        )
        # The engine, not the client, decides when to reconnect.
        self.client.on_lost = self.dispatcher.connection_lost
        self.ring_path = RingPath(
            self.rules, store=self.store, tokens=self.tokens, outbox=self.dispatcher
        )
        self.receiver = SerialReceiver(
            radio.port,
            radio.protocol,
            radio.baudrate,
            self.ring_path.on_radio_event,
            ping_interval=radio.ping_interval or None,
            ping_timeout=radio.ping_timeout,
            backoff_min=radio.reconnect_min,
            backoff_max=radio.reconnect_max,
        )
        self.service = CommandService(
            config=lambda: self.config,
            ring_path=self.ring_path,
            store=self.store,
            tokens=self.tokens,
            sender=self.client,
            dead_tokens=self.dispatcher,
            status=self.status,
            reload=self.reload,
            config_state=lambda: self.config_state,
            receiver_connected=lambda: self.receiver.status().connected,
        )
        self.ring_path.on_unknown = self.service.tell_learners
        self.control = ControlServer(
            config.control_socket, ControlCommands(self.service).handlers()
        )
        self.cloud_hooks: CloudHooks | None = None
        if config.cloud is not None:
            cloud, self.cloud_hooks = _cloud(self, config.cloud, config.gateway.id, started_at)
        self.cloud = cloud
        self.home_assistant: HomeAssistantLink | None = None
        self.gateway_status = GatewayStatus(
            started_at=started_at,
            receiver=self.receiver,
            rules=self.rules,
            tokens=self.tokens,
            client=self.client,
            credentials=self.credentials,
            dispatcher=self.dispatcher,
            store=self.store,
            cloud=cloud,
        )
        self._update_listeners()

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        # The control socket is the single-instance lock: a second `edgebell run` stops here,
        # before it touches the running daemon's database or takes over its MQTT session.
        await self.control.start()
        tasks: list[asyncio.Task[None]] = []
        try:
            # No await until the rows are resumed: no ring (from the socket) can be queued
            # before the outbox's own rows are read, so none is read back as a second copy.
            self.store.open()
            pending = self.store.load_pending()
            self._load_tokens()
            if self.cloud is not None:
                self.cloud.restore()  # what it kept on disk, read before the store's writer starts
            if self.cloud_hooks is not None:
                self.cloud_hooks.started = True  # the warm-up below connects what the list needs
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
            await self._shut_down(tasks)
        log.info("stopped")
        self._systemd.close()
        return 0

    async def _shut_down(self, tasks: list[asyncio.Task[None]]) -> None:
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
        await self.credentials.aclose()
        steps = [self.control.close(), self.dispatcher.drain(left(CLOSE_RESERVE))]
        if self.cloud is not None:
            steps.append(self.cloud.stop(min(CLOUD_STOP_TIMEOUT, left(CLOSE_RESERVE))))
        if self.home_assistant is not None:
            steps.append(self.home_assistant.stop(min(CLOUD_STOP_TIMEOUT, left(CLOSE_RESERVE))))
        await asyncio.gather(*steps)
        # Last, once the drain has queued its writes: the connections, and the database
        # (its writer joined off the loop, so a slow disk cannot stall the deadline).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.client.aclose(), max(left(), 0.1))
        await asyncio.to_thread(self.store.close, max(left(), 0.5))

    def request_stop(self) -> None:
        self._stop.set()

    async def _warm_up(self) -> None:
        """Open the APNs connections now so the first ring finds them warm; wait for the radio."""
        envs = self.token_sources.envs_in_use()
        results = await asyncio.gather(
            *(self.client.connect(env) for env in envs), return_exceptions=True
        )
        for env, result in zip(envs, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("APNs %s not reachable at start (%s): will retry", env.value, result)
                self.dispatcher.connect_failed(env, str(result))
        self.credentials.recheck(envs, "start")
        # READY's STATUS= line then carries Apple's verdict, not "not yet proven".
        apns = self.config.apns
        await asyncio.gather(
            _within(self.receiver.wait_connected(), self._ready_grace),
            _within(self.credentials.wait_answered(), apns.connect_timeout + apns.request_timeout),
        )

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
        self.token_sources.use_config(self.config)
        self.tokens.restore_suppressed(self.store.load_suppressed())

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
            # A changed APNs key is signed with once, in a child (60 ms the loop waits, on a
            # reload that names a new key); the key in use already signs every JWT.
            warnings = check_config(new, sign=new.apns.auth != self.config.apns.auth)
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
        self.rules.reconfigure(running)
        self.token_sources.use_config(running)
        self.dispatcher.purge_inactive()  # queued pushes to tokens no longer listed go
        self._reload_home_assistant()
        if self.ready:
            self.credentials.recheck(self.token_sources.envs_in_use(), "reload")
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

    # -- Home Assistant (the home's own MQTT broker) ---------------------------------------------

    def _open_home_assistant(self) -> None:
        if self.config.home_assistant is None:
            return
        from edgebell.homeassistant.gateway import open_link

        self.home_assistant = open_link(self.config, __version__, self)
        self._update_listeners()

    def _reload_home_assistant(self) -> None:
        if self.home_assistant is None and self.config.home_assistant is None:
            return
        from edgebell.homeassistant.gateway import reload_link

        self.home_assistant = reload_link(self.home_assistant, self.config, __version__, self)
        self._update_listeners()

    def _update_listeners(self) -> None:
        """Who is told of each ring: the cloud (``P/ring``), then Home Assistant."""
        self.ring_path.listeners = tuple(
            x for x in (self.cloud, self.home_assistant) if x is not None
        )

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> StatusReport:
        return self.gateway_status.report(
            ready=self.ready, config=self.config_state, home_assistant=self.home_assistant
        )


def _cloud(
    daemon: Daemon, section: CloudConfig, gateway_id: str, started_at: float
) -> tuple[CloudSync, CloudHooks]:
    """The MQTT sync and its hooks (the MQTT stack is imported only by cloud gateways)."""
    from edgebell.cloud.gateway import CloudHooks
    from edgebell.cloud.sync import CloudSync

    hooks = CloudHooks(
        service=daemon.service,
        tokens=daemon.tokens,
        sources=daemon.token_sources,
        dispatcher=daemon.dispatcher,
        client=daemon.client,
        credentials=daemon.credentials,
        auth=daemon.auth,
    )
    sync = CloudSync(
        section,
        gateway_id=gateway_id,
        version=__version__,
        started_at=started_at,
        store=daemon.store,
        hooks=hooks,
        delegated=isinstance(daemon.auth, DelegatedAuth),
    )
    return sync, hooks


async def _within(awaitable: Awaitable[None], seconds: float) -> None:
    """Wait for ``awaitable`` at most ``seconds``; start-up goes on either way."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(awaitable, seconds)
