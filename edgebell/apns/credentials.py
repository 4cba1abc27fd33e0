"""Proving the APNs credentials before the first ring, without any phone receiving anything.

Apple authenticates a request (the provider JWT's key id, team and signature, or the
TLS client certificate) and checks its topic before it looks the device token up.
A push to a well-formed token that belongs to no device therefore answers
``400 BadDeviceToken`` exactly when key, team and topic were accepted, while bad
credentials answer ``403`` (``InvalidProviderToken``, ``MissingProviderToken``,
``BadCertificate``, ``BadCertificateEnvironment``, ``Forbidden``) and a topic the
credentials may not push to answers ``400 TopicDisallowed`` / ``BadTopic``. The probe
goes through the client's ordinary send path, so it proves the very connection, JWT
and headers that a ring uses; it carries ``apns-expiration: 0`` (never stored).
What is relied on is written down in docs/operations.md ("Credentials proven before
the first ring").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from edgebell.apns.client import ApnsStatus
from edgebell.apns.model import Environment, Outcome, PushRequest, PushResult
from edgebell.backoff import Backoff
from edgebell.rings import iso_time

log = logging.getLogger(__name__)

# 32 zero bytes: the length of every token Apple issues today, and a value no device has.
PROBE_TOKEN = "0" * 64
PROBE_PAYLOAD = json.dumps({"aps": {"alert": {"title": "edgebell credentials check"}}}).encode()
REFUSED_RECHECK = 300.0  # refused credentials are tried again this often (a fix at Apple's end)

# What Apple answers once key, team and topic were accepted and only the device is unknown.
_ACCEPTED = {
    (400, "BadDeviceToken"),  # the expected answer: no device has this token
    (400, "DeviceTokenNotForTopic"),  # a device has it, for another app: auth passed
    (410, "Unregistered"),
    (410, "ExpiredToken"),
}
_TOPIC_REFUSED = frozenset({"TopicDisallowed", "BadTopic", "MissingTopic"})


class CredentialState(enum.StrEnum):
    """Whether Apple has accepted the credentials (the value is what status says)."""

    UNPROVEN = "not yet proven"
    VERIFIED = "verified"
    REFUSED = "refused"
    OFF = "not checked"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one probe answer says; ``retry``: ask again soon (no answer from Apple yet)."""

    state: CredentialState
    detail: str
    retry: bool = False


def judge(result: PushResult) -> Verdict:
    """The verdict of Apple's answer to a probe (pure)."""
    status, reason = result.status, result.reason
    if status is None:
        why = result.detail or "no answer"
        return Verdict(CredentialState.UNPROVEN, f"no answer from Apple yet ({why})", retry=True)
    said = f"{status} {reason or '(no reason)'}"
    if status == 200 or (status, reason) in _ACCEPTED:
        return Verdict(CredentialState.VERIFIED, f"Apple answered {said} to the probe")
    if status == 403 and reason == "ExpiredProviderToken":
        # The client mints a new JWT on this answer; the next probe uses it.
        return Verdict(CredentialState.UNPROVEN, f"Apple answered {said}", retry=True)
    if status == 403:
        return Verdict(CredentialState.REFUSED, f"Apple refused the credentials ({said})")
    if status == 400 and reason in _TOPIC_REFUSED:
        return Verdict(CredentialState.REFUSED, f"Apple refused apns.topic ({said})")
    # 429, 5xx, and answers that say nothing about the credentials: ask again later.
    return Verdict(CredentialState.UNPROVEN, f"Apple answered {said}", retry=True)


def probe_request(env: Environment, topic: str) -> PushRequest:
    """The probe: an ordinary alert push to :data:`PROBE_TOKEN`, never stored by Apple."""
    return PushRequest(
        token=PROBE_TOKEN,
        environment=env,
        topic=topic,
        payload=PROBE_PAYLOAD,
        apns_id=str(uuid.uuid4()),
        collapse_id="edgebell-credentials-check",
        expiration=0,  # "deliver once or never": no device, so never
    )


class Sender(Protocol):
    async def send(self, request: PushRequest) -> PushResult: ...


class Connector(Sender, Protocol):
    async def connect(self, env: Environment) -> None: ...


class Witnessed:
    """The dispatcher's sender, with every answer to a ring's push shown to the check.

    Any answer from Apple proves (or refuses) the credentials as well as the probe does:
    after an outage the first push Apple answers settles the verdict at once, rather than
    whenever the probe's own backoff comes round again.
    """

    def __init__(self, sender: Connector, check: CredentialsCheck) -> None:
        self._sender = sender
        self._check = check

    async def send(self, request: PushRequest) -> PushResult:
        result = await self._sender.send(request)
        self._check.witness(request.environment, result)
        return result

    async def connect(self, env: Environment) -> None:
        await self._sender.connect(env)


