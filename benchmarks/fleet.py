"""Fleet: N simulated gateways on a local Mosquitto; a new token list for each, in use by all.

A real Mosquitto runs as docs/mqtt.md configures it (TLS, a client certificate per
gateway whose CN is its user name, the ACL). ``fleet_gateways.py`` runs N gateways'
cloud sync (edgebell's own ``CloudSync``) in one process; this process plays the
cloud: each round it signs a new list for every gateway (signed before the clock
starts), publishes all N retained on ``<prefix>/<gateway>/tokens`` without waiting
between them (QoS 1), and the fleet says when each gateway took its list into use.
Reported: the time from the first publish to the last gateway using its list, the
median and spread of publish -> in use per gateway, how long the fleet took to
connect, and the memory of the broker and of the fleet's process.

``--broker rabbitmq`` runs the same against a 3-node RabbitMQ cluster
(``testkit/rabbitmq.py``: certificate login, quorum session queues, a user with
its own permissions per gateway): the gateways are spread over the three nodes
in turn, the cloud publishes on node 1, and the broker's memory is that of the
three nodes together.

    .venv/bin/python benchmarks/fleet.py [--gateways 500] [--rounds 3] [--broker rabbitmq] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from common import HERE, PYTHON, bench_pki, machine, proc_memory_mb, scratch, summary
from fleet_gateways import gateway_ids
from paho.mqtt.enums import CallbackAPIVersion

from edgebell.cloud import tools
from testkit.mosquitto import CLOUD_USER, MosquittoBroker
from testkit.pki import CertFiles, TestPki, make_client_cert
from testkit.rabbitmq import RabbitCluster

PREFIX = "edgebell"
PHONES_PER_LIST = 4
_TIMEOUT = 120.0


class Publisher:
    """The cloud backend's MQTT client: publishes many retained messages back to back."""

    def __init__(self, host: str, port: int, ca: Path, identity: CertFiles) -> None:
        self._connected = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=identity.common_name,
            protocol=mqtt.MQTTv311,
        )
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(identity.cert, identity.key)
        self._client.tls_set_context(context)
        # All of a round's messages in flight at once, as a backend pushing a fleet would.
        self._client.max_inflight_messages_set(65535)
        self._client.on_connect = lambda *_: self._connected.set()
        self._client.connect(host, port, keepalive=60)
        self._client.loop_start()
        if not self._connected.wait(_TIMEOUT):
            self.close()
            raise TimeoutError("the cloud publisher did not connect")

    def publish_all(self, messages: list[tuple[str, str]]) -> list[int]:
        """Publish every message retained (QoS 1); when each was handed over (monotonic ns)."""
        handed: list[int] = []
        infos = []
        for topic, payload in messages:
            handed.append(time.monotonic_ns())
            infos.append(self._client.publish(topic, payload, qos=1, retain=True))
        for info in infos:
            info.wait_for_publish(_TIMEOUT)
            if not info.is_published():
                raise TimeoutError(f"a publish was not acknowledged (rc {info.rc})")
        return handed

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _pid_of(config_file: Path) -> int:
    """The broker's process id, found by its own config file on its command line."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(config_file).encode() in cmdline and b"mosquitto" in cmdline:
            return int(proc.name)
    raise RuntimeError(f"no mosquitto running with {config_file}")


class FleetProcess:
    """``fleet_gateways.py`` as a subprocess, driven over its stdin and stdout."""

    def __init__(self, command: list[str], log: Path) -> None:
        self._log = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fleet process exited ({self.proc.wait(10)}); see its log")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"fleet: {answer['error']}")
        return answer

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@dataclass(frozen=True, slots=True)
class Broker:
    """Where the gateways connect (in turn), where the cloud publishes, the broker's memory."""

    urls: list[str]
    host: str
    port: int
    memory: Callable[[], dict[str, float]]
    start_s: float | None = None


@contextlib.contextmanager
def mosquitto(root: Path, pki: TestPki, ids: list[str]) -> Iterator[Broker]:
    with MosquittoBroker(root / "broker", ca=pki.ca, server=pki.server) as broker:
        pid = _pid_of(broker.config_file)
        yield Broker([broker.url], broker.host, broker.port, lambda: proc_memory_mb(pid))


@contextlib.contextmanager
def rabbitmq(root: Path, pki: TestPki, ids: list[str]) -> Iterator[Broker]:
    with RabbitCluster(root / "rabbitmq", ca=pki.ca, server=pki.server) as cluster:
        cluster.add_gateways(ids)

        def memory() -> dict[str, float]:
            nodes = [proc_memory_mb(node.pid()) for node in cluster.nodes]
            return {key: round(sum(n[key] for n in nodes), 1) for key in nodes[0]}

        first = cluster.nodes[0]
        yield Broker(
            [node.url for node in cluster.nodes],
            first.host,
            first.mqtt_port,
            memory,
            cluster.start_seconds,
        )


