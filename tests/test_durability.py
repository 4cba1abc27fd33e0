"""Nothing accepted is lost when the daemon is killed or the disk lets it down; status says so.

The daemon runs as a subprocess against the TLS HTTP/2 APNs stand-in and a pty
receiver. Each test refuses Apple's connections while it rings, so nothing is
delivered before the fault: every ring must come back from the disk after a
``kill -9`` and a restart. The full disk is a real 2 MB tmpfs mounted by the test
(it runs as root, as CI does).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fixtures_service import NotifyListener

from edgebell import control
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    BACK_FRAME,
    FRONT_FRAME,
    DaemonProcess,
    GatewayFiles,
    token_auth,
    write_config,
)
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread
from testkit.tally import Tally, record, tally
from testkit.waiting import wait_until

SETTLE_S = 30.0
KILLS = 20


@dataclass
class Rig:
    files: GatewayFiles
    apns: StandInThread
    tokens: list[str]
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[DaemonProcess] = field(default_factory=list)

    def start(self) -> DaemonProcess:
        daemon = DaemonProcess(self.files, env=self.env)
        self.daemons.append(daemon)
        return daemon.start()

    def ring(
        self, daemon: DaemonProcess, button: str = "front"
    ) -> subprocess.CompletedProcess[str]:
        result = daemon.cli("ring", button)
        assert result.returncode == 0, result.stderr
        return result

    def deliver_all(self, rings: int, what: str) -> Tally:
        """Let Apple answer again, restart, and count what each phone got."""
        self.apns.set(refuse=False)
        daemon = self.start()
        try:
            self.apns.wait_for(
                lambda s: tally(what, s.responses, dict.fromkeys(self.tokens, rings)).lost == 0,
                timeout=SETTLE_S,
            )
        except AssertionError:
            result = tally(what, self.apns.responses(), dict.fromkeys(self.tokens, rings))
            raise AssertionError(f"{result.line()}\n{daemon.log_text()[-4000:]}") from None
        return tally(what, self.apns.responses(), dict.fromkeys(self.tokens, rings))


@pytest.fixture
def make_rig(
    tmp_path: Path,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(count: int = 2, *, state_dir: Path | None = None, **env: str) -> Rig:
        tokens = [secrets.token_hex(32) for _ in range(count)]
        overrides: dict[str, Any] = {
            "apns": {"retry_min": "0.1s", "retry_max": "1s", "request_timeout": "1s"},
            "log_level": "info",
        }
        if state_dir is not None:
            overrides["state_dir"] = str(state_dir)
        files = write_config(
            tmp_path,
            port=str(rflink_receiver.path),
            apns_url=apns_standin_thread.url,
            ca_file=pki.ca.cert,
            auth=token_auth(pki.auth_key),
            tokens=tokens,
            overrides=overrides,
        )
        rig = Rig(files, apns_standin_thread, tokens, dict(env))
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for daemon in rig.daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop(signal.SIGKILL)


def state(result: Tally) -> None:
    print(result.line())
    record(result)
    assert result.lost == 0, result.line()
    assert result.unexpected == 0, result.line()


def kill_9(daemon: DaemonProcess) -> None:
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.stop()  # reaps it


def store_problems(status: dict[str, Any]) -> list[str]:
    return [p for p in status["problems"] if "outbox" in p or "disk" in p]


# -- kill -9 right after the acknowledgement ---------------------------------------------------


def test_kill_9_the_moment_edgebell_ring_answers_loses_no_ring(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(20)
    rig.apns.set(refuse=True)
    for _ in range(KILLS):
        daemon = rig.start()
        with subprocess.Popen(
            [sys.executable, "-m", "edgebell", "ring", "front", "--config", str(rig.files.config)],
            stdout=subprocess.PIPE,
            text=True,
        ) as cli:
            assert cli.stdout is not None
            said = cli.stdout.readline()
            kill_9(daemon)  # 0 ms: the moment `edgebell ring` has said "rang"
            assert cli.wait(10) == 0
        assert said.startswith("rang front"), said
    state(rig.deliver_all(KILLS, f"kill -9 0 ms after `edgebell ring` answered, {KILLS} times"))


def _bytes_read(pid: int) -> int:
    """Everything process ``pid`` has read so far (``rchar`` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar for {pid}")


def _cpu_s(pid: int) -> float:
    """Seconds the daemon's main thread (its event loop: the ring path) has run on a CPU."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def _loop_idle(pid: int) -> bool:
    """Whether the event loop is back waiting for the next event (nothing left to run)."""
    return Path(f"/proc/{pid}/task/{pid}/wchan").read_text() == "do_epoll_wait"


def test_kill_9_two_ms_after_a_radio_frame_loses_no_ring(
    make_rig: Callable[..., Rig], rflink_receiver: FakeReceiver
) -> None:
    rig = make_rig(2)
    rig.apns.set(refuse=True)
    later = 0
    for n in range(KILLS):
        daemon = rig.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        daemon.wait_status(lambda s: s["radio"]["connected"])
        # The 1 ms promise is for a warm daemon: one frame of the other button first.
        rflink_receiver.write_line(BACK_FRAME.format(n=n + 1))
        daemon.wait_status(lambda s: any(b["rings"] for b in s["buttons"] if b["id"] == "back"))
        frame = FRONT_FRAME.format(n=n + 1).encode() + b"\r\n"
        before = _bytes_read(pid)
        rflink_receiver.write_line(frame.rstrip())
        written = time.monotonic()
        cpu_at_read: float | None = None
        while True:
            now = time.monotonic()
            if cpu_at_read is None and _bytes_read(pid) >= before + len(frame):
                cpu_at_read = _cpu_s(pid)
            # The fault: kill -9 2 ms after the write. This machine runs other suites beside
            # the daemon, whose CPU on a gateway is its own: when the daemon did not get
            # 1 ms of CPU after reading the frame within those 2 ms (and is still busy
            # with it), the kill waits for that millisecond, as the promise is worded.
            if (
                cpu_at_read is not None
                and now >= written + 0.002
                and (_loop_idle(pid) or _cpu_s(pid) - cpu_at_read >= 0.001)
            ):
                break
            assert now - written < 10, "the daemon never read the frame"
        later += now - written > 0.0025
        kill_9(daemon)
    result = rig.deliver_all(2 * KILLS, f"kill -9 2 ms after a radio frame, {KILLS} times")
    state(
        Tally(
            result.fault,
            result.expected,
            result.delivered,
            result.duplicated,
            result.lost,
            result.unexpected,
            {"kills after 2.5 ms (the machine was busy)": later},
        )
    )


# -- the database deleted or replaced while running ----------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_database_deleted_or_replaced_while_running_then_kill_9(
    make_rig: Callable[..., Rig], how: str
) -> None:
    rig = make_rig(2)
    rig.apns.set(refuse=True)
    daemon = rig.start()
    db = rig.files.state_dir / "outbox.sqlite3"
    old_copy = rig.files.root / "old-outbox.sqlite3"
    shutil.copyfile(db, old_copy)
    for _ in range(3):
        rig.ring(daemon)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        shutil.copyfile(old_copy, rig.files.root / "swap")
        os.replace(rig.files.root / "swap", db)  # an older copy put back over it
    for _ in range(3):
        rig.ring(daemon)
    status = daemon.status()
    assert status["outbox"]["unwritten_rings"] == 0, status
    assert not store_problems(status), status
    assert f"outbox.sqlite3 was {how}" in daemon.log_text()
    kill_9(daemon)
    state(rig.deliver_all(6, f"outbox database {how} while running, 6 rings, kill -9"))


def test_a_database_deleted_while_idle_is_recreated_before_the_next_ring(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(1)
    rig.apns.set(refuse=True)
    daemon = rig.start()
    rig.ring(daemon)
    db = rig.files.state_dir / "outbox.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    # Noticed without a ring: the writer re-creates it from memory within a second or so.
    wait_until(db.exists, 10, "the deleted database re-created")
    daemon.wait_status(lambda s: s["outbox"]["store_ok"] and not store_problems(s))
    kill_9(daemon)
    state(rig.deliver_all(1, "outbox database deleted while idle, kill -9"))


# -- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB file system (tmpfs), mounted for this test and unmounted after it."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system; the file that holds them."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        chunk = b"\0" * 4096
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def test_full_disk_rings_stay_in_memory_until_space_is_back_then_survive_kill_9(
    make_rig: Callable[..., Rig], small_fs: Path
) -> None:
    rig = make_rig(3, state_dir=small_fs / "state")
    rig.apns.set(refuse=True)
    daemon = rig.start()
    filler = fill(small_fs)
    for _i in range(1, 11):
        result = rig.ring(daemon)
        assert "not on disk yet" in result.stderr, result.stderr
        status = daemon.status()
        assert status["state"] == "degraded"
        assert status["outbox"]["unwritten_rings"] >= 1
        [problem] = [p for p in store_problems(status) if "not on disk" in p]
        assert "disk full" in problem, problem
    human = daemon.cli("status")
    assert "not on disk yet" in human.stdout
    filler.unlink()  # space comes back
    status = daemon.wait_status(lambda s: s["outbox"]["unwritten_rings"] == 0)
    assert status["outbox"]["store_ok"], status
    assert not store_problems(status), status
    rig.ring(daemon)
    kill_9(daemon)
    state(rig.deliver_all(11, "full 2 MB disk: 10 rings, space freed, 1 ring, kill -9"))


# -- a corrupt database at start -------------------------------------------------------------------


def corrupt(db: Path) -> None:
    """Damage the database's second page (a table's b-tree) as a failing flash might."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every row in the file itself
    conn.close()
    with db.open("r+b") as f:
        f.seek(4096)
        f.write(secrets.token_bytes(4096))


