"""Every ``edgebell`` command as a subprocess against a running daemon: output, exit codes, JSON."""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import platformdirs
import pytest
import yaml
from fixtures_service import edit_config, reload

import edgebell
from edgebell import __version__
from edgebell.privacy import short_token
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import FRONT_FRAME, DaemonProcess, GatewayFiles, random_token
from testkit.standin_thread import StandInThread

GATE_FRAME = "20;{n:02X};Kaku;ID=41;SWITCH=1;CMD=ON;"
SHED_FRAME = "20;{n:02X};NewKaku;ID=00c0ffee;SWITCH=2;CMD=ON;"


@pytest.fixture
def daemon(gateway_files: GatewayFiles) -> Iterator[DaemonProcess]:
    with DaemonProcess(gateway_files) as d:
        yield d


def status_json(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    result = daemon.cli("status", "--json")
    return result.returncode, json.loads(result.stdout)


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgebell", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"edgebell {__version__}"


# -- status ---------------------------------------------------------------------------------------


def test_status_when_healthy_reads_at_a_glance(
    daemon: DaemonProcess, gateway_files: GatewayFiles, phones: list[str]
) -> None:
    result = daemon.cli("status")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"edgebell {__version__}: HEALTHY  (up ")
    assert "!" not in result.stdout  # no problem lines
    assert any(line.startswith("receiver   connected on ") for line in lines)
    assert "phones     3 (static config), 0 suppressed by Apple" in lines
    assert any(line.startswith("apns       connected (token auth)") for line in lines)
    assert any(line.startswith(f"config     {gateway_files.config}, loaded ") for line in lines)
    for token in phones:
        assert token[:16] not in result.stdout


def test_status_json_has_the_contract_and_says_what_is_wrong(daemon: DaemonProcess) -> None:
    code, data = status_json(daemon)
    assert code == 0
    assert data["state"] == "healthy"
    assert data["problems"] == []
    assert data["version"] == __version__
    assert data["since"].endswith("Z")
    assert data["uptime_s"] >= 0
    assert set(data["radio"]) >= {"connected", "port", "last_frame_at", "frames", "bad_frames"}
    assert set(data["buttons"][0]) == {"id", "last_ring_at", "rings"}
    assert set(data["tokens"]) == {"count", "ver", "suppressed"}
    assert set(data["apns"]) >= {"connected", "auth", "sent", "delivered", "failed", "last_error"}
    assert set(data["outbox"]) >= {"pending", "oldest_age_s"}
    assert data["config"] == {
        "file": str(daemon.files.config),
        "loaded_at": data["config"]["loaded_at"],
        "reload_error": None,
        "restart_needed": [],
    }


def test_status_when_the_receiver_is_unplugged_and_back(
    daemon: DaemonProcess, rflink_receiver: FakeReceiver
) -> None:
    rflink_receiver.unplug()
    daemon.wait_status(lambda s: not s["radio"]["connected"])

    result = daemon.cli("status")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(f"edgebell {__version__}: DEGRADED")
    assert f"  ! receiver not connected on {rflink_receiver.path}" in result.stdout
    assert f"receiver   NOT CONNECTED on {rflink_receiver.path}" in result.stdout
    code, data = status_json(daemon)
    assert code == 1
    assert data["state"] == "degraded"
    assert data["problems"][0].startswith(f"receiver not connected on {rflink_receiver.path}")

    rflink_receiver.plug()
    daemon.wait_status(lambda s: s["radio"]["connected"])
    assert daemon.cli("status").returncode == 0


def test_status_says_loudly_when_apple_refuses_the_key(
    daemon: DaemonProcess, apns_standin_thread: StandInThread
) -> None:
    apns_standin_thread.call(lambda s: setattr(s, "auth_keys", {}))  # Apple no longer knows it
    assert daemon.cli("ring", "front").returncode == 0
    daemon.wait_status(lambda s: s["state"] == "degraded")
    result = daemon.cli("status")
    assert result.returncode == 1
    assert "check apns.auth" in result.stdout
    assert "InvalidProviderToken" in result.stdout


def test_status_says_when_there_is_no_phone_to_notify(gateway_files: GatewayFiles) -> None:
    edit_config(gateway_files, lambda d: d.update(tokens=[]))
    with DaemonProcess(gateway_files) as daemon:
        result = daemon.cli("status")
    assert result.returncode == 1
    assert "! no phone to notify (empty token list)" in result.stdout


