"""A home's MQTT broker for tests, the demo and benchmarks: Mosquitto with users and passwords.

Set up as a Home Assistant household runs it (the Mosquitto add-on): user names
and passwords, plain MQTT on one port and, optionally, TLS with a server
certificate from the test CA on another. Each test gets its own directory and
free loopback ports; ``restart()`` keeps the ports, as a rebooted broker would.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from testkit.mosquitto import MosquittoProcess, free_port
from testkit.pki import CertFiles

GATEWAY_USER = "edgebell"
HA_USER = "homeassistant"


def _passwd_binary(broker: str) -> str:
    """``mosquitto_passwd`` (Debian's mosquitto package puts it in /usr/bin, the broker in sbin)."""
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for where in (Path(broker).parent, Path("/usr/bin")):
        if (where / "mosquitto_passwd").exists():
            return str(where / "mosquitto_passwd")
    raise RuntimeError("mosquitto_passwd is not installed (apt-get install mosquitto)")


class HomeBroker(MosquittoProcess):
    """``mosquitto -c <its own config>``: password users, plain MQTT and optionally TLS."""

    die_with_parent = True  # a killed benchmark leaves no broker behind

    def __init__(
        self,
        dir: Path,
        *,
        users: Mapping[str, str] | None = None,
        tls: tuple[CertFiles, CertFiles] | None = None,  # (ca, server)
    ) -> None:
        super().__init__(dir)
        self.port = free_port(self.host)
        self.tls_port = free_port(self.host) if tls else None
        self.users = dict(users or {GATEWAY_USER: "gateway-secret", HA_USER: "ha-secret"})
        self.password_files: dict[str, Path] = {}
        passwd = self.dir / "passwd"
        passwd.write_text("")
        passwd.chmod(0o600)
        for user, password in self.users.items():
            subprocess.run(
                [_passwd_binary(self.binary), "-b", str(passwd), user, password],
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

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RuntimeError("this broker has no TLS listener")
        return f"mqtts://{self.host}:{self.tls_port}"

    def listening_ports(self) -> list[int]:
        return [p for p in (self.port, self.tls_port) if p is not None]