def start_on_a_corrupt_outbox(
    make_rig: Callable[..., Rig], notify_socket: NotifyListener
) -> tuple[Rig, DaemonProcess]:
    """A daemon started on an outbox that held two queued rings and was then damaged."""
    rig = make_rig(1, **notify_socket.env)
    rig.apns.set(refuse=True)
    daemon = rig.start()
    rig.ring(daemon)
    rig.ring(daemon, "back")
    daemon.stop()  # the rows stay queued in the database, checkpointed into its file
    corrupt(rig.files.state_dir / "outbox.sqlite3")
    return rig, rig.start()


def test_a_corrupt_database_at_start_degrades_status_and_systemd_status_until_restart(
    make_rig: Callable[..., Rig], notify_socket: NotifyListener
) -> None:
    rig, daemon = start_on_a_corrupt_outbox(make_rig, notify_socket)
    status = daemon.status()
    assert status["state"] == "degraded"
    [problem] = [p for p in status["problems"] if "corrupt" in p]
    assert f"moved to {status['outbox']['moved_aside']}" in problem
    assert "rows lost" in problem
    human = daemon.cli("status")
    assert "outbox was corrupt at start" in human.stdout
    assert human.returncode != 0
    notify_socket.wait_for(
        lambda ms: any("outbox was corrupt" in m.fields.get("STATUS", "") for m in ms),
        "STATUS= naming the corrupt outbox",
    )
    daemon.stop()
    again = rig.start()
    assert not [p for p in again.status()["problems"] if "corrupt" in p]