def test_when_no_daemon_runs_status_exits_3_and_other_commands_1_with_one_clear_line(
    daemon: DaemonProcess,
) -> None:
    daemon.stop(signal.SIGKILL)  # killed: the socket file stays behind, nobody listens
    sock = daemon.files.control_socket
    assert sock.exists()
    error = (
        f"not running: no edgebell daemon answers on {sock} "
        "(under systemd: systemctl status edgebell)"
    )
    for args, code in (
        (("status",), 3),
        (("status", "--json"), 3),
        (("ring", "front"), 1),
        (("test-push",), 1),
        (("learn",), 1),
    ):
        result = daemon.cli(*args)
        assert (args, result.returncode) == (args, code)
        if "--json" in args:  # monitoring always gets a verdict it can parse on stdout
            assert json.loads(result.stdout) == {"state": "not running", "error": error}
        else:
            assert result.stdout == ""
        assert result.stderr.splitlines() == [f"edgebell: {error}"]


def test_a_daemon_that_does_not_answer_is_not_answering_not_not_running(
    daemon: DaemonProcess,
) -> None:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGSTOP)  # hung: the kernel still takes the connection
    try:
        result = daemon.cli("status", "--json")
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    error = f"the daemon on {daemon.files.control_socket} is not answering (no reply within 5 s)"
    assert result.returncode == 4  # cannot tell: it runs, but how it is is unknown
    assert json.loads(result.stdout) == {"state": "unknown", "error": error}
    assert result.stderr.splitlines() == [f"edgebell: {error}"]


def test_only_root_and_the_daemons_group_may_ask(daemon: DaemonProcess, tmp_path: Path) -> None:
    sock = daemon.files.control_socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    group = grp.getgrgid(sock.stat().st_gid).gr_name
    # Another user asks with a copy of the config it can read (the test's own is private).
    shared = Path(tempfile.mkdtemp(prefix="eb-cli-"))
    shared.chmod(0o755)
    sock.parent.chmod(0o755)
    config = shared / "config.yaml"
    shutil.copy(daemon.files.config, config)
    config.chmod(0o644)

    # The checkout and its venv may sit in a directory only root can enter (a CI clone in
    # a mktemp dir): give the other user its own readable copy of what `status` imports.
    lib = shared / "lib"
    for module in (edgebell, yaml, platformdirs):
        package = Path(module.__file__ or "").parent
        shutil.copytree(package, lib / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in shared.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)

    def status_as(*who: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # -S: no site-packages (the venv's may be unreadable); the copy comes first instead.
            [*who, sys.executable, "-S", "-m", "edgebell", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(lib)},
        )

    try:
        if os.getuid() == 0:  # as root: ask as nobody, outside and inside the socket's group
            nobody = ("setpriv", "--reuid=65534", "--regid=65534")
            denied = status_as(*nobody, "--clear-groups")
            member = status_as(*nobody, f"--groups={sock.stat().st_gid}")
            assert member.returncode == 0, member.stderr
            assert member.stdout.startswith(f"edgebell {__version__}: HEALTHY")
        else:  # as the socket's owner, only taking the permission away denies it
            sock.chmod(0)
            denied = status_as()
            sock.chmod(0o660)
    finally:
        shutil.rmtree(shared)
    assert denied.returncode == 4  # cannot tell: the daemon may well run (3 would say not)
    assert denied.stderr.splitlines() == [
        f"edgebell: permission denied on {sock}: run as root or as a member of group {group} "
        f"(usermod -aG {group} $USER, then log in again)"
    ]


# -- ring, test-push, check-config ----------------------------------------------------------------


def test_ring_and_test_push_exit_codes(
    daemon: DaemonProcess, apns_standin_thread: StandInThread
) -> None:
    rang = daemon.cli("ring", "front")
    assert rang.returncode == 0
    assert rang.stdout.startswith("rang front (ring ")
    assert daemon.cli("ring", "garage").returncode == 1

    stranger, dead = random_token(), random_token()
    apns_standin_thread.set(token_errors={dead: (400, "BadDeviceToken")})
    pushed = daemon.cli("test-push", "--token", stranger)
    assert pushed.returncode == 0
    assert pushed.stdout.split() == [short_token(stranger), "sandbox", "delivered", "(200)"]
    failed = daemon.cli("test-push", "--token", dead, "--json")
    assert failed.returncode == 1
    [outcome] = json.loads(failed.stdout)
    assert outcome["token"] == short_token(dead)
    assert (outcome["status"], outcome["reason"]) == (400, "BadDeviceToken")
    assert dead not in failed.stdout + failed.stderr


