"""The service under a real systemd: PID 1 in a container, the unit installed by install.sh.

One container boots for all the checks here (a minimal Debian, ``debootstrap
--variant=minbase``, cached outside the checkout; see ``testkit/nspawn.py``). The
project is installed inside with ``scripts/install.sh``, exactly as on a gateway,
from wheels built on the host (offline inside). The APNs stand-in and the
pseudo-terminal receiver run on the host: the container shares its network
namespace, and the pty is bound in as
``/dev/ttyEB0``. Each test is one check a user would notice; they share the boot.

A test drop-in shortens only the unit's timings (WatchdogSec=, RestartSec=), so the
watchdog check waits seconds, not a minute; every other setting is the shipped unit's.
Where the machine cannot boot a container, every test here fails with the reason.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.fake_receiver import FakeReceiver
from testkit.gateway import BACK_FRAME, FRONT_FRAME, KEY_ID, TEAM_ID, TOPIC, random_token
from testkit.nspawn import (
    Bind,
    CannotBoot,
    Container,
    ensure_rootfs,
    ensure_wheelhouse,
    preflight,
    rootfs_python,
)
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread
from testkit.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
UNIT = "edgebell.service"
CONFIG = "/etc/edgebell/config.yaml"
KEY = "/etc/credstore/edgebell.apns.p8"
PORT = "/dev/ttyEB0"  # the host's pty, bound in
WATCHDOG_SEC = 8  # the test drop-in's (the unit ships 30 s)
TIMINGS = f"""\
# Test drop-in: shorter waits for the watchdog check; nothing else differs from the unit.
[Service]
WatchdogSec={WATCHDOG_SEC}s
RestartSec=1s
"""
DEADLINE = 60.0  # for anything systemd or the daemon should do within seconds


@dataclass
class System:
    """The booted container with edgebell installed, and the host-side peers it talks to."""

    container: Container
    standin: StandInThread
    receiver: FakeReceiver
    config: dict[str, Any]
    frames: int = 0

    def sh(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.container.run(*argv, user=user, timeout=DEADLINE)

    def systemctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.sh("systemctl", *argv)

    def show(self, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", UNIT, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status(self, user: str | None = None) -> tuple[int, dict[str, Any] | None, str]:
        """``edgebell status --json`` inside: exit code, the JSON (if any), stderr."""
        result = self.sh("edgebell", "status", "--json", user=user)
        try:
            data = json.loads(result.stdout)
        except ValueError:
            data = None
        return result.returncode, data, result.stderr

    def journal(self) -> str:
        return self.sh("journalctl", "--unit", UNIT, "--no-pager", "--output=cat").stdout

    def wait(self, check: Callable[[], object], what: str, timeout: float = DEADLINE) -> Any:
        return wait_until(
            check,
            timeout,
            lambda: (
                f"{what}\n{self.systemctl('status', UNIT).stdout}"
                f"\n--- journal ---\n{self.journal()[-3000:]}"
            ),
            interval=0.1,
        )

    def wait_healthy(self) -> dict[str, Any]:
        def healthy() -> dict[str, Any] | None:
            code, data, _ = self.status()
            return data if code == 0 and data is not None else None

        data: dict[str, Any] = self.wait(healthy, "edgebell status healthy")
        return data

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.container.path(CONFIG).write_text(text)

    def press(self, frame: str, button: str) -> dict[str, Any]:
        """A press of ``button`` on the receiver; the push of the ring it makes.

        Matched by a ring id not seen before: a push resent after a restart (allowed:
        at-least-once) must not pass for this press's.
        """
        seen = {p.json()["edgebell"]["ring_id"] for p in self.standin.received()}
        self.frames += 1
        self.receiver.write_line(frame.format(n=self.frames % 256))

        def new_ring(pushes: list[Any]) -> list[dict[str, Any]]:
            decoded = [p.json() for p in pushes]
            return [
                d
                for d in decoded
                if d["edgebell"]["button"] == button and d["edgebell"]["ring_id"] not in seen
            ]

        try:
            self.standin.wait_for(lambda s: new_ring(s.received), timeout=DEADLINE)
        except AssertionError as exc:
            pytest.fail(f"{exc}\n{self.status()}\n--- journal ---\n{self.journal()[-4000:]}")
        return new_ring(self.standin.received())[0]

    def restart_with(self, config: dict[str, Any]) -> None:
        """Put ``config`` in place and restart without waiting for READY (it may never come)."""
        self.write_config(config)
        assert self.systemctl("restart", "--no-block", UNIT).returncode == 0


def _config(standin: StandInThread, token: str) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-systemd"},
        "radio": {
            "port": PORT,
            "protocol": "rflink",
            # One frame per press here, and presses may follow each other closely: each rings.
            "debounce": "0s",
            "cooldown": "0s",
            "reconnect_min": "0.1s",
            "reconnect_max": "1s",
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
            "environment": "sandbox",
            # A bare name: the key reaches the service as a credential from /etc/credstore.
            "auth": {
                "mode": "token",
                "key_file": "edgebell.apns.p8",
                "key_id": KEY_ID,
                "team_id": TEAM_ID,
            },
            "host": standin.url,
            "ca_file": "/etc/edgebell/test-ca.pem",
            "connect_timeout": "5s",
            "request_timeout": "10s",
            "retry_min": "0.2s",
            "retry_max": "2s",
        },
        "tokens": [{"token": token}],
        "state_dir": "/var/lib/edgebell",
        "control_socket": "/run/edgebell/edgebell.sock",
        "log_level": "debug",  # a failed check's journal then shows every frame read
    }


# Module scope: every check that needs the container is here, so it boots once, and it
# is powered off (its pty and memory freed) before the rest of the suite goes on.
@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[System]:
    """One booted container with edgebell installed and running, for all the checks."""
    workdir = tmp_path_factory.mktemp("systemd")
    log = workdir / "build.log"
    try:
        preflight()
        rootfs = ensure_rootfs(log)
        wheels = ensure_wheelhouse(REPO, rootfs_python(rootfs), log)
    except (CannotBoot, OSError) as exc:
        pytest.fail(f"cannot boot the unit under systemd on this machine: {exc}", pytrace=False)
    with (
        FakeReceiver(workdir / "ttyRF", answer_pings=True) as receiver,
        StandInThread.for_pki(pki, topic=TOPIC) as standin,
    ):
        assert receiver.slave_name is not None
        binds = [
            Bind(REPO, "/usr/src/edgebell"),
            Bind(wheels, "/usr/src/wheels"),
            Bind(Path(receiver.slave_name), PORT, read_only=False),
        ]
        container = Container(rootfs, workdir, binds=binds)
        try:
            container.boot()
        except CannotBoot as exc:
            container.shutdown()
            pytest.fail(f"cannot boot the unit under systemd on this machine: {exc}", pytrace=False)
        try:
            system = System(container, standin, receiver, _config(standin, random_token()))
            _install(system, pki)
            yield system
        finally:
            container.shutdown()


def _install(system: System, pki: TestPki) -> None:
    """What an installer does: config and key in place, then scripts/install.sh."""
    c = system.container
    c.path("/etc/edgebell").mkdir(parents=True, exist_ok=True)
    system.write_config(system.config)
    c.path("/etc/edgebell/test-ca.pem").write_bytes(pki.ca.cert.read_bytes())
    c.path("/etc/credstore").mkdir(mode=0o700, exist_ok=True)
    c.path(KEY).write_bytes(pki.auth_key.private_key.read_bytes())
    c.path(KEY).chmod(0o600)
    dropin = c.path(f"/etc/systemd/system/{UNIT}.d/test-timings.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(TIMINGS)
    # As udev would make a USB receiver: root:dialout 0660.
    for command in (("chgrp", "dialout", PORT), ("chmod", "0660", PORT)):
        assert system.sh(*command).returncode == 0
    installed = c.run(
        "/usr/src/edgebell/scripts/install.sh",
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/usr/src/wheels"},
        timeout=900,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "started edgebell.service" in installed.stderr, installed.stderr
    # Support staff in group edgebell, and a user who is not.
    assert (
        system.sh("useradd", "--no-create-home", "--groups", "edgebell", "support").returncode == 0
    )
    assert system.sh("useradd", "--no-create-home", "visitor").returncode == 0


# -- the checks ----------------------------------------------------------------------------------


def test_start_reaches_ready_and_healthy(system: System) -> None:
    shown = system.show("ActiveState", "SubState", "StatusText", "Type", "NRestarts")
    assert shown["Type"] == "notify"
    # A Type=notify unit is "running" only once READY=1 arrived.
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running")
    data = system.wait_healthy()
    assert data["state"] == "healthy"
    assert data["radio"]["connected"] is True
    assert data["radio"]["port"] == PORT
    assert data["apns"]["connected"] is True
    assert system.show("StatusText")["StatusText"].startswith(f"healthy: receiver on {PORT}")


def test_a_frame_on_the_pty_reaches_the_standin(system: System) -> None:
    system.wait_healthy()
    push = system.press(FRONT_FRAME, "front")
    assert push["aps"]["alert"]["body"] == "Someone is at the Front door"


def test_the_watchdog_kills_a_stopped_daemon_and_systemd_restarts_it(system: System) -> None:
    system.wait_healthy()
    before = system.show("MainPID", "NRestarts")
    hang = f"import os, signal; os.kill({before['MainPID']}, signal.SIGSTOP)"
    assert system.sh("python3", "-c", hang).returncode == 0  # hung: the loop stops turning

    def restarted() -> bool:
        now = system.show("MainPID", "NRestarts", "SubState")
        return (
            now["SubState"] == "running"
            and now["MainPID"] not in ("0", before["MainPID"])
            and int(now["NRestarts"]) == int(before["NRestarts"]) + 1
        )

    system.wait(restarted, "a restart after the watchdog fired", timeout=WATCHDOG_SEC + DEADLINE)
    assert f"Watchdog timeout (limit {WATCHDOG_SEC}s)!" in system.journal()
    system.wait_healthy()
    assert system.press(BACK_FRAME, "back")["aps"]["alert"]["body"] == "Someone is at the Back door"


def test_reload_applies_a_new_button_name(system: System) -> None:
    system.wait_healthy()
    system.config["buttons"][0]["name"] = "Main entrance"
    system.write_config(system.config)
    reloaded = system.systemctl("reload", UNIT)
    assert reloaded.returncode == 0, reloaded.stderr
    assert (
        system.press(FRONT_FRAME, "front")["aps"]["alert"]["body"]
        == "Someone is at the Main entrance"
    )


def test_reload_fails_on_a_broken_config_and_the_old_one_keeps_ringing(system: System) -> None:
    system.wait_healthy()
    good = yaml.safe_dump(system.config, sort_keys=False)
    system.write_config(good.replace("cooldown: 0s", "cooldown: half a second"))
    try:
        refused = system.systemctl("reload", UNIT)
        assert refused.returncode != 0  # systemctl reload says it failed, not success
        assert "reload refused, still running the previous configuration" in system.journal()
        assert "radio.cooldown" in system.journal()
        code, data, _ = system.status()
        assert code == 1
        assert data is not None
        assert any("refused at reload" in p for p in data["problems"])
        assert system.show("ActiveState")["ActiveState"] == "active"
        name = system.config["buttons"][0]["name"]
        assert (
            system.press(FRONT_FRAME, "front")["aps"]["alert"]["body"]
            == f"Someone is at the {name}"
        )
    finally:
        system.write_config(good)
        assert system.systemctl("reload", UNIT).returncode == 0
    system.wait_healthy()


def test_stop_exits_0_within_the_drain_budget(
    system: System, capsys: pytest.CaptureFixture[str]
) -> None:
    system.wait_healthy()
    done = f"{UNIT}: Deactivated successfully."
    before = system.journal().count(done)
    stopped = system.systemctl("stop", UNIT)
    try:
        assert stopped.returncode == 0, stopped.stderr
        shown = system.show(
            "Result",
            "ExecMainCode",
            "ExecMainStatus",
            "ActiveState",
            "ActiveExitTimestampMonotonic",
            "InactiveEnterTimestampMonotonic",
        )
        # Exited by itself with 0 (code 1 = CLD_EXITED), not killed at TimeoutStopSec=.
        assert shown["ActiveState"] == "inactive"
        assert shown["Result"] == "success"
        assert (shown["ExecMainCode"], shown["ExecMainStatus"]) == ("1", "0")
        assert system.journal().count(done) == before + 1
        took = (
            int(shown["InactiveEnterTimestampMonotonic"])
            - int(shown["ActiveExitTimestampMonotonic"])
        ) / 1e6
        with capsys.disabled():
            print(f"\nsystemctl stop edgebell: stopped in {took:.2f} s as systemd measured it")
    finally:
        assert system.systemctl("start", UNIT).returncode == 0
    system.wait_healthy()


def test_a_missing_credential_fails_the_start_with_status_2_and_no_restart_loop(
    system: System,
) -> None:
    key = system.container.path(KEY)
    aside = key.with_name("put-aside")
    key.rename(aside)
    try:
        restarts = int(system.show("NRestarts")["NRestarts"])
        assert system.systemctl("restart", UNIT).returncode != 0
        shown = system.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
        # failed, not "activating (auto-restart)": RestartPreventExitStatus=2 holds.
        assert shown["ActiveState"] == "failed"
        assert shown["Result"] == "exit-code"
        assert shown["ExecMainStatus"] == "2"
        assert int(shown["NRestarts"]) == restarts
        journal = system.journal()
        assert "APNs auth key edgebell.apns.p8 not found in: the service's credentials" in journal
        assert "/etc/credstore, /run/credstore, /usr/local/lib/credstore" in journal
    finally:
        aside.rename(key)
        assert system.systemctl("reset-failed", UNIT).returncode == 0
        assert system.systemctl("start", UNIT).returncode == 0
    system.wait_healthy()


def test_the_pty_is_reachable_under_device_policy_closed(system: System) -> None:
    shown = system.show("DevicePolicy", "DeviceAllow")
    assert shown["DevicePolicy"] == "closed"
    data = system.wait_healthy()
    assert data["radio"]["connected"] is True
    assert data["radio"]["port"] == PORT


def _refused(system: System, device: str, major: int, minor: int) -> str:
    """Point the config at a new device node; the receiver error status shows, then undo."""
    if system.sh("test", "-e", device).returncode != 0:
        assert system.sh("mknod", "-m", "0660", device, "c", str(major), str(minor)).returncode == 0
        assert system.sh("chgrp", "dialout", device).returncode == 0
    config = json.loads(json.dumps(system.config))
    config["radio"]["port"] = device
    system.restart_with(config)
    try:

        def error() -> str | None:
            _, data, _ = system.status()
            if data is None or data.get("radio", {}).get("port") != device:
                return None
            return data["radio"]["last_error"]

        message: str = system.wait(error, f"a receiver error for {device}")
        # systemctl status says it too (the daemon is still starting: READY waits 10 s).
        system.wait(
            lambda: "DeviceAllow= does not cover" in system.show("StatusText")["StatusText"],
            "STATUS= naming the device cgroup",
        )
        # Root outside the service opens the node without EPERM: the unit's cgroup refused it.
        probe = system.sh(
            "python3",
            "-c",
            f"import os; os.open({device!r}, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)",
        )
        assert "Operation not permitted" not in probe.stderr
        return message
    finally:
        system.write_config(system.config)
        assert system.systemctl("restart", UNIT).returncode == 0
        system.wait_healthy()


def test_a_device_outside_the_allow_list_is_refused(system: System) -> None:
    message = _refused(system, "/dev/ttyS0", 4, 64)
    assert message == (
        "cannot open /dev/ttyS0: Operation not permitted: the unit's DeviceAllow= does not "
        "cover /dev/ttyS0 (char-ttyS, major 4): add it with a drop-in (systemctl edit "
        "edgebell): DeviceAllow=char-ttyS rw, then systemctl restart edgebell"
    )


def test_a_usb_receiver_whose_driver_came_late_is_named_with_the_fix(system: System) -> None:
    # No usbserial here: char-ttyUSB resolved to nothing when the unit started.
    message = _refused(system, "/dev/ttyUSB0", 188, 0)
    assert message.startswith(
        "cannot open /dev/ttyUSB0: Operation not permitted: the unit's DeviceAllow= does not "
        "cover /dev/ttyUSB0 (char-ttyUSB, major 188): the usbserial driver was not loaded when "
        "the service started; restart the service after the driver is loaded"
    )


def test_status_for_root_and_the_edgebell_group_only(system: System) -> None:
    system.wait_healthy()
    for user in (None, "support"):
        code, data, stderr = system.status(user)
        assert code == 0, (user, stderr)
        assert data is not None
        assert data["state"] == "healthy"
    human = system.sh("edgebell", "status", user="support")
    assert human.returncode == 0
    assert "HEALTHY" in human.stdout
    denied = system.sh("edgebell", "status", user="visitor")
    assert denied.returncode == 4
    assert denied.stderr.strip() == (
        f"edgebell: permission denied: cannot read {CONFIG}; run as root or as a member of "
        "group edgebell (usermod -aG edgebell $USER, then log in again)"
    )


def test_etc_edgebell_is_read_only_to_the_service(system: System) -> None:
    system.wait_healthy()
    pid = system.show("MainPID")["MainPID"]
    # As root, in the service's own mount namespace: only a read-only mount stops root.
    probe = system.sh("nsenter", f"--target={pid}", "--mount", "touch", "/etc/edgebell/probe")
    assert probe.returncode != 0
    assert "Read-only file system" in probe.stderr
    state = system.sh("nsenter", f"--target={pid}", "--mount", "touch", "/var/lib/edgebell/probe")
    assert state.returncode == 0, state.stderr  # the state directory is the service's to write
    system.sh("rm", "-f", "/var/lib/edgebell/probe")


def test_live_security_exposure_stays_ok(system: System) -> None:
    system.wait_healthy()
    analysed = system.sh("systemd-analyze", "security", "--no-pager", UNIT)
    assert analysed.returncode == 0, analysed.stderr
    overall = re.search(
        r"Overall exposure level for edgebell\.service: ([0-9.]+) (\w+)", analysed.stdout
    )
    assert overall is not None, analysed.stdout
    assert float(overall[1]) <= 2.0
    assert overall[2] in ("OK", "SAFE", "PERFECT")