BROKERS = {"mosquitto": mosquitto, "rabbitmq": rabbitmq}


def measure(gateways: int, rounds: int, broker_kind: str = "mosquitto") -> dict[str, Any]:
    root = scratch("edgebell-fleet-")
    pki = bench_pki(root)
    certs = root / "certs"
    ids = gateway_ids(gateways)
    for gateway in ids:
        make_client_cert(pki.ca, certs, gateway)
    cloud_identity = make_client_cert(pki.ca, certs, CLOUD_USER)
    signing_key = tools.load_signing_key(pki.token_list_key.private_key)
    all_in_use_s: list[float] = []
    per_gateway_ms: list[float] = []
    with BROKERS[broker_kind](root, pki, ids) as broker:
        broker_idle = broker.memory()
        fleet = FleetProcess(
            [
                PYTHON,
                str(HERE / "fleet_gateways.py"),
                "--broker",
                ",".join(broker.urls),
                "--ca",
                str(pki.ca.cert),
                "--certs",
                str(certs),
                "--token-list-key",
                str(pki.token_list_key.public_key),
                "--state",
                str(root / "gateways"),
                "--count",
                str(gateways),
            ],
            root / "fleet.log",
        )
        try:
            ready = fleet.read()
            publisher = Publisher(broker.host, broker.port, pki.ca.cert, cloud_identity)
            try:
                ver = int(time.time() * 1000)
                for _ in range(rounds):
                    ver += 1
                    messages = [
                        (f"{PREFIX}/{gateway}/tokens", _signed_list(gateway, ver, signing_key))
                        for gateway in ids
                    ]
                    handed = publisher.publish_all(messages)
                    in_use = fleet.call("wait_ver", ver=ver, timeout=_TIMEOUT)["in_use_ns"]
                    all_in_use_s.append((max(in_use) - handed[0]) / 1e9)
                    per_gateway_ms += [(u - h) / 1e6 for u, h in zip(in_use, handed, strict=True)]
            finally:
                publisher.close()
            fleet_memory = fleet.call("memory")["memory_mb"]
            broker_memory = broker.memory()
        finally:
            fleet.close()
    client_growth = fleet_memory["rss"] - ready["memory_before_mb"]["rss"]
    return {
        "broker": broker_kind,
        "broker_nodes": len(broker.urls),
        "broker_start_s": None if broker.start_s is None else round(broker.start_s, 1),
        "gateways": gateways,
        "rounds": rounds,
        "connect_s": ready["connect_s"],
        "all_in_use_s": {
            "median": round(statistics.median(all_in_use_s), 3),
            "min": round(min(all_in_use_s), 3),
            "max": round(max(all_in_use_s), 3),
        },
        "publish_to_in_use_ms": summary(per_gateway_ms, 1),
        "broker_memory_mb": {"idle": broker_idle, "with_fleet": broker_memory},
        "fleet_memory_mb": fleet_memory,
        "fleet_memory_before_mb": ready["memory_before_mb"],
        "fleet_rss_per_gateway_kb": round(client_growth * 1024 / gateways),
        "machine": machine(),
    }


def _signed_list(gateway: str, ver: int, key: Any) -> str:
    now = time.time()
    tokens = [
        {
            "token": secrets.token_hex(32),
            "env": "production",
            "user": f"user-{n}",
            "registered_at": int(now * 1000),
        }
        for n in range(PHONES_PER_LIST)
    ]
    claims = tools.token_list_claims(tokens, gateway=gateway, ver=ver, now=now)
    return tools.sign_token_list(claims, key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker", choices=sorted(BROKERS), default="mosquitto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.gateways, args.rounds, args.broker)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    a, p = result["all_in_use_s"], result["publish_to_in_use_ms"]
    print(
        f"fleet: {args.gateways} gateways' cloud sync in one process, {args.rounds} new lists each,"
        f" {args.broker} ({result['broker_nodes']} node{'s' if result['broker_nodes'] > 1 else ''})"
    )
    if result["broker_start_s"] is not None:
        print(f"  cluster started and joined in {result['broker_start_s']} s")
    print(f"  all connected after {result['connect_s']} s")
    print(
        f"  first publish -> last gateway using its new list: {a['median']} s"
        f" ({a['min']}-{a['max']})"
    )
    print(f"  per gateway, publish -> in use: p50 {p['p50']} ms, p99 {p['p99']} ms, max {p['max']}")
    print(
        f"  broker RSS {result['broker_memory_mb']['with_fleet']['rss']} MiB;"
        f" fleet process RSS {result['fleet_memory_mb']['rss']} MiB"
        f" ({result['fleet_rss_per_gateway_kb']} KiB per gateway)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
