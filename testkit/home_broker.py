"""A home's MQTT broker for tests, the demo and benchmarks: Mosquitto with users and passwords.

Set up as a Home Assistant household runs it (the Mosquitto add-on): user names
and passwords, plain MQTT on one port and, optionally, TLS with a server
certificate from the test CA on another. Each test gets its own directory and
free loopback ports; ``restart()`` keeps the ports, as a rebooted broker would.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from testkit.gateway import die_with_parent
from testkit.mosquitto import exit_output, free_port, mosquitto_binary
from testkit.pki import CertFiles

GATEWAY_USER = "edgebell"
HA_USER = "homeassistant"
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


def _passwd_binary(broker: str) -> str:
    """``mosquitto_passwd`` (Debian's mosquitto package puts it in /usr/bin, the broker in sbin)."""
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for where in (Path(broker).parent, Path("/usr/bin")):
        if (where / "mosquitto_passwd").exists():
            return str(where / "mosquitto_passwd")
    raise RuntimeError("mosquitto_passwd is not installed (apt-get install mosquitto)")


class HomeBroker:
    """``mosquitto -c <its own config>``: password users, plain MQTT and optionally TLS."""

    def __init__(
        self,
        dir: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: tuple[CertFiles, CertFiles] | None = None,  # (ca, server)
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.tls_port = free_port(self.host) if tls else None
        self.users = dict(users or {GATEWAY_USER: "gateway-secret", HA_USER: "ha-secret"})
        self.password_files: dict[str, Path] = {}
        self.config_file = self.dir / "mosquitto.conf"
        self.log_file = self.dir / "mosquitto.log"
        passwd = self.dir / "passwd"
        passwd.write_text("")
        passwd.chmod(0o600)
        for user, password in self.users.items():
            subprocess.run(
                [_passwd_binary(binary), "-b", str(passwd), user, password],
                check=True,
                capture_output=True,
            )
            secret = self.dir / f"{user}.password"
            secret.write_text(password + "\n")
            secret.chmod(0o600)
            self.password_files[user] = secret
        lines = [
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwd}",
            "persistence true",
            f"persistence_location {self.dir}/",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_file}",
            "log_type all",
            f"listener {self.port} {self.host}",
        ]
        if tls is not None:
            ca, server = tls
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {ca.cert}",
                f"certfile {server.cert}",
                f"keyfile {server.key}",
            ]
        self.config_file.write_text("\n".join([*lines, ""]))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this broker has no TLS listener")
        return f"mqtts://{self.host}:{self.tls_port}"

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
            preexec_fn=die_with_parent,  # a killed benchmark leaves no broker behind
        )
        ports = [p for p in (self.port, self.tls_port) if p is not None]
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
        raise RuntimeError(f"mosquitto did not listen in time:\n{self.log_text()}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves retained messages first); idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_STOP_TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()

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
