"""The token registry (``edgebell cloud serve``) as a subprocess, and a small client for its API."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testkit.mosquitto import MosquittoBroker, free_port
from testkit.pki import CertFiles, TestPki

_START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    document: Any


def write_registry_config(
    root: Path,
    *,
    pki: TestPki,
    broker: MosquittoBroker | None,
    identity: CertFiles | None,
    database: str | None = None,
    port: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, str, int]:
    """A config for one registry instance: ``(config file, its API token, its HTTP port)``."""
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    tokens_file = root / "api-tokens"
    fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"# the app deployment's bearer token\n{token}\n")
    port = port or free_port()
    data: dict[str, Any] = {
        "database": database or f"sqlite:///{root / 'registry.db'}",
        "topic_prefix": "edgebell",
        "signing_key": str(pki.token_list_key.private_key),
        "http": {"listen": f"127.0.0.1:{port}", "api_tokens_file": str(tokens_file)},
        "log_level": "debug",
    }
    if broker is not None and identity is not None:
        data["mqtt"] = {
            "url": broker.url,
            "ca_file": str(pki.ca.cert),
            "cert_file": str(identity.cert),
            "key_file": str(identity.key),
            "reconnect_min": "0.05s",
            "reconnect_max": "0.5s",
            "keepalive": "5s",
        }
    for key, value in (extra or {}).items():  # sections merge, other keys replace
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    config = root / "registry.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, token, port


class RegistryProcess:
    """``edgebell cloud serve --config F`` as a subprocess; ``api()`` calls it over HTTP."""

    def __init__(
        self, config: Path, token: str, port: int, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self._env = {**os.environ, **(env or {})}
        self.token = token
        self.port = port
        self.log = config.parent / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_mqtt: bool = True) -> RegistryProcess:
        self._log = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgebell", "cloud", "serve", "--config", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
        )
        self.wait_for(
            lambda s: not wait_mqtt or s["mqtt"]["connected"], _START_TIMEOUT, starting=True
        )
        return self

    def status(self) -> dict[str, Any]:
        answer = self.api("GET", "/v1/status")
        assert answer.status == 200, answer
        document: dict[str, Any] = answer.document
        return document

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 15.0,
        *,
        starting: bool = False,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"registry exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            try:
                status = self.status()
            except OSError as exc:
                if not starting:
                    raise
                last = exc
            else:
                if predicate(status):
                    return status
                last = status
            time.sleep(0.05)
        raise AssertionError(f"registry status never matched ({last}):\n{self.log_text()}")

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        bearer = self.token if token is None else token
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return Answer(response.status, json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, json.loads(exc.read()))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``edgebell cloud registry ARGS --config F``, as an operator runs it."""
        op, *rest = args
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "edgebell",
                "cloud",
                "registry",
                op,
                "--config",
                str(self.config),
                *rest,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def stop(self, timeout: float = 15.0) -> int:
        proc, self.proc = self.proc, None
        code = 0
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                    raise AssertionError(f"registry did not stop:\n{self.log_text()}") from None
            code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> RegistryProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
