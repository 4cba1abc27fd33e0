"""A real 3-node RabbitMQ cluster for tests and benchmarks: MQTT over TLS, certificate login.

Configured as docs/mqtt.md tells an operator to: the ``rabbitmq_mqtt`` plugin
listens with TLS only, a client's certificate CN is its user name
(``mqtt.ssl_cert_login``), persistent sessions live in quorum queues (a classic
queue on a node that is down loses what the cloud sent), and every gateway has
its own user whose permissions name only its own session queue and topics.

Every node runs on loopback with its own node name, ports, data and log
directories, config file and Erlang cookie (in a private ``HOME``), and its own
``epmd`` on a free port: nothing is shared with a system RabbitMQ or another
test run, and ``stop()`` ends every process it started.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from testkit.gateway import die_with_parent
from testkit.mosquitto import CLOUD_USER, free_port, stop_process
from testkit.pki import CertFiles

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
_START_TIMEOUT = 180.0  # a node's boot on a busy 2-core machine
_STOP_TIMEOUT = 60.0
_CTL_TIMEOUT = 120.0


def rabbitmq_installed() -> bool:
    return (RABBITMQ_BIN / "rabbitmq-server").exists() and shutil.which("epmd") is not None


@dataclass(frozen=True, slots=True)
class GatewayGrant:
    """What one gateway's user may do: its session queue, its own topics, the fleet's."""

    write: tuple[str, ...] = ("status", "ring", "delivery", "feedback", "cmd/reply", "hello")
    read: tuple[str, ...] = ("tokens", "cmd", "apns-jwt")
    fleet: bool = True


class RabbitNode:
    """One node: ``rabbitmq-server`` as a child process, ports and directories of its own."""

    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"{cluster.tag}n{index}@localhost"
        self.dir = cluster.dir / f"node{index}"
        self.host = "127.0.0.1"
        self.mqtt_port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.config_file = self.dir / "rabbitmq.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        self._output = self.dir / "server.out"

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        env = self.cluster.base_env()
        env.update(
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.config_file),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbit.pid"),
            # The script then execs the VM instead of staying its parent, so the VM is our
            # child and dies with us (die_with_parent survives exec); -noinput as without it.
            RABBITMQ_ALLOW_INPUT="1",
            # The distribution port on loopback too, not on every interface.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}"
            ),
        )
        return env

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        c = self.cluster
        lines = [
            "listeners.tcp.default = " + f"{self.host}:{self.amqp_port}",
            "mqtt.listeners.tcp = none",
            f"mqtt.listeners.ssl.default = {self.host}:{self.mqtt_port}",
            f"ssl_options.cacertfile = {c.ca.cert}",
            f"ssl_options.certfile = {c.server.cert}",
            f"ssl_options.keyfile = {c.server.key}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
            # The certificate is the login: its CN is the user name (which must exist).
            "mqtt.ssl_cert_login = true",
            "ssl_cert_login_from = common_name",
            "mqtt.allow_anonymous = false",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            # Persistent sessions survive their queue's node going down (classic ones lose).
            "mqtt.durable_queue_type = quorum",
            "mqtt.subscription_ttl = 604800000",  # a week offline keeps the session
            "mqtt.tcp_listen_options.nodelay = true",
            "loopback_users = none",
            "log.console = false",
            "log.file.level = info",
            "cluster_formation.peer_discovery_backend = classic_config",
            f"cluster_formation.classic_config.nodes.1 = {c.nodes[0].name}",
            "",
        ]
        self.config_file.write_text("\n".join(lines))

    def start(self) -> None:
        """Start the node (return at once); ``wait_booted`` waits for it."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self._output.parent.mkdir(parents=True, exist_ok=True)
        with self._output.open("ab") as out:
            self._proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: stop() signals the VM and its helpers together.
                start_new_session=True,
                # A test run or benchmark killed before its clean-up must not leave a
                # cluster running: half a gigabyte each.
                preexec_fn=die_with_parent,
            )

    def pid(self) -> int:
        """The node's Erlang VM (written by the node once it has booted)."""
        return int((self.dir / "rabbit.pid").read_text().strip())

    def wait_booted(self, timeout: float = _START_TIMEOUT) -> None:
        """Until the node has booted and its MQTT listener accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection((self.host, self.mqtt_port), 0.5).close()
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not listen on {self.mqtt_port}:\n{self.log_tail()}")

    def stop(self) -> None:
        """``rabbitmqctl stop`` (a clean shutdown), then the process group; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, RuntimeError):
                self.cluster.ctl(self, "stop", timeout=_STOP_TIMEOUT)
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(_STOP_TIMEOUT)
        # Whatever the VM left in its group (erl_child_setup, inet_gethost).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_booted()

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in [self._output, *sorted((self.dir / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                tail = path.read_text().splitlines()[-lines:]
                texts.append(f"== {path.name}\n" + "\n".join(tail))
        return "\n".join(texts)


class RabbitCluster:
    """``with RabbitCluster(dir, ca=..., server=...) as cluster:`` three nodes, joined."""

    def __init__(
        self,
        dir: Path,
        *,
        ca: CertFiles,
        server: CertFiles,
        size: int = 3,
        prefix: str = "edgebell",
    ) -> None:
        if not rabbitmq_installed():
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        self.dir = Path(dir)
        self.ca = ca
        self.server = server
        self.prefix = prefix
        # Node names unique to this run: another run's nodes may share the host.
        self.tag = f"eb{secrets.token_hex(3)}"
        self.home = self.dir / "home"
        self.epmd_port = free_port()
        self._epmd: subprocess.Popen[bytes] | None = None
        self.nodes = [RabbitNode(self, i) for i in range(1, size + 1)]
        self.start_seconds: float | None = None

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            # rabbitmqctl's own distribution port: any free one (not the shared 35672 range).
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
        )
        return env

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        for node in self.nodes:
            node.write_config()
        self._epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=self.base_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        try:
            # The first node forms the cluster; the others boot in parallel and join it.
            first, *others = self.nodes
            first.start()
            first.wait_booted()
            for node in others:
                node.start()
            for node in others:
                node.wait_booted()
            self._wait_members(len(self.nodes))
            # guest/guest would log in over AMQP on loopback: nobody here needs it.
            self.ctl(first, "delete_user", "guest")
            self.ctl(first, "add_user", CLOUD_USER, secrets.token_hex(16))
            self.ctl(first, "set_permissions", "-p", "/", CLOUD_USER, ".*", ".*", ".*")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.stop(), self.nodes))
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            stop_process(epmd, _STOP_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- administration ------------------------------------------------------------------

    def ctl(self, node: RabbitNode, *args: str, timeout: float = _CTL_TIMEOUT) -> str:
        """``rabbitmqctl -n <node> ...``; RuntimeError with its output when it fails."""
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.name, *args],
            env=self.base_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({result.returncode}):"
                f" {result.stdout}{result.stderr}"
            )
        return result.stdout

    def running_node(self) -> RabbitNode:
        for node in self.nodes:
            if node.running:
                return node
        raise RuntimeError("no node of the cluster is running")

    def add_gateway(self, gateway_id: str, grant: GatewayGrant | None = None) -> None:
        """A user for the certificate CN ``gateway_id`` with permissions for its own topics only."""
        self.add_gateways([gateway_id], grant)

    def add_gateways(self, gateway_ids: Sequence[str], grant: GatewayGrant | None = None) -> None:
        """Users and permissions for many gateways in one ``import_definitions`` (a CLI call
        costs a second or two; a fleet's worth of them would take an hour).

        RabbitMQ matches permissions on queue and exchange names, and topic
        permissions on routing keys (an MQTT topic with ``/`` turned into ``.``).
        The session queue is named after the client id, so a certificate that
        claims another gateway's client id cannot open that gateway's queue.
        """
        definitions = gateway_definitions(gateway_ids, self.prefix, grant or GatewayGrant())
        path = self.dir / f"definitions-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(definitions))
        try:
            self.ctl(self.running_node(), "import_definitions", str(path))
        finally:
            path.unlink()

    def remove_user(self, user: str) -> None:
        with contextlib.suppress(RuntimeError):
            self.ctl(self.running_node(), "delete_user", user)

    def _wait_members(self, count: int, timeout: float = _START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                status = self.ctl(self.nodes[0], "cluster_status", "--formatter", "json")
                if sum(node.name in _running_nodes(status) for node in self.nodes) >= count:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the cluster did not form: {status}")


def gateway_definitions(
    gateway_ids: Sequence[str], prefix: str, grant: GatewayGrant
) -> dict[str, Any]:
    """RabbitMQ definitions: a user per gateway (no password: the certificate is the login),
    its session queue only, its own topics only."""
    users, permissions, topic_permissions = [], [], []
    write = "|".join(re.escape(s).replace("/", r"\.") for s in grant.write)
    read = "|".join(re.escape(s).replace("/", r"\.") for s in grant.read)
    fleet = rf"|{re.escape(prefix)}\.fleet\.apns-jwt" if grant.fleet else ""
    for gateway_id in gateway_ids:
        gid = re.escape(gateway_id)
        queue = rf"mqtt-subscription-{gid}qos[01]"
        key = rf"{re.escape(prefix)}\.{gid}"
        users.append(
            {
                "name": gateway_id,
                "password_hash": "",
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
        )
        permissions.append(
            {
                "user": gateway_id,
                "vhost": "/",
                "configure": f"^{queue}$",
                "write": rf"^(amq\.topic|{queue})$",
                "read": rf"^(amq\.topic|{queue})$",
            }
        )
        topic_permissions.append(
            {
                "user": gateway_id,
                "vhost": "/",
                "exchange": "amq.topic",
                "write": f"^{key}\\.({write})$",
                "read": f"^({key}\\.({read}){fleet})$",
            }
        )
    return {"users": users, "permissions": permissions, "topic_permissions": topic_permissions}


def _running_nodes(cluster_status_json: str) -> list[str]:
    document = json.loads(cluster_status_json)
    nodes = document.get("running_nodes", [])
    return [str(n) for n in nodes]
