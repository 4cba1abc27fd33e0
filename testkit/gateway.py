"""A local gateway for tests, the demo and benchmarks: config, daemon subprocess, its CLI.

Everything the real daemon talks to is real and local: a TLS HTTP/2 stand-in
for Apple, a pseudo-terminal for the serial port. The daemon itself runs as a
subprocess, exactly as systemd would run it.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgebell import control
from edgebell.errors import ControlError
from testkit.pki import AuthKeyFiles

GATEWAY_ID = "gw-test"
TOPIC = "com.example.doorbell"
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"

# RFLink frames of the two demo buttons (as in tests/fixtures/rflink-samples.txt).
FRONT_FRAME = "20;{n:02X};EV1527;ID=0f7499;SWITCH=04;CMD=ON;"
BACK_FRAME = "20;{n:02X};SelectPlus;ID=1bb4;CHIME=01;"


def token_auth(key: AuthKeyFiles) -> dict[str, str]:
    """The ``apns.auth`` mapping for token auth with a generated APNs key."""
    return {
        "mode": "token",
        "key_file": str(key.private_key),
        "key_id": key.key_id,
        "team_id": key.team_id,
    }


def random_token(nbytes: int = 32) -> str:
    return secrets.token_hex(nbytes)


@dataclass(frozen=True, slots=True)
class GatewayFiles:
    """Where a test gateway keeps its things."""

    root: Path
    config: Path
    state_dir: Path
    control_socket: Path
    log: Path


def write_config(
    root: Path,
    *,
    port: str,
    apns_url: str,
    ca_file: Path,
    auth: Mapping[str, Any],
    tokens: Sequence[str | Mapping[str, Any]] = (),
    overrides: Mapping[str, Any] | None = None,
    environment: str = "sandbox",
) -> GatewayFiles:
    """Write a config.yaml for a local gateway; ``overrides`` merge into the top-level sections."""
    # AF_UNIX paths are limited to 108 bytes: keep the socket in a short private dir,
    # removed when the process that made it (test run, demo, benchmark) exits.
    sock_dir = Path(tempfile.mkdtemp(prefix="eb-"))
    atexit.register(shutil.rmtree, sock_dir, ignore_errors=True)
    files = GatewayFiles(
        root=root,
        config=root / "config.yaml",
        state_dir=root / "state",
        control_socket=sock_dir / "edgebell.sock",
        log=root / "daemon.log",
    )
    data: dict[str, Any] = {
        "gateway": {"id": GATEWAY_ID},
        "radio": {
            "port": port,
            "protocol": "rflink",
            "debounce": "1.5s",
            "cooldown": "10s",
            "reconnect_min": "0.05s",
            "reconnect_max": "0.5s",
        },
        "buttons": [
            {
                "id": "front",
                "name": "Front door",
                "match": {"protocol": "EV1527", "id": "0f7499", "switch": "04"},
            },
            {"id": "back", "name": "Back door", "match": {"protocol": "SelectPlus", "id": "1bb4"}},
        ],
        "apns": {
            "topic": TOPIC,
            "environment": environment,
            "auth": dict(auth),
            "host": apns_url,
            "ca_file": str(ca_file),
            "expiration": "15m",
            "connect_timeout": "2s",
            "request_timeout": "5s",
            "retry_min": "0.1s",
            "retry_max": "1s",
        },
        "tokens": [t if isinstance(t, Mapping) else {"token": t} for t in tokens],
        "state_dir": str(files.state_dir),
        "control_socket": str(files.control_socket),
        "log_level": "debug",
    }
    for section, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(data.get(section), dict):
            data[section].update(value)
        else:
            data[section] = value
    files.config.write_text(yaml.safe_dump(data, sort_keys=False))
    return files


def die_with_parent() -> None:
    """Runs in the daemon's child before exec: SIGKILL it when the test runner dies.

    A runner killed mid-test (a harness's timeout) would leave an orphaned daemon whose
    receiver keeps reopening its pty's path; once the kernel hands that pty number to
    another run, the orphan takes it (the port's exclusive lock) and that run fails.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


class DaemonProcess:
    """``edgebell run`` as a subprocess, with helpers to wait for it and to drive its CLI."""

    def __init__(self, files: GatewayFiles, *, env: Mapping[str, str] | None = None) -> None:
        self.files = files
        # The test runner's own systemd variables (if any) are not the daemon's.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        self._env = {**base, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, *, wait_ready: bool = True, timeout: float = 20.0) -> DaemonProcess:
        self._log = open(self.files.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgebell", "run", "--config", str(self.files.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env,
            preexec_fn=die_with_parent,
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        """Poll the control socket until the daemon says it has finished starting."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} while starting:\n{self.log_text()}"
                )
            try:
                status = self.status()
            except ControlError as exc:
                last = exc
            else:
                if "starting" not in status.get("problems", []):
                    return status
                last = status
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout} s ({last}):\n{self.log_text()}")

    def status(self) -> dict[str, Any]:
        answer = control.request(self.files.control_socket, {"cmd": "status"}, timeout=5.0)
        data = answer["status"]
        assert isinstance(data, dict)
        return data

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status = self.status()
        while not predicate(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"status never matched: {json.dumps(status, indent=1)}")
            time.sleep(0.05)
            status = self.status()
        return status

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``edgebell ARGS --config ...`` as a separate process, as a person would."""
        return subprocess.run(
            [sys.executable, "-m", "edgebell", *args, "--config", str(self.files.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env,
            check=False,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the daemon and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(
                    f"daemon did not stop within {timeout} s:\n{self.log_text()}"
                ) from None
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.files.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGKILL)
        elif self._log is not None:
            self._log.close()
