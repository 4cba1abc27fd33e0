"""Credentials proven before the first ring: the probe, Apple's answers, status and STATUS=."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
from fixtures_apns import TOPIC
from fixtures_service import NotifyListener, edit_config, reload

from edgebell.apns.client import ApnsClient
from edgebell.apns.credentials import (
    PROBE_TOKEN,
    CredentialsCheck,
    CredentialState,
    Witnessed,
    judge,
    probe_request,
)
from edgebell.apns.model import Environment, Outcome, PushRequest, PushResult
from testkit.apns_server import ApnsStandIn
from testkit.gateway import DaemonProcess, GatewayFiles
from testkit.pki import TestPki
from testkit.signing import in_process_token_auth
from testkit.standin_thread import StandInThread
from testkit.waiting import eventually

SANDBOX = Environment.SANDBOX
WAIT = 5.0


def result(status: int | None, reason: str | None = None) -> PushResult:
    request = probe_request(SANDBOX, TOPIC)
    outcome = Outcome.TRANSPORT if status is None else Outcome.FAILED
    return PushResult(request, outcome, status, reason, None, None, "connection refused")


@pytest.mark.parametrize(
    ("status", "reason", "state", "retry"),
    [
        (400, "BadDeviceToken", CredentialState.VERIFIED, False),
        (400, "DeviceTokenNotForTopic", CredentialState.VERIFIED, False),
        (410, "Unregistered", CredentialState.VERIFIED, False),
        (403, "InvalidProviderToken", CredentialState.REFUSED, False),
        (403, "MissingProviderToken", CredentialState.REFUSED, False),
        (403, "BadCertificate", CredentialState.REFUSED, False),
        (403, "BadCertificateEnvironment", CredentialState.REFUSED, False),
        (403, "Forbidden", CredentialState.REFUSED, False),
        (400, "TopicDisallowed", CredentialState.REFUSED, False),
        (400, "BadTopic", CredentialState.REFUSED, False),
        (403, "ExpiredProviderToken", CredentialState.UNPROVEN, True),
        (429, "TooManyProviderTokenUpdates", CredentialState.UNPROVEN, True),
        (503, "ServiceUnavailable", CredentialState.UNPROVEN, True),
        (None, None, CredentialState.UNPROVEN, True),
    ],
)
def test_what_each_answer_proves(
    status: int | None, reason: str | None, state: CredentialState, retry: bool
) -> None:
    verdict = judge(result(status, reason))
    assert (verdict.state, verdict.retry) == (state, retry)
    if reason is not None:
        assert reason in verdict.detail


def test_the_probe_is_an_ordinary_push_no_device_has_and_apple_never_stores() -> None:
    request = probe_request(Environment.PRODUCTION, TOPIC)
    assert request.token == PROBE_TOKEN == "0" * 64
    assert request.expiration == 0
    assert request.push_type == "alert"
    assert json.loads(request.payload)["aps"]["alert"]


def client_for(pki: TestPki, url: str, *, key_id: str | None = None) -> ApnsClient:
    auth = in_process_token_auth(
        pki.auth_key.private_key.read_bytes(), key_id or pki.auth_key.key_id, pki.auth_key.team_id
    )
    return ApnsClient(
        auth=auth,
        host_override=url,
        ca_file=pki.ca.cert,
        connect_timeout=WAIT,
        request_timeout=WAIT,
    )


async def settle(check: CredentialsCheck) -> None:
    await eventually(
        lambda: check.state is not CredentialState.UNPROVEN, WAIT, lambda: check.detail
    )


@pytest.mark.asyncio
async def test_the_stand_in_checks_auth_and_topic_before_the_device(
    apns_standin: ApnsStandIn, pki: TestPki
) -> None:
    """As Apple: the device token is looked up last, so its 400 proves what came before."""
    good = client_for(pki, apns_standin.url)
    wrong_key = client_for(pki, apns_standin.url, key_id="WRONGKEY01")
    async with good, wrong_key:
        ok = await good.send(probe_request(SANDBOX, TOPIC))
        bad_auth = await wrong_key.send(probe_request(SANDBOX, TOPIC))
        bad_topic = await good.send(probe_request(SANDBOX, "com.example.other"))
        device = await good.send(
            PushRequest("ab" * 32, SANDBOX, TOPIC, b'{"aps":{}}', str(uuid.uuid4()), "c", 0)
        )
    assert (ok.status, ok.reason) == (400, "BadDeviceToken")
    assert (bad_auth.status, bad_auth.reason) == (403, "InvalidProviderToken")
    assert (bad_topic.status, bad_topic.reason) == (400, "TopicDisallowed")
    assert device.status == 200


@pytest.mark.asyncio
async def test_a_check_against_the_stand_in_verifies_or_says_why_not(
    apns_standin: ApnsStandIn, pki: TestPki
) -> None:
    good = client_for(pki, apns_standin.url)
    wrong_key = client_for(pki, apns_standin.url, key_id="WRONGKEY01")
    async with good, wrong_key:
        verified = CredentialsCheck(good, TOPIC, retry=(0.05, 0.1))
        refused = CredentialsCheck(wrong_key, TOPIC, retry=(0.05, 0.1))
        for check in (verified, refused):
            check.recheck({SANDBOX}, "start")
            await settle(check)
        assert verified.state is CredentialState.VERIFIED
        assert verified.verified_at is not None
        assert verified.problem() is None
        assert refused.state is CredentialState.REFUSED
        assert "InvalidProviderToken" in (refused.problem() or "")
        # The probes are no ring's pushes: status counts without them.
        counted = verified.discount(good.status())
        assert (counted.sent, counted.delivered, counted.failed) == (0, 0, 0)
        await verified.aclose()
        await refused.aclose()
    assert apns_standin.received == []  # no device received anything


@pytest.mark.asyncio
async def test_no_answer_is_not_yet_proven_then_verified_when_apple_answers(
    apns_standin: ApnsStandIn, pki: TestPki
) -> None:
    apns_standin.set(fail_rate=1.0, fail_status=503, fail_reason="ServiceUnavailable")
    client = client_for(pki, apns_standin.url)
    async with client:
        check = CredentialsCheck(client, TOPIC, retry=(0.05, 0.1))
        check.recheck({SANDBOX}, "start")
        await asyncio.wait_for(check.wait_answered(), WAIT)
        assert check.state is CredentialState.UNPROVEN
        assert "503 ServiceUnavailable" in (check.problem() or "")
        apns_standin.set(fail_rate=0.0)
        await settle(check)
        assert check.state is CredentialState.VERIFIED
        await check.aclose()


@pytest.mark.asyncio
async def test_a_rings_push_that_apple_answers_proves_them_without_waiting_for_the_probe(
    apns_standin: ApnsStandIn, pki: TestPki
) -> None:
    """After an outage the first answered push settles it, not the probe's next turn."""
    apns_standin.set(fail_rate=1.0, fail_status=503, fail_reason="ServiceUnavailable")
    client = client_for(pki, apns_standin.url)
    async with client:
        # The probe's own next try is a minute away: only the ring's push can prove it in time.
        check = CredentialsCheck(client, TOPIC, retry=(60.0, 60.0))
        check.recheck({SANDBOX}, "start")
        await asyncio.wait_for(check.wait_answered(), WAIT)
        assert check.state is CredentialState.UNPROVEN
        apns_standin.set(fail_rate=0.0)
        ring = PushRequest("ab" * 32, SANDBOX, TOPIC, b'{"aps":{}}', str(uuid.uuid4()), "c", 0)
        answered = await Witnessed(client, check).send(ring)
        assert answered.status == 200
        await settle(check)
        assert check.state is CredentialState.VERIFIED
        await check.aclose()