def test_check_config_exit_codes(gateway_files: GatewayFiles) -> None:
    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "edgebell",
                "check-config",
                "--config",
                str(gateway_files.config),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    ok = check()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == f"{gateway_files.config}: OK"
    edit_config(gateway_files, lambda d: d["radio"].update(protocol="morse"))
    bad = check()
    assert bad.returncode == 2
    assert f"{gateway_files.config}:" in bad.stderr
    assert "radio.protocol" in bad.stderr


# -- learn --------------------------------------------------------------------------------------


class Lines:
    """The lines a subprocess prints, read by a thread so the test can wait on them."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def join(self) -> None:
        self._thread.join(5)

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def wait_count(self, needle: str, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(needle in line for line in self._lines) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"{count} x {needle!r} not printed; got:\n" + "\n".join(self._lines)
                    )
                self._changed.wait(left)


def test_learn_prints_each_new_button_once_with_a_snippet_that_works_when_pasted(
    daemon: DaemonProcess,
    gateway_files: GatewayFiles,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    phones: list[str],
) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "edgebell", "learn", "--config", str(gateway_files.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as learn:
        try:
            assert learn.stdout is not None
            out = Lines(learn.stdout)
            out.wait_count("press each new button once")
            assert out.text.startswith(f"listening on {rflink_receiver.path} for buttons not ")
            for n in range(1, 4):  # one press of the gate button: the transmitter repeats
                rflink_receiver.write_line(GATE_FRAME.format(n=n))
            rflink_receiver.write_line(SHED_FRAME.format(n=4))
            out.wait_count("paste under buttons:", 2)
            rflink_receiver.write_line(SHED_FRAME.format(n=5))  # known by now: not shown again
            rflink_receiver.write_line(FRONT_FRAME.format(n=6))  # configured: rings, not shown
            apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
            learn.send_signal(signal.SIGINT)  # Ctrl-C
            assert learn.wait(10) == 0
        finally:
            if learn.poll() is None:
                learn.kill()
        out.join()

    text = out.text
    assert text.count("paste under buttons:") == 2
    assert text.count("20;01;Kaku;ID=41;SWITCH=1;CMD=ON;") == 1
    assert "EV1527" not in text
    snippet = text.split("paste under buttons:\n", 1)[1].split("\n\n", 1)[0]
    assert snippet.splitlines()[-1] == '    match: {protocol: "Kaku", id: "41", switch: "1"}'

    # Pasted under buttons: (with an id of one's choosing), it is a button that rings.
    [button] = yaml.safe_load("buttons:\n" + snippet)["buttons"]
    button.update(id="gate", name="Garden gate")
    edit_config(gateway_files, lambda d: d["buttons"].append(button))
    assert reload(daemon)["config"]["reload_error"] is None
    rflink_receiver.write_line(GATE_FRAME.format(n=7))
    apns_standin_thread.wait_for(lambda s: len(s.received) >= 2 * len(phones), timeout=10)
    buttons = [p.json()["edgebell"]["button"] for p in apns_standin_thread.received()]
    assert buttons.count("gate") == len(phones)


def test_a_request_nested_30000_deep_gets_a_clear_error_and_no_traceback(
    daemon: DaemonProcess,
) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(daemon.files.control_socket))
        s.sendall(b'{"cmd": ' + b"[" * 30_000 + b"]" * 30_000 + b"}\n")
        answer = json.loads(s.makefile("rb").readline())
    assert answer == {"ok": False, "error": "bad request: JSON nested deeper than 32 levels"}
    assert daemon.status()["state"] == "healthy"
    assert "Traceback" not in daemon.log_text()


def test_status_piped_into_head_exits_with_the_verdict_not_a_traceback(
    daemon: DaemonProcess,
) -> None:
    # Issue 10: `edgebell status | head -1` crashed with BrokenPipeError (exit 1: "degraded").
    for args in (("status",), ("status", "--json")):
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgebell", *args, "--config", str(daemon.files.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        proc.stdout.close()  # the reader is gone before anything was written, as head's can be
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert err == b""


def test_status_json_when_the_config_cannot_be_read_is_unknown(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "edgebell", "status", "--json", "--config", str(missing)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 4
    answer = json.loads(result.stdout)
    assert answer["state"] == "unknown"
    assert str(missing) in answer["error"]


def test_test_push_with_no_device_token_is_a_usage_error_that_sends_nothing(
    daemon: DaemonProcess, apns_standin_thread: StandInThread
) -> None:
    # Issue 10: `--token zz` went out as a push and counted as sent and failed.
    before = daemon.status()["apns"]
    for bad in ("zz", "abc", "0x" + random_token()):
        result = daemon.cli("test-push", "--token", bad)
        assert result.returncode == 2
        assert "not a device token" in result.stderr
        assert result.stdout == ""
    # The daemon refuses it too, for any other client of the control socket.
    from edgebell import control

    answer = control.request(daemon.files.control_socket, {"cmd": "test-push", "token": "zz"})
    assert answer == {"ok": False, "error": "token must be hex (16 to 200 digits, even count)"}
    after = daemon.status()["apns"]
    assert (after["sent"], after["failed"]) == (before["sent"], before["failed"])
    assert apns_standin_thread.responses() == []


def test_learn_shows_escapes_in_a_frame_and_never_sends_them_to_the_terminal(
    daemon: DaemonProcess, gateway_files: GatewayFiles, rflink_receiver: FakeReceiver
) -> None:
    # Issue 10: ANSI escapes in a frame cleared and recoloured the installer's terminal.
    hostile = "20;07;Kaku;ID=\x1b[2J\x1b[31m41;SWITCH=\x9b1;CMD=ON;"
    with subprocess.Popen(
        [sys.executable, "-m", "edgebell", "learn", "--config", str(gateway_files.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as learn:
        try:
            assert learn.stdout is not None
            out = Lines(learn.stdout)
            out.wait_count("press each new button once")
            rflink_receiver.write_line(hostile)
            out.wait_count("paste under buttons:")
            learn.send_signal(signal.SIGINT)
            assert learn.wait(10) == 0
        finally:
            if learn.poll() is None:
                learn.kill()
        out.join()
    text = out.text
    assert "20;07;Kaku;ID=\\x1b[2J\\x1b[31m41;SWITCH=\\x9b1;CMD=ON;" in text
    assert not any(ch in text for ch in "\x1b\x9b\r")
    assert "\x1b" not in daemon.log_text()


def _check_config(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgebell", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_check_config_reports_every_error_in_one_run(gateway_files: GatewayFiles) -> None:
    # Issue 10: a config with two errors showed only the first.
    def spoil(data: dict[str, Any]) -> None:
        data["gateway"]["id"] = "bad id!"
        data["apns"]["expiration"] = "soon"
        data["log_level"] = "loud"

    edit_config(gateway_files, spoil)
    result = _check_config(gateway_files.config)
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    assert len(errors) == 3, errors
    lines = gateway_files.config.read_text().splitlines()
    for error, key in zip(errors, ("gateway.id", "apns.expiration", "log_level"), strict=True):
        prefix = f"edgebell: configuration error: {gateway_files.config}:"
        assert error.startswith(prefix), error
        line, _, rest = error[len(prefix) :].partition(": ")
        assert rest.startswith(f"{key}: ")
        assert key.split(".")[-1] in lines[int(line) - 1]  # the line that has the key


def test_check_config_names_a_missing_serial_port_and_bad_files_together(
    gateway_files: GatewayFiles, tmp_path: Path
) -> None:
    # Issue 10: a nonexistent radio.port printed OK.
    missing = tmp_path / "ttyUSB9"
    exposed = tmp_path / "AuthKey.p8"

    def spoil(data: dict[str, Any]) -> None:
        data["radio"]["port"] = str(missing)
        exposed.write_bytes(Path(data["apns"]["auth"]["key_file"]).read_bytes())
        exposed.chmod(0o644)
        data["apns"]["auth"]["key_file"] = str(exposed)

    edit_config(gateway_files, spoil)
    result = _check_config(gateway_files.config)
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    assert len(errors) == 2, errors
    assert "radio.port: " in errors[0]
    assert f"{missing} does not exist: is the receiver plugged in?" in errors[0]
    assert "apns.auth.key_file: " in errors[1]

    exposed.chmod(0o600)
    edit_config(gateway_files, lambda d: d["radio"].update(port="socket://127.0.0.1:7777"))
    url = _check_config(gateway_files.config)
    assert url.returncode == 0, url.stderr
    assert "socket://127.0.0.1:7777 is a pyserial URL: not checked here" in url.stdout
