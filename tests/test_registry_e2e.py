"""The whole loop, real processes: registry + Mosquitto + gateway daemon + the APNs stand-in.

A phone registered over the registry's HTTP API reaches the gateway as a signed
list; a share adds the second user's phones; a token Apple calls dead is
reported by the gateway, dropped by the registry, and the next ring no longer
tries it; an unshare takes the user's phones off the next ring.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fixtures_mqtt import cloud_section, pushes_for, ring, wait_list
from fixtures_registry import ok, wait_until

from edgebell.privacy import short_token
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import GATEWAY_ID, DaemonProcess, random_token, write_config
from testkit.mosquitto import MosquittoBroker
from testkit.pki import CertFiles, TestPki
from testkit.registry import RegistryProcess, write_registry_config
from testkit.standin_thread import StandInThread

GW = f"/v1/gateways/{GATEWAY_ID}"


def settled_ring(registry: RegistryProcess, daemon: DaemonProcess, apns: StandInThread) -> set[str]:
    """Ring by hand; once the registry holds the ring's final delivery report, the tokens
    the gateway tried for it."""
    ring_id = ring(daemon, "front")

    def reported() -> bool:
        events = ok(registry.api("GET", f"{GW}/events"))["rings"]
        return any(
            e["ring_id"] == ring_id and e["delivery"] and e["delivery"]["final"] for e in events
        )

    wait_until(reported, what=f"the final delivery report of {ring_id}")
    return {p.token for p in pushes_for(apns, ring_id)}


def list_ver(answer: dict[str, Any]) -> int:
    lists = answer["lists"]
    assert len(lists) == 1, answer
    assert lists[0]["published"] is True
    ver: int = lists[0]["ver"]
    return ver


def test_register_share_ring_dead_token_dropped_unshare(
    registry: RegistryProcess, registry_daemon: DaemonProcess, apns_standin_thread: StandInThread
) -> None:
    apns = apns_standin_thread
    alice1, alice2, bob1 = random_token(), random_token(), random_token(100)
    for token in (alice1, alice2):
        ok(registry.api("PUT", f"/v1/users/alice/phones/{token}", {"env": "sandbox"}))
    ver = list_ver(ok(registry.api("PUT", GW, {"owner": "alice"})))
    wait_list(registry_daemon, ver)
    assert settled_ring(registry, registry_daemon, apns) == {alice1, alice2}

    # Shared with bob: his phone hears the next ring too.
    ok(registry.api("PUT", f"/v1/users/bob/phones/{bob1}", {"env": "sandbox"}))
    shared = list_ver(ok(registry.api("PUT", f"{GW}/shares/bob", {})))
    assert shared > ver
    wait_list(registry_daemon, shared)
    assert settled_ring(registry, registry_daemon, apns) == {alice1, alice2, bob1}
    events = ok(registry.api("GET", f"{GW}/events"))["rings"]
    assert "reached 3 of 3 phones" in events[0]["summary"]
    assert len(ok(registry.api("GET", f"{GW}/events?limit=1"))["rings"]) == 1

    # alice's second phone uninstalled the app: Apple answers 410 for it.
    apns.set(token_errors={alice2: (410, "Unregistered")})
    assert settled_ring(registry, registry_daemon, apns) == {alice1, alice2, bob1}
    removed = wait_until(
        lambda: ok(registry.api("GET", "/v1/removed"))["removed"], what="the removal"
    )
    assert removed[0]["token"] == short_token(alice2)
    assert removed[0]["reported_by"] == GATEWAY_ID
    assert (removed[0]["status"], removed[0]["reason"]) == (410, "Unregistered")
    view = ok(registry.api("GET", GW))
    assert view["ver"] > shared
    assert short_token(alice2) not in {p["token"] for p in view["phones"]}
    wait_list(registry_daemon, view["ver"])

    # The next ring does not even try the dead token.
    apns.set(token_errors={})
    assert settled_ring(registry, registry_daemon, apns) == {alice1, bob1}

    # Unshared: bob's phone is off the next ring.
    unshared = list_ver(ok(registry.api("DELETE", f"{GW}/shares/bob")))
    wait_list(registry_daemon, unshared)
    assert settled_ring(registry, registry_daemon, apns) == {alice1}
    status = registry.status()
    assert status["counters"]["tokens removed by feedback"] == 1
    # Tokens are personal data: the registry's log shows only their first 8 digits.
    log = registry.log_text()
    assert short_token(alice2) in log
    for token in (alice1, alice2, bob1):
        assert token not in log


def test_revive_rule_a_phone_registered_after_apples_verdict_stays(
    registry: RegistryProcess, registry_daemon: DaemonProcess, apns_standin_thread: StandInThread
) -> None:
    apns = apns_standin_thread
    phone, other = random_token(), random_token()
    registered_at = int(time.time() * 1000)
    ok(
        registry.api(
            "PUT",
            f"/v1/users/alice/phones/{phone}",
            {"env": "sandbox", "registered_at": registered_at},
        )
    )
    ok(registry.api("PUT", f"/v1/users/alice/phones/{other}", {"env": "sandbox"}))
    ver = list_ver(ok(registry.api("PUT", GW, {"owner": "alice"})))
    wait_list(registry_daemon, ver)

    # Apple's verdict predates the registration (the phone registered again since).
    apns.set(
        token_errors={phone: (410, "Unregistered")},
        unregistered_timestamp_ms=registered_at - 60_000,
    )
    settled_ring(registry, registry_daemon, apns)
    refused = "feedback: phone registered again after Apple's verdict"
    registry.wait_for(lambda s: any(k.startswith(refused) for k in s["refused"]))
    view = ok(registry.api("GET", GW))
    assert view["ver"] == ver
    assert short_token(phone) in {p["token"] for p in view["phones"]}
    assert ok(registry.api("GET", "/v1/removed"))["removed"] == []

    # The phone registers again (the gateway tries it once more); Apple's verdict, now
    # after that registration, removes it; registering once more brings it back.
    apns.set(unregistered_timestamp_ms=None)
    renewed = ok(registry.api("PUT", f"/v1/users/alice/phones/{phone}", {"env": "sandbox"}))
    wait_list(registry_daemon, list_ver(renewed))
    assert settled_ring(registry, registry_daemon, apns) == {phone, other}
    wait_until(lambda: ok(registry.api("GET", "/v1/removed"))["removed"], what="the removal")
    dropped = ok(registry.api("GET", GW))["ver"]
    wait_list(registry_daemon, dropped)
    apns.set(token_errors={})
    assert settled_ring(registry, registry_daemon, apns) == {other}

    again = ok(registry.api("PUT", f"/v1/users/alice/phones/{phone}", {"env": "sandbox"}))
    wait_list(registry_daemon, list_ver(again))
    assert settled_ring(registry, registry_daemon, apns) == {phone, other}


def test_a_delegated_gateway_rings_with_the_fleet_jwt_the_registry_mints(
    tmp_path: Path,
    pki: TestPki,
    registry_broker: MosquittoBroker,
    registry_identities: dict[str, CertFiles],
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
) -> None:
    """No Apple key on the gateway: the registry holds it, and its JWT is what Apple checks."""
    config, token, port = write_registry_config(
        tmp_path / "registry",
        pki=pki,
        broker=registry_broker,
        identity=registry_identities["registry"],
        extra={
            "apns": {
                "key_file": str(pki.auth_key.private_key),
                "key_id": pki.auth_key.key_id,
                "team_id": pki.auth_key.team_id,
            }
        },
    )
    (tmp_path / "gateway").mkdir()
    files = write_config(
        tmp_path / "gateway",
        port=str(rflink_receiver.path),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth={"mode": "delegated"},
        overrides={"cloud": cloud_section(registry_broker, pki)},
    )
    with RegistryProcess(config, token, port) as registry:
        phone = random_token()
        ok(registry.api("PUT", f"/v1/users/alice/phones/{phone}", {"env": "sandbox"}))
        ver = list_ver(ok(registry.api("PUT", GW, {"owner": "alice"})))
        with DaemonProcess(files) as daemon:
            status = wait_list(daemon, ver)
            assert status["apns"]["auth"] == "delegated"
            assert settled_ring(registry, daemon, apns_standin_thread) == {phone}
            (push,) = [p for p in apns_standin_thread.responses() if p.token == phone]
            assert push.status == 200  # the stand-in verified the registry's ES256 JWT
        assert registry.status()["counters"]["fleet JWTs minted"] == 1
