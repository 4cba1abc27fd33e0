"""Bad input on every interface of the registry is refused, counted, and changes nothing.

The API, the CLI, and MQTT: feedback from one gateway about another gateway's
token, forged feedback (a list ver the registry never issued, Apple's timestamp
in the future, not a dead-token status, not JSON) and replayed feedback (after the
token was removed, or after the phone registered again).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_registry import ok

from testkit.cloud_peer import CloudPeer, Received
from testkit.gateway import GATEWAY_ID, random_token
from testkit.mosquitto import MosquittoBroker
from testkit.pki import CertFiles, TestPki, make_client_cert
from testkit.registry import RegistryProcess, write_registry_config

GW = f"/v1/gateways/{GATEWAY_ID}"
OTHER = "gw-other"


@pytest.fixture
def fleet(registry: RegistryProcess) -> dict[str, str]:
    """alice owns gw-test (two phones), bob is shared it; carol owns gw-other (one phone)."""
    phones = {
        "alice": random_token(),
        "alice2": random_token(),
        "bob": random_token(),
        "carol": random_token(),
    }
    for name, token in phones.items():
        user = name.rstrip("2")
        ok(registry.api("PUT", f"/v1/users/{user}/phones/{token}", {"env": "sandbox"}))
    ok(registry.api("PUT", GW, {"owner": "alice"}))
    ok(registry.api("PUT", f"{GW}/shares/bob", {"buttons": ["front"]}))
    ok(registry.api("PUT", f"/v1/gateways/{OTHER}", {"owner": "carol"}))
    return phones


def snapshot(registry: RegistryProcess) -> list[dict[str, Any]]:
    return [ok(registry.api("GET", f"/v1/gateways/{g}")) for g in (GATEWAY_ID, OTHER)]


def refused(registry: RegistryProcess) -> dict[str, int]:
    counts: dict[str, int] = registry.status()["refused"]
    return counts


def test_bad_api_calls_are_refused_with_their_status_and_change_nothing(
    registry: RegistryProcess, fleet: dict[str, str]
) -> None:
    before = snapshot(registry)
    token = fleet["alice"]
    calls: list[tuple[int, str, str, Any, str | None]] = [
        (401, "GET", GW, None, ""),  # no Authorization header
        (401, "GET", GW, None, "not-the-token"),
        (400, "PUT", "/v1/users/alice/phones/xyz", {"env": "sandbox"}, None),
        (400, "PUT", "/v1/users/alice/phones/abc", {"env": "sandbox"}, None),  # odd, short
        (400, "PUT", f"/v1/users/alice/phones/{'a' * 202}", {"env": "sandbox"}, None),
        (400, "PUT", f"/v1/users/alice/phones/{token}", {"env": "staging"}, None),
        (400, "PUT", f"/v1/users/alice/phones/{token}", {}, None),
        (400, "PUT", f"/v1/users/alice/phones/{token}", {"env": "sandbox", "x": 1}, None),
        (
            400,
            "PUT",
            f"/v1/users/alice/phones/{token}",
            {"env": "sandbox", "registered_at": int(time.time() * 1000) + 3_600_000},
            None,
        ),
        (
            400,
            "PUT",
            f"/v1/users/alice/phones/{token}",
            {"env": "sandbox", "registered_at": "yesterday"},
            None,
        ),
        (400, "PUT", f"/v1/users/{'u' * 129}/phones/{token}", {"env": "sandbox"}, None),
        (400, "PUT", "/v1/gateways/gw%21", {"owner": "alice"}, None),
        (400, "PUT", GW, ["alice"], None),
        (400, "PUT", f"{GW}/shares/bob", {"buttons": "front"}, None),
        (400, "PUT", f"{GW}/shares/bob", {"buttons": ["front door"]}, None),
        (404, "GET", "/v1/gateways/gw-nowhere", None, None),
        (404, "PUT", "/v1/gateways/gw-new", {"owner": "nobody"}, None),
        (404, "PUT", f"{GW}/shares/nobody", {}, None),
        (404, "DELETE", f"{GW}/shares/carol", None, None),
        (404, "DELETE", f"/v1/users/bob/phones/{token}", None, None),  # alice's, not bob's
        (404, "GET", "/v1/gateways/gw-nowhere/events", None, None),
        (404, "POST", "/v1/anything", {}, None),
        (409, "PUT", f"{GW}/shares/alice", {}, None),  # the owner
        (400, "GET", f"{GW}/events?limit=0", None, None),
        (400, "GET", f"{GW}/events?since=yesterday", None, None),
    ]
    for status, method, path, body, bearer in calls:
        answer = registry.api(method, path, body, token=bearer)
        assert answer.status == status, (method, path, body, answer)
        assert isinstance(answer.document["error"], str)
        assert token not in answer.document["error"]
    # A body that is not JSON, and one too large.
    for data in (b"{not json", b'{"env": "' + b"x" * 20_000 + b'"}'):
        request = urllib.request.Request(
            f"{registry.url}/v1/users/alice/phones/{token}", data=data, method="PUT"
        )
        request.add_header("Authorization", f"Bearer {registry.token}")
        with pytest.raises(urllib.error.HTTPError) as refusal:
            urllib.request.urlopen(request, timeout=10)
        assert refusal.value.code == 400
        assert "error" in json.loads(refusal.value.read())

    assert snapshot(registry) == before
    counts = refused(registry)
    assert counts["api: 401"] == 2
    assert counts["api: 400"] == 17
    assert counts["api: 404"] == 7
    assert counts["api: 409"] == 1


def test_bad_cli_input_is_refused_with_exit_codes_and_changes_nothing(
    registry: RegistryProcess, fleet: dict[str, str]
) -> None:
    before = snapshot(registry)
    for args, why in [
        (("register", "alice", "xyz", "--env", "sandbox"), "(400)"),
        (("share", GATEWAY_ID, "nobody"), "(404)"),
        (("share", GATEWAY_ID, "alice"), "(409)"),
        (("unregister", "bob", fleet["alice"]), "(404)"),
        (("share", GATEWAY_ID, "carol", "--buttons", "front door"), "(400)"),
    ]:
        result = registry.cli(*args)
        assert result.returncode == 1, result
        assert why in result.stderr
        assert fleet["alice"] not in result.stderr
    bad = registry.config.parent / "bad.yaml"
    bad.write_text("signing_key: k\nhttp: {listen: nowhere}\n")
    result = registry.cli("show", GATEWAY_ID, "--config", str(bad))
    assert result.returncode == 2
    assert "http.listen" in result.stderr
    assert snapshot(registry) == before


def test_a_change_made_with_the_cli_is_published_by_the_running_registry(
    registry: RegistryProcess, fleet: dict[str, str], observer: CloudPeer
) -> None:
    result = registry.cli("share", GATEWAY_ID, "carol", "--buttons", "back")
    assert result.returncode == 0, result.stderr
    assert "gw-test shared with carol: back" in result.stdout
    ver = ok(registry.api("GET", GW))["ver"]
    topic = f"edgebell/{GATEWAY_ID}/tokens"
    observer.wait_for(lambda ms: any(m.topic == topic and claims(m)["ver"] == ver for m in ms))
    published = [claims(m) for m in observer.messages(topic) if claims(m)["ver"] == ver]
    carol = [t for t in published[0]["tokens"] if t["user"] == "carol"]
    assert carol == [
        {
            "token": fleet["carol"],
            "env": "sandbox",
            "user": "carol",
            "registered_at": carol[0]["registered_at"],
            "buttons": ["back"],
        }
    ]


def claims(message: Received) -> dict[str, Any]:
    part = message.payload.split(b".")[1]
    document: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)))
    return document


@pytest.fixture
def as_gateways(registry_broker: MosquittoBroker, pki: TestPki) -> Iterator[dict[str, CloudPeer]]:
    """MQTT clients with gw-test's and gw-other's own certificates."""
    other = make_client_cert(pki.ca, pki.dir / "mqtt", OTHER)
    with (
        CloudPeer(
            registry_broker.host,
            registry_broker.port,
            ca=pki.ca.cert,
            identity=pki.client,
            subscribe=[f"edgebell/{GATEWAY_ID}/#"],
        ) as mine,
        CloudPeer(
            registry_broker.host,
            registry_broker.port,
            ca=pki.ca.cert,
            identity=other,
            subscribe=[f"edgebell/{OTHER}/#"],
        ) as theirs,
    ):
        yield {GATEWAY_ID: mine, OTHER: theirs}


def feedback(
    token: str, *, ver: int | None, timestamp: int | None = None, status: int = 410
) -> Any:
    return {
        "token": token,
        "status": status,
        "reason": "Unregistered" if status == 410 else "BadDeviceToken",
        "timestamp": int(time.time() * 1000) if timestamp is None else timestamp,
        "ver": ver,
    }


def test_forged_foreign_and_replayed_feedback_is_refused_counted_and_changes_nothing(
    registry: RegistryProcess, fleet: dict[str, str], as_gateways: dict[str, CloudPeer]
) -> None:
    mine, theirs = as_gateways[GATEWAY_ID], as_gateways[OTHER]
    ver = ok(registry.api("GET", GW))["ver"]
    now = int(time.time() * 1000)
    before = snapshot(registry)
    bad: list[tuple[CloudPeer, str, Any]] = [
        # gw-other reports a token of gw-test's list: it never had it.
        (theirs, OTHER, feedback(fleet["alice"], ver=ver)),
        (mine, GATEWAY_ID, feedback(fleet["alice"], ver=ver + 1)),  # a ver never issued
        (mine, GATEWAY_ID, feedback(fleet["alice"], ver=None)),  # not from a registry list
        (mine, GATEWAY_ID, feedback(fleet["alice"], ver=ver, timestamp=now + 3_600_000)),
        (mine, GATEWAY_ID, feedback(fleet["alice"], ver=ver, status=200)),
        (mine, GATEWAY_ID, feedback(fleet["carol"], ver=ver)),  # gw-other's phone
        (mine, GATEWAY_ID, feedback(random_token(), ver=ver)),  # no such phone
        (mine, GATEWAY_ID, b"{not json"),
        (mine, GATEWAY_ID, {"token": "xyz", "status": 410, "reason": "", "ver": ver}),
    ]
    for peer, gw, document in bad:
        payload = document if isinstance(document, bytes) else json.dumps(document).encode()
        peer.publish(f"edgebell/{gw}/feedback", payload)
    registry.wait_for(
        lambda s: sum(v for k, v in s["refused"].items() if k.startswith("feedback")) == len(bad)
    )
    counts = refused(registry)
    assert counts["feedback: token not in this gateway's list"] == 2
    assert counts["feedback: not a list ver the registry issued"] == 2
    assert counts["feedback: Apple's timestamp is in the future"] == 1
    assert counts["feedback: not a dead-token status"] == 1
    assert counts["feedback: token not registered (already removed?)"] == 1
    assert counts["feedback: not JSON"] == 1
    assert counts["feedback: token must be hex (16 to 200 digits)"] == 1
    assert snapshot(registry) == before
    assert ok(registry.api("GET", "/v1/removed"))["removed"] == []

    # The real thing removes alice's second phone; the same message again is a replay.
    genuine = json.dumps(feedback(fleet["alice2"], ver=ver)).encode()
    mine.publish(f"edgebell/{GATEWAY_ID}/feedback", genuine)
    registry.wait_for(lambda s: s["counters"].get("tokens removed by feedback") == 1)
    after = snapshot(registry)
    assert after[0]["ver"] > ver
    assert after[1] == before[1]  # gw-other's list did not change
    mine.publish(f"edgebell/{GATEWAY_ID}/feedback", genuine)
    registry.wait_for(
        lambda s: s["refused"].get("feedback: token not registered (already removed?)") == 2
    )
    # alice registers it again; the old verdict, replayed, must not remove it.
    ok(registry.api("PUT", f"/v1/users/alice/phones/{fleet['alice2']}", {"env": "sandbox"}))
    renewed = snapshot(registry)
    mine.publish(f"edgebell/{GATEWAY_ID}/feedback", genuine)
    registry.wait_for(
        lambda s: s["refused"].get("feedback: phone registered again after Apple's verdict") == 1
    )
    assert snapshot(registry) == renewed
    assert len(ok(registry.api("GET", "/v1/removed"))["removed"]) == 1


def test_a_makers_own_user_sessions_act_only_for_their_user(
    tmp_path: Path,
    pki: TestPki,
    registry_broker: MosquittoBroker,
    registry_identities: dict[str, CertFiles],
) -> None:
    sessions = tmp_path / "sessions.json"
    sessions.write_text(json.dumps({"s-alice": "alice", "s-bob": "bob"}))
    config, token, port = write_registry_config(
        tmp_path / "registry",
        pki=pki,
        broker=registry_broker,
        identity=registry_identities["registry"],
        extra={"http": {"auth_hook": "testkit.registry_auth:authenticate"}},
    )
    with RegistryProcess(
        config, token, port, env={"EDGEBELL_TEST_SESSIONS": str(sessions)}
    ) as registry:
        alice_phone, bob_phone = random_token(), random_token()
        as_alice = {"token": "s-alice"}
        as_bob = {"token": "s-bob"}
        phone = {"env": "sandbox"}
        ok(registry.api("PUT", f"/v1/users/alice/phones/{alice_phone}", phone, **as_alice))
        ok(registry.api("PUT", f"/v1/users/bob/phones/{bob_phone}", phone, **as_bob))
        ok(registry.api("PUT", GW, {"owner": "alice"}, **as_alice))
        before = ok(registry.api("GET", GW, **as_alice))
        for method, path, body in [
            ("PUT", f"/v1/users/alice/phones/{random_token()}", {"env": "sandbox"}),
            ("GET", GW, None),
            ("PUT", f"{GW}/shares/bob", {}),
            ("PUT", GW, {"owner": "bob"}),
            ("GET", "/v1/users/alice", None),
            ("GET", "/v1/removed", None),
            ("GET", "/v1/status", None),
        ]:
            answer = registry.api(method, path, body, **as_bob)
            assert answer.status == 404, (method, path, answer)
        assert registry.api("GET", GW, token="s-mallory").status == 401
        ok(registry.api("PUT", f"{GW}/shares/bob", {"buttons": ["front"]}, **as_alice))
        assert ok(registry.api("GET", GW, **as_bob))["owner"] == "alice"  # shared: he sees it
        ok(registry.api("DELETE", f"{GW}/shares/bob", **as_bob))  # and may leave it
        after = ok(registry.api("GET", GW, **as_alice))
        assert after["shares"] == before["shares"] == []
        assert ok(registry.api("GET", "/v1/status"))["refused"]["api: 404"] == 7