def test_the_operator_acknowledges_a_corrupt_database_without_a_restart(
    make_rig: Callable[..., Rig], notify_socket: NotifyListener
) -> None:
    rig, daemon = start_on_a_corrupt_outbox(make_rig, notify_socket)
    [problem] = [p for p in daemon.status()["problems"] if "corrupt" in p]
    assert problem.endswith("(`edgebell acknowledge` or a restart clears this notice)")
    moved = daemon.status()["outbox"]["moved_aside"]
    done = daemon.cli("acknowledge")
    assert (done.returncode, done.stdout) == (0, f"acknowledged: {problem}\n")
    status = daemon.status()
    assert not [p for p in status["problems"] if "corrupt" in p]
    assert status["outbox"]["moved_aside"] is None
    assert Path(moved).exists()  # the file stays, for whoever wants to look into it
    notify_socket.wait_for(
        lambda ms: (
            "outbox was corrupt" not in [m for m in ms if "STATUS" in m.fields][-1].fields["STATUS"]
        ),
        "STATUS= without the corrupt outbox",
    )
    again = daemon.cli("acknowledge")
    assert (again.returncode, again.stdout) == (0, "nothing to acknowledge\n")
    assert f"acknowledged by the operator: {problem}" in rig.files.log.read_text()


def test_suppressions_survive_an_outbox_found_corrupt(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(2)
    dead = rig.tokens[0]
    rig.apns.set(token_errors={dead: (410, "Unregistered")})
    daemon = rig.start()
    rig.ring(daemon)
    daemon.wait_status(lambda s: s["tokens"]["suppressed"] == 1)
    daemon.stop()
    (rig.files.state_dir / "outbox.sqlite3").write_bytes(b"not a database at all " * 300)
    again = rig.start()
    status = again.status()
    assert status["outbox"]["moved_aside"]
    assert status["tokens"]["suppressed"] == 1  # Apple's verdict is not forgotten
    rig.ring(again)
    rig.apns.wait_for(lambda s: len(s.received) >= 2, timeout=SETTLE_S)
    assert dead not in {p.token for p in rig.apns.received()}


# -- a command the client gave up on ---------------------------------------------------------


def test_a_stalled_daemon_rings_at_most_once_for_a_client_that_timed_out_and_retried(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(2)
    daemon = rig.start()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        gave_up = daemon.cli("ring", "front", "--timeout", "2")
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    assert gave_up.returncode == 1
    assert "not answering" in gave_up.stderr
    assert "will not" in gave_up.stderr  # the user is told it will not ring late
    daemon.wait_status(lambda s: True)
    retried = rig.ring(daemon)  # the user tries again
    assert "rang front" in retried.stdout
    rig.apns.wait_for(lambda s: len(s.received) >= 2, timeout=SETTLE_S)
    status = daemon.status()
    [front] = [b for b in status["buttons"] if b["id"] == "front"]
    assert front["rings"] == 1
    assert len(rig.apns.received()) == 2  # one push per phone: one ring


def test_a_repeated_request_id_is_answered_with_the_first_result_not_run_again(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(1)
    daemon = rig.start()
    request = {"cmd": "ring", "button": "front", "request_id": "retry-1"}
    first = control.request(rig.files.control_socket, request)
    second = control.request(rig.files.control_socket, request)
    assert first["ok"]
    assert second["ok"]
    assert second["ring_id"] == first["ring_id"]
    assert second["repeat"] is True
    [front] = [b for b in daemon.status()["buttons"] if b["id"] == "front"]
    assert front["rings"] == 1
    late = control.request(
        rig.files.control_socket,
        {"cmd": "ring", "button": "front", "deadline": time.monotonic() - 1},
    )
    assert not late["ok"]
    assert "deadline" in late["error"]
    [front] = [b for b in daemon.status()["buttons"] if b["id"] == "front"]
    assert front["rings"] == 1
