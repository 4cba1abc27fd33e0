"""A real Mosquitto broker for tests, the demo and benchmarks: TLS, client certificates, the ACL.

It is configured as docs/mqtt.md tells an operator to: every client shows a
certificate from the test CA, its CN becomes its user name (and client id), and the
ACL confines each gateway to ``<prefix>/<CN>/#`` plus reading ``<prefix>/fleet/#``;
one cloud identity may use every topic under the prefix.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.gateway import die_with_parent
from testkit.pki import CertFiles

CLOUD_USER = "cloud"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def mosquitto_binary() -> str | None:
    """The broker executable, also where Debian puts it outside a normal user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    sbin = Path("/usr/sbin/mosquitto")
    return str(sbin) if sbin.exists() else None


def acl_text(
    prefix: str = "edgebell", cloud_user: str = CLOUD_USER, more_cloud_users: Sequence[str] = ()
) -> str:
    """The ACL of docs/mqtt.md: confinement by certificate CN (``%u``), never by client id.

    ``more_cloud_users``: other cloud identities (registry instances, each with its own
    certificate, since the CN is also the client id).
    """
    more = "".join(f"user {user}\ntopic readwrite {prefix}/#\n" for user in more_cloud_users)
    return (
        "# Each gateway: its own topics, by the CN of its certificate (not its client id).\n"
        f"pattern readwrite {prefix}/%u/#\n"
        "# Every gateway reads what the cloud sends the whole fleet (the APNs provider JWT).\n"
        f"pattern read {prefix}/fleet/#\n"
        "\n"
        "# The cloud backend: every gateway's topics.\n"
        f"user {cloud_user}\n"
        f"topic readwrite {prefix}/#\n"
        f"{more}"
    )


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never handed out twice in one process.

    Two calls in a row may get the same port back from the kernel (the first socket is
    closed by then): a broker given it for two listeners exited with "Address already
    in use".
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def exit_output(proc: subprocess.Popen[bytes]) -> str:
    """What a broker that exited at start printed, its pipe closed (no ResourceWarning later)."""
    if proc.stderr is None:
        return ""
    with proc.stderr:
        return proc.stderr.read().decode(errors="replace")


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, SIGKILL if it has not exited within ``timeout``; its stderr pipe closed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stderr is not None:
        proc.stderr.close()


class MosquittoProcess:
    """``mosquitto -c <config_file>`` in its own directory: start, stop, restart, its log.

    A subclass writes ``config_file`` and says which ports ``start()`` waits for.
    """

    # A killed benchmark or test run leaves no broker behind (PR_SET_PDEATHSIG).
    die_with_parent = False

    def __init__(self, dir: Path) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.config_file = self.dir / "mosquitto.conf"
        self.log_file = self.dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def listening_ports(self) -> list[int]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Start the broker and return once it accepts connections on every listener."""
        if self.running:
            raise RuntimeError("the broker is already running")
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent if self.die_with_parent else None,
        )
        ports = self.listening_ports()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code, err = self._proc.returncode, exit_output(self._proc)
                raise RuntimeError(f"mosquitto exited with {code}:\n{err}\n{self.log_text()}")
            with contextlib.suppress(OSError):
                for port in ports:
                    socket.create_connection((self.host, port), 0.2).close()
                return self
            time.sleep(0.02)
        self.stop()
        listed = ", ".join(map(str, ports))
        raise RuntimeError(f"mosquitto did not listen on {listed} in time:\n{self.log_text()}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves its persistence file first); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, _STOP_TIMEOUT)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MosquittoBroker(MosquittoProcess):
    """``mosquitto -c <its own config>`` on 127.0.0.1 and a free port; restartable on that port.

    With ``persistence`` (the default, as in production) retained messages and
    persistent sessions survive a restart: the broker saves them when it stops.
    ``restart(forget=True)`` throws them away, as a broker that lost its disk would.
    """

    def __init__(
        self,
        dir: Path,
        *,
        ca: CertFiles,
        server: CertFiles,
        prefix: str = "edgebell",
        persistence: bool = True,
        port: int | None = None,
        more_cloud_users: Sequence[str] = (),
    ) -> None:
        super().__init__(dir)
        self.port = port or free_port(self.host)
        self.ca = ca
        self.prefix = prefix
        self.acl_file = self.dir / "acl"
        self.acl_file.write_text(acl_text(prefix, more_cloud_users=more_cloud_users))
        self.config_file.write_text(
            "\n".join(
                [
                    # As root, mosquitto would switch to its own user, who cannot read our keys.
                    f"user {getpass.getuser()}",
                    "per_listener_settings false",
                    "allow_anonymous false",
                    f"persistence {'true' if persistence else 'false'}",
                    f"persistence_location {self.dir}/",
                    f"listener {self.port} {self.host}",
                    f"cafile {ca.cert}",
                    f"certfile {server.cert}",
                    f"keyfile {server.key}",
                    "require_certificate true",
                    # Small messages leave at once (Nagle would hold one back up to 40 ms).
                    "set_tcp_nodelay true",
                    "use_identity_as_username true",
                    # The client id is the CN too: a certificate cannot take over another
                    # gateway's session by choosing that gateway's client id.
                    "use_username_as_clientid true",
                    f"acl_file {self.acl_file}",
                    f"log_dest file {self.log_file}",
                    "log_type all",
                    "",
                ]
            )
        )

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    def listening_ports(self) -> list[int]:
        return [self.port]

    def restart(self, *, forget: bool = False) -> Self:
        """Stop and start on the same port; ``forget`` drops sessions and retained messages."""
        self.stop()
        if forget:
            (self.dir / "mosquitto.db").unlink(missing_ok=True)
        return self.start()
