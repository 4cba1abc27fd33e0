"""The running registry: operations on a worker thread, lists published as they change.

The database calls block, so they run one at a time on one worker thread; a
list is sent to the broker from inside its transaction (``Operations.publish``),
which is why ``_send`` hands the publish to the event loop and waits for the broker.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from edgebell import __version__
from edgebell.cloud import tools, topics
from edgebell.cloud.messages import Hello, ProviderToken, parse_hello, provider_token_message
from edgebell.errors import CloudError, EdgebellError, StoreError
from edgebell.privacy import short_token
from edgebell.registry import inbound
from edgebell.registry.config import FleetApnsConfig
from edgebell.registry.model import Change, Published
from edgebell.registry.operations import Operations

log = logging.getLogger(__name__)
T = TypeVar("T")

FLEET_JWT_MIN_AGE = 20 * 60  # Apple: refresh a provider token at most every 20 minutes
PUBLISH_TIMEOUT = 10.0
POLL_INTERVAL = 1.0  # how soon a list committed elsewhere (CLI, a crashed instance) goes out
PRUNE_INTERVAL = 3600.0
FLEET_INTERVAL = 60.0


class NotConnected(CloudError):
    """The broker is not reachable now; the list stays unpublished and goes out later."""


class Broker(Protocol):
    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None: ...


class RegistryService:
    def __init__(
        self,
        ops: Operations,
        *,
        topic_prefix: str,
        apns: FleetApnsConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ops = ops
        self.prefix = topic_prefix
        self.apns = apns
        self.broker: Broker | None = None
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="registry")
        self.counters: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self._fleet_sent_iat: int | None = None
        self.started_at = clock()
        self._parsers: dict[str, Callable[[bytes], object]] = {
            topics.HELLO: parse_hello,
            topics.FEEDBACK: inbound.parse_feedback,
            topics.RING: inbound.parse_ring,
            topics.DELIVERY: inbound.parse_delivery,
        }

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking operation on the registry's worker thread."""
        self._loop = asyncio.get_running_loop()
        return await self._loop.run_in_executor(self._executor, lambda: fn(*args))

    async def change(self, fn: Callable[..., Change], *args: Any) -> dict[str, Any]:
        """Run a changing operation, publish the lists it changed; the API's answer."""
        change = await self.call(fn, *args)
        log.info("%s", change.detail)  # tokens in details are shortened already
        lists = []
        for published in change.lists:
            sent = await self.publish(published.gateway)
            lists.append({"gateway": published.gateway, "ver": published.ver, "published": sent})
        return {"detail": change.detail, "lists": lists}

    async def publish(
        self, gateway: str, *, unless_ver: int | None = None, force: bool = False
    ) -> bool:
        """Send the gateway's current list if it is not out yet (or ``force``); True if the
        broker has it now."""
        if self.broker is None:
            return False
        try:
            done = await self.call(
                lambda: self.ops.publish(gateway, self._send, unless_ver=unless_ver, force=force)
            )
        except NotConnected:
            return False
        except EdgebellError as exc:
            log.warning("publishing %s's list failed (sent again later): %s", gateway, exc)
            return False
        if done is not None:
            self.counters["lists published"] += 1
            log.info("published %s's list ver %d", gateway, done.ver)
        return True

    def _send(self, published: Published) -> None:
        # On the worker thread, inside the gateway's transaction: the loop does the I/O.
        self._publish_blocking(
            f"{self.prefix}/{published.gateway}/tokens", published.jws.encode(), retain=True
        )

    def _publish_blocking(self, topic: str, payload: bytes, *, retain: bool) -> None:
        broker, loop = self.broker, self._loop
        if broker is None or loop is None:
            raise NotConnected("no broker")
        future = asyncio.run_coroutine_threadsafe(
            broker.publish(topic, payload, retain=retain), loop
        )
        try:
            future.result(PUBLISH_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise NotConnected("the broker did not acknowledge in time") from None

    async def publish_pending(self) -> int:
        """Every list committed but not yet on the broker: after a reconnect, from the CLI, or
        from an instance that stopped between commit and publish."""
        sent = 0
        for gateway in await self.call(self.ops.unpublished):
            if not await self.publish(gateway):
                break
            sent += 1
        return sent

    # -- what gateways send --------------------------------------------------------------

    async def on_message(self, gateway: str, kind: str, payload: bytes) -> None:
        try:
            parsed = self._parsers[kind](payload)
        except CloudError as exc:  # the contract broken: counted, nothing else happens
            self.refuse(kind, str(exc).removeprefix(f"{kind}: "), gateway)
            return
        if isinstance(parsed, Hello):
            await self.on_hello(gateway, parsed)
        elif isinstance(parsed, inbound.FeedbackReport):
            await self.on_feedback(gateway, parsed)
        elif isinstance(parsed, inbound.RingReport):
            await self._event(gateway, "ring", self.ops.record_ring, parsed)
        elif isinstance(parsed, inbound.DeliveryCounts):
            await self._event(gateway, "delivery", self.ops.record_delivery, parsed)

    def refuse(self, source: str, reason: str, gateway: str = "", about: str = "") -> None:
        """Count a refusal by its reason (``about`` only goes to the log)."""
        self.refused[f"{source}: {reason}"] += 1
        sender = f" from {gateway}" if gateway else ""
        log.warning("refused %s%s: %s%s", source, sender, reason, f" ({about})" if about else "")

    async def on_hello(self, gateway: str, hello: Hello) -> None:
        """The contract's answer: the current list when the gateway's ``ver`` is another one,
        and in delegated mode the fleet JWT when it holds another."""
        current = await self.call(self.ops.current, gateway)
        if current is None:
            self.refuse("hello", "unknown gateway", gateway)
            return
        if hello.wants_list(current.ver):
            await self.publish(gateway, unless_ver=hello.tokens_ver, force=True)
        if self.apns is not None and self.broker is not None:
            token, iat = await self.fleet_jwt()
            if hello.jwt_iat != iat:
                await self.broker.publish(
                    f"{self.prefix}/{gateway}/{topics.APNS_JWT}",
                    provider_token_message(ProviderToken(token, iat)),
                    retain=False,
                )
        self.counters["hellos answered"] += 1

    async def on_feedback(self, gateway: str, report: inbound.FeedbackReport) -> None:
        outcome = await self.call(self.ops.apply_feedback, gateway, report)
        if outcome.refusal is not None:
            self.refuse("feedback", outcome.refusal, gateway, short_token(report.token))
            return
        self.counters["tokens removed by feedback"] += 1
        log.info("%s (reported by %s)", outcome.change.detail, gateway)
        for published in outcome.change.lists:
            await self.publish(published.gateway)

    async def _event(
        self, gateway: str, kind: str, record: Callable[..., bool], value: Any
    ) -> None:
        if await self.call(record, gateway, value):
            self.counters[f"{kind} events"] += 1
        else:
            self.refuse(kind, "unknown gateway", gateway)

    # -- delegated mode: the fleet's provider JWT -----------------------------------------

    async def fleet_jwt(self) -> tuple[str, int]:
        apns = self.apns
        assert apns is not None

        def mint(iat: int) -> str:
            return tools.mint_apns_jwt(apns.key_file, apns.key_id, apns.team_id, iat=iat)

        token, iat, minted = await self.call(
            lambda: self.ops.fleet_jwt(mint, min_age_s=FLEET_JWT_MIN_AGE)
        )
        if minted:
            self.counters["fleet JWTs minted"] += 1
            log.info("minted the fleet's APNs provider JWT (iat %d)", iat)
        return token, iat

    async def fleet_tick(self) -> None:
        """Mint when due, and put the current JWT on ``<prefix>/fleet/apns-jwt`` (retained)."""
        if self.apns is None or self.broker is None:
            return
        token, iat = await self.fleet_jwt()
        if iat != self._fleet_sent_iat:
            await self.broker.publish(
                f"{self.prefix}/fleet/apns-jwt",
                provider_token_message(ProviderToken(token, iat)),
                retain=True,
            )
            self._fleet_sent_iat = iat

    def connected(self, broker: Broker | None) -> None:
        self.broker = broker
        if broker is None:
            self._fleet_sent_iat = None

    # -- housekeeping -------------------------------------------------------------------

    async def housekeeping(self, poll: float = POLL_INTERVAL) -> None:
        """Forever: unpublished lists out, the fleet JWT fresh, old events pruned."""
        last_prune = last_fleet = -1e18
        while True:
            now = time.monotonic()
            try:
                if self.broker is not None:
                    await self.publish_pending()
                    if now - last_fleet >= FLEET_INTERVAL:
                        await self.fleet_tick()
                        last_fleet = now
                if now - last_prune >= PRUNE_INTERVAL:
                    pruned = await self.call(self.ops.prune)
                    last_prune = now
                    if pruned:
                        log.info("pruned %d old events and removal records", pruned)
            except (EdgebellError, OSError) as exc:
                log.warning("housekeeping: %s", exc)
            await asyncio.sleep(poll)

    async def status(self) -> dict[str, Any]:
        # What keeps gateways' lists from being true, each with what to do about it.
        problems = []
        unpublished: int | None = None
        try:
            unpublished = await self.call(self.ops.unpublished_count)
        except StoreError as exc:
            problems.append(f"the database is unavailable: {exc}")
        if self.broker is None:
            problems.append("not connected to the MQTT broker: lists are kept, not published")
        if unpublished:
            problems.append(f"{unpublished} lists not published yet (sent once connected)")
        return {
            "state": "degraded" if problems else "healthy",
            "problems": problems,
            "version": __version__,
            "uptime_s": round(self._clock() - self.started_at, 1),
            "database": self.ops.db.url,
            "mqtt": {"connected": self.broker is not None},
            "lists_unpublished": unpublished,
            "delegated": self.apns is not None,
            "counters": dict(sorted(self.counters.items())),
            "refused": dict(sorted(self.refused.items())),
        }

    def close(self) -> None:
        self._executor.shutdown(wait=True)