# -- the daemon -----------------------------------------------------------------------------------


@pytest.fixture
def notified(gateway_files: GatewayFiles, notify_socket: NotifyListener) -> Iterator[DaemonProcess]:
    with DaemonProcess(gateway_files, env=notify_socket.env) as daemon:
        yield daemon


def test_good_credentials_are_verified_before_ready(
    notified: DaemonProcess, notify_socket: NotifyListener, apns_standin_thread: StandInThread
) -> None:
    ready = next(m for m in notify_socket.messages() if "READY" in m.fields)
    assert ready.fields["STATUS"].startswith("healthy: ")
    assert "APNs credentials verified at " in ready.fields["STATUS"]
    status = notified.status()
    assert status["apns"]["credentials"]["state"] == "verified"
    assert status["apns"]["sent"] == 0  # the probe is not a push
    human = notified.cli("status")
    assert human.returncode == 0
    assert "credentials verified at " in human.stdout
    assert apns_standin_thread.received() == []
    [probe] = apns_standin_thread.responses(no_device=True)
    assert (probe.token, probe.status, probe.reason) == (PROBE_TOKEN, 400, "BadDeviceToken")


def test_a_wrong_key_id_is_degraded_before_the_first_ring(
    gateway_files: GatewayFiles, notify_socket: NotifyListener, apns_standin_thread: StandInThread
) -> None:
    # Issue 10: the daemon said "ready: healthy" until the first doorbell press got 403.
    edit_config(gateway_files, lambda d: d["apns"]["auth"].update(key_id="WRONGKEY01"))
    with DaemonProcess(gateway_files, env=notify_socket.env) as daemon:
        status = daemon.status()
        assert status["state"] == "degraded"
        assert status["apns"]["credentials"]["state"] == "refused"
        assert any("InvalidProviderToken" in p for p in status["problems"])
        human = daemon.cli("status")
        assert human.returncode == 1
        assert "credentials REFUSED by Apple" in human.stdout
        ready = next(m for m in notify_socket.messages() if "READY" in m.fields)
        assert ready.fields["STATUS"].startswith("degraded: APNs credentials refused")
        assert "InvalidProviderToken" in ready.fields["STATUS"]
        assert "ready: healthy" not in daemon.log_text()
    assert apns_standin_thread.received() == []


