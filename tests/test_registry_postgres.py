"""Two registry instances on one real PostgreSQL: a gateway's ``ver`` never goes backwards.

Both instances change the same gateway's list at the same time; every list
reaches the broker in ``ver`` order (each is sent under the gateway's row lock),
the last one retained is the database's current one, and the gateway uses it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures_mqtt import wait_list
from fixtures_registry import ok

from edgebell.cloud import tools
from edgebell.registry.operations import Operations
from edgebell.registry.store import open_database
from testkit.cloud_peer import CloudPeer, Received
from testkit.gateway import GATEWAY_ID, DaemonProcess, random_token
from testkit.mosquitto import MosquittoBroker
from testkit.pki import CertFiles, TestPki
from testkit.postgres import PostgresServer
from testkit.registry import RegistryProcess, write_registry_config

GW = f"/v1/gateways/{GATEWAY_ID}"
TOKENS = f"edgebell/{GATEWAY_ID}/tokens"


def ver_of(message: Received) -> int:
    part = message.payload.split(b".")[1]
    ver: int = json.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)))["ver"]
    return ver


@pytest.fixture
def two_registries(
    tmp_path: Path,
    pki: TestPki,
    postgres: PostgresServer,
    registry_broker: MosquittoBroker,
    registry_identities: dict[str, CertFiles],
) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    database = postgres.create_database()
    processes = []
    for name in ("registry", "registry-2"):
        config, token, port = write_registry_config(
            tmp_path / name,
            pki=pki,
            broker=registry_broker,
            identity=registry_identities[name],
            database=database,
        )
        processes.append(RegistryProcess(config, token, port))
    first, second = processes
    with first, second:
        yield first, second


def test_two_instances_on_one_postgresql_never_publish_a_ver_backwards(
    two_registries: tuple[RegistryProcess, RegistryProcess],
    observer: CloudPeer,
    registry_daemon: DaemonProcess,
) -> None:
    one, two = two_registries
    users = [f"user{n}" for n in range(6)]
    for user in users:
        ok(one.api("PUT", f"/v1/users/{user}/phones/{random_token()}", {"env": "sandbox"}))
    ok(two.api("PUT", GW, {"owner": users[0]}))

    def churn(instance: RegistryProcess, user: str) -> None:
        for _ in range(3):
            ok(instance.api("PUT", f"{GW}/shares/{user}", {}))
            ok(instance.api("PUT", f"/v1/users/{user}/phones/{random_token()}", {"env": "sandbox"}))
            ok(instance.api("DELETE", f"{GW}/shares/{user}"))

    with ThreadPoolExecutor(len(users) - 1) as pool:
        calls = [
            pool.submit(churn, one if n % 2 else two, user) for n, user in enumerate(users[1:])
        ]
        for call in calls:
            call.result()

    final = ok(one.api("GET", GW))
    assert final == ok(two.api("GET", GW))
    assert final["published_ver"] == final["ver"]
    observer.wait_for(lambda ms: any(m.topic == TOKENS and ver_of(m) == final["ver"] for m in ms))
    seen = [ver_of(m) for m in observer.messages(TOKENS)]
    # In arrival order, never backwards (a list overtaken by a newer one before it went out
    # is skipped; a hello answer may repeat the current one).
    assert seen == sorted(seen), seen
    assert seen[-1] == final["ver"]
    assert len(set(seen)) > 1
    wait_list(registry_daemon, final["ver"])
    status = registry_daemon.status()
    assert status["tokens"]["count"] == 1  # the owner's phone; every share was taken back


def test_ver_grows_across_instances_whose_clocks_disagree_and_step_back(
    postgres: PostgresServer, pki: TestPki
) -> None:
    url = postgres.create_database()
    key = tools.load_signing_key(pki.token_list_key.private_key)
    now = time.time()
    clocks = {"ahead": now + 3600.0, "behind": now - 3600.0}
    instances = {
        name: Operations(open_database(url), key, clock=lambda name=name: clocks[name])
        for name in clocks
    }
    ahead, behind = instances["ahead"], instances["behind"]
    ahead.register_phone(None, "alice", random_token(), "sandbox")
    vers = [ahead.put_gateway(None, GATEWAY_ID, "alice").lists[0].ver]
    for n in range(6):
        instance = behind if n % 2 == 0 else ahead
        clocks["behind"] -= 60.0  # and its clock steps back further each time
        change = instance.register_phone(None, "alice", random_token(), "sandbox")
        vers.append(change.lists[0].ver)
    assert vers == sorted(vers)
    assert len(set(vers)) == len(vers)
    for instance in instances.values():
        instance.db.close()


def test_the_database_going_away_answers_503_and_the_registry_carries_on_after(
    tmp_path: Path,
    pki: TestPki,
    registry_broker: MosquittoBroker,
    registry_identities: dict[str, CertFiles],
) -> None:
    with PostgresServer() as server:
        config, token, port = write_registry_config(
            tmp_path / "registry",
            pki=pki,
            broker=registry_broker,
            identity=registry_identities["registry"],
            database=server.create_database(),
        )
        with RegistryProcess(config, token, port) as registry:
            ok(registry.api("PUT", f"/v1/users/alice/phones/{random_token()}", {"env": "sandbox"}))
            ok(registry.api("PUT", f"/v1/users/bob/phones/{random_token()}", {"env": "sandbox"}))
            ver = ok(registry.api("PUT", GW, {"owner": "alice"}))["lists"][0]["ver"]

            server.halt()
            answer = registry.api("PUT", f"{GW}/shares/bob", {})
            assert answer.status == 503
            assert "database is unavailable" in answer.document["error"]
            status = registry.status()
            assert status["state"] == "degraded"
            assert any("database is unavailable" in p for p in status["problems"])

            server.resume()
            shared = ok(registry.api("PUT", f"{GW}/shares/bob", {}))
            assert shared["lists"][0]["ver"] > ver
            assert shared["lists"][0]["published"] is True
            assert registry.status()["state"] == "healthy"