class CredentialsCheck:
    """Probes Apple at start, after a reload and after a new delegated JWT; keeps the verdict.

    ``recheck()`` starts a new round (cancelling one under way). A round probes each
    environment in use, retrying with backoff while Apple gives no verdict.
    """

    def __init__(
        self,
        sender: Sender,
        topic: str,
        *,
        enabled: bool = True,
        retry: tuple[float, float] = (1.0, 60.0),
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._sender = sender
        self._topic = topic
        self.enabled = enabled
        self._retry = retry
        self._clock = clock
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._answered = asyncio.Event()
        self.state = CredentialState.UNPROVEN if enabled else CredentialState.OFF
        self.detail = "waiting for the first answer from Apple" if enabled else ""
        self.verified_at: float | None = None
        self.environments: tuple[str, ...] = ()
        self.probes = 0  # probe pushes sent (not pushes of rings: status subtracts them)
        self.probes_delivered = 0
        self._in_flight = 0
        self._proven: set[Environment] = set()  # by a ring's push, during this round
        self._wake = asyncio.Event()  # a ring's push proved an environment the round waits for

    def witness(self, env: Environment, result: PushResult) -> None:
        """A ring's push was answered: a verdict on the credentials the round waits for."""
        if self.state is not CredentialState.UNPROVEN or env.value not in self.environments:
            return
        if judge(result).state is CredentialState.VERIFIED:
            self._proven.add(env)
            self._wake.set()

    def recheck(self, environments: Iterable[Environment], why: str) -> None:
        """Prove the credentials anew for ``environments`` (``why``: start, reload, new JWT)."""
        if not self.enabled:
            return
        envs = tuple(sorted(set(environments)))
        if self._task is not None:
            self._task.cancel()
        self._answered.clear()
        self._proven.clear()
        self.environments = tuple(env.value for env in envs)
        if self.state is not CredentialState.VERIFIED:
            # Proven credentials stay proven while they are checked again: only Apple's
            # refusal (not a passing outage) takes that back.
            self.state = CredentialState.UNPROVEN
            self.detail = f"checking ({why})"
        self._task = asyncio.create_task(self._round(envs, why), name="apns credentials check")

    async def wait_answered(self) -> None:
        """Until every environment of the round had its first probe answered (or failed)."""
        if self._task is not None:
            await self._answered.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _round(self, envs: tuple[Environment, ...], why: str) -> None:
        backoff = Backoff(self._retry[0], self._retry[1], self._rng.random)
        pending = list(envs)
        while pending := [env for env in pending if env not in self._proven]:
            verdicts = [(env, await self._probe(env)) for env in pending]
            self._answered.set()
            refused = [(env, v) for env, v in verdicts if v.state is CredentialState.REFUSED]
            waiting = [(env, v) for env, v in verdicts if v.retry]
            if refused:
                env, verdict = refused[0]
                self._set(CredentialState.REFUSED, f"{env.value}: {verdict.detail}")
                log.error(
                    "APNs credentials refused (%s): %s — pushes cannot be delivered; "
                    "check apns.auth and apns.topic",
                    why,
                    self.detail,
                )
                await asyncio.sleep(REFUSED_RECHECK)
                continue
            if waiting:
                env, verdict = waiting[0]
                if self.state is not CredentialState.VERIFIED:
                    self._set(CredentialState.UNPROVEN, f"{env.value}: {verdict.detail}")
                log.info("APNs credentials not yet proven: %s; asking again", verdict.detail)
                pending = [env for env, _ in waiting]
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff.next())
                continue
            pending = []
        self.verified_at = self._clock()
        self._set(CredentialState.VERIFIED, "")
        log.info(
            "APNs credentials verified (%s) for %s: Apple accepted key, team and topic %s",
            why,
            ", ".join(self.environments),
            self._topic,
        )

    async def _probe(self, env: Environment) -> Verdict:
        self.probes += 1
        self._in_flight += 1
        try:
            result = await self._sender.send(probe_request(env, self._topic))
        finally:
            self._in_flight -= 1
        if result.outcome is Outcome.DELIVERED:
            self.probes_delivered += 1
        return judge(result)

    def _set(self, state: CredentialState, detail: str) -> None:
        self.state = state
        self.detail = detail

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``apns.credentials`` part of the status JSON."""
        return {
            "state": self.state.value,
            "verified_at": None if self.verified_at is None else iso_time(self.verified_at),
            "detail": self.detail or None,
            "environments": list(self.environments),
        }

    def discount(self, status: ApnsStatus) -> ApnsStatus:
        """The client's counters without the probes: ``sent`` counts pushes of rings only."""
        return dataclasses.replace(
            status,
            sent=status.sent - self.probes,
            delivered=status.delivered - self.probes_delivered,
            failed=status.failed - (self.probes - self.probes_delivered - self._in_flight),
        )

    def problem(self) -> str | None:
        """What status lists while the credentials are not proven (None once verified or off)."""
        if self.state is CredentialState.REFUSED:
            return f"APNs credentials refused: {self.detail} — check apns.auth and apns.topic"
        if self.state is CredentialState.UNPROVEN:
            return f"APNs credentials not yet proven ({self.detail})"
        return None