def test_apple_unreachable_at_start_is_not_yet_proven_never_healthy(
    gateway_files: GatewayFiles, apns_standin_thread: StandInThread
) -> None:
    apns_standin_thread.set(fail_rate=1.0, fail_status=503, fail_reason="ServiceUnavailable")
    with DaemonProcess(gateway_files) as daemon:
        status = daemon.status()
        assert status["state"] == "degraded"
        assert status["apns"]["credentials"]["state"] == "not yet proven"
        assert "credentials not yet proven" in daemon.cli("status").stdout
        apns_standin_thread.set(fail_rate=0.0)
        status = daemon.wait_status(lambda s: s["state"] == "healthy", timeout=20)
        assert status["apns"]["credentials"]["state"] == "verified"


def test_a_reload_proves_them_again(
    gateway_files: GatewayFiles, apns_standin_thread: StandInThread
) -> None:
    with DaemonProcess(gateway_files) as daemon:
        first = daemon.status()["apns"]["credentials"]["verified_at"]
        assert first is not None
        edit_config(gateway_files, lambda d: d["apns"].update(expiration="20m"))
        reload(daemon)
        status = daemon.wait_status(
            lambda s: s["apns"]["credentials"]["verified_at"] not in (None, first), timeout=20
        )
        assert status["state"] == "healthy"
    assert len(apns_standin_thread.responses(no_device=True)) == 2


def test_verify_credentials_false_sends_no_probe(
    gateway_files: GatewayFiles, apns_standin_thread: StandInThread
) -> None:
    edit_config(gateway_files, lambda d: d["apns"].update(verify_credentials=False))
    with DaemonProcess(gateway_files) as daemon:
        status = daemon.status()
        assert status["state"] == "healthy"
        assert status["apns"]["credentials"]["state"] == "not checked"
        assert "credentials not checked" in daemon.cli("status").stdout
    assert apns_standin_thread.responses(no_device=True) == []
