"""sd_notify against a real unix datagram socket: READY, STATUS, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from fixtures_service import NotifyListener

from edgebell.config import load_config
from edgebell.daemon import Daemon
from edgebell.errors import ControlError
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import DaemonProcess, GatewayFiles
from testkit.standin_thread import StandInThread
from testkit.waiting import eventually, wait_until

DEADLINE = 10.0


def keys(listener: NotifyListener) -> list[str]:
    """The assignments received, in order, without the values (``READY``, ``STATUS`` ...)."""
    return [key for m in listener.messages() for key in m.fields]


async def until(condition: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    await eventually(condition, within, f"timed out waiting for {what}")


def wait_answering(daemon: DaemonProcess) -> dict[str, object]:
    """The first status the daemon's control socket gives (it is up before READY)."""

    def answer() -> dict[str, object] | None:
        try:
            return daemon.status()
        except ControlError:
            return None  # not listening yet

    return wait_until(answer, DEADLINE, "the control socket answering")


@pytest.fixture
def started(gateway_files: GatewayFiles, notify_socket: NotifyListener) -> Iterator[DaemonProcess]:
    """``edgebell run`` under a systemd-like environment (notify socket, 1 s watchdog)."""
    env = {**notify_socket.env, "WATCHDOG_USEC": "1000000"}
    daemon = DaemonProcess(gateway_files, env=env)
    try:
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop(signal.SIGKILL)


def test_ready_waits_for_the_receiver_and_apns_then_watchdog_keeps_coming(
    started: DaemonProcess,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    notify_socket: NotifyListener,
) -> None:
    rflink_receiver.unplug()  # the receiver is not plugged in when the service starts
    started.start(wait_ready=False)
    status = wait_answering(started)
    assert status["radio"]["connected"] is False  # type: ignore[index]
    # Start-up says in STATUS= what it waits for, and READY=1 has not been sent.
    starting = notify_socket.wait_key("STATUS")
    assert starting.fields["STATUS"].startswith("starting: receiver not connected on ")
    assert "READY" not in keys(notify_socket)

    rflink_receiver.plug()
    ready = notify_socket.wait_key("READY")
    assert ready.fields["READY"] == "1"
    assert ready.fields["STATUS"].startswith("healthy: receiver on ")
    assert apns_standin_thread.call(lambda s: s.connections) == 1  # warmed before READY
    assert started.status()["radio"]["connected"] is True

    # WATCHDOG=1 at half of WatchdogSec= (here every 0.5 s), for as long as the daemon runs.
    notify_socket.wait_key("WATCHDOG", count=4)
    assert all(m.fields["WATCHDOG"] == "1" for m in notify_socket.messages("WATCHDOG"))


def test_sighup_is_announced_as_reloading_then_ready(
    started: DaemonProcess, notify_socket: NotifyListener
) -> None:
    started.start()
    notify_socket.wait_key("READY")
    assert started.proc is not None
    started.proc.send_signal(signal.SIGHUP)
    reloading = notify_socket.wait_key("RELOADING")
    # MONOTONIC_USEC: when the reload began, on the clock systemd uses to order events.
    assert 0 < int(reloading.fields["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
    notify_socket.wait_key("READY", count=2)
    order = [k for k in keys(notify_socket) if k in ("READY", "RELOADING")]
    assert order == ["READY", "RELOADING", "READY"]


def test_sigterm_sends_stopping_and_exits_0(
    started: DaemonProcess, notify_socket: NotifyListener
) -> None:
    started.start()
    notify_socket.wait_key("READY")
    assert started.stop(signal.SIGTERM) == 0
    stopping = notify_socket.wait_key("STOPPING")
    assert stopping.fields["STATUS"] == "draining in-flight pushes"
    assert keys(notify_socket).index("STOPPING") > keys(notify_socket).index("READY")


# -- in-process: the daemon's event loop is this test's loop, so the test can block it ---------


@pytest.mark.asyncio
async def test_watchdog_stops_while_the_event_loop_is_blocked_and_resumes_after(
    gateway_files: GatewayFiles, rflink_receiver: FakeReceiver, notify_socket: NotifyListener
) -> None:
    env = {**notify_socket.env, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    daemon = Daemon(load_config(gateway_files.config), environ=env)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: notify_socket.count("READY") == 1, "READY")
        await until(lambda: notify_socket.count("WATCHDOG") >= 5, "a steady watchdog")

        before = notify_socket.count("WATCHDOG")
        time.sleep(1.0)  # noqa: ASYNC251 - a hung event loop is the fault under test
        during = notify_socket.count("WATCHDOG") - before
        # Ten pings were due at 0.1 s each; at most one sent just before the block is late.
        assert during <= 1

        await until(lambda: notify_socket.count("WATCHDOG") >= before + during + 3, "resumption")
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 15) == 0


@pytest.mark.asyncio
async def test_ready_comes_degraded_when_the_receiver_stays_away(
    gateway_files: GatewayFiles, rflink_receiver: FakeReceiver, notify_socket: NotifyListener
) -> None:
    rflink_receiver.unplug()
    env = {**notify_socket.env, "WATCHDOG_USEC": "200000"}
    # A gateway whose receiver is unplugged must still come up: pushes from `edgebell ring`
    # and the cloud work, status tells the truth, and the receiver is picked up when it comes.
    daemon = Daemon(load_config(gateway_files.config), environ=env, ready_grace=0.3)
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: notify_socket.count("READY") == 1, "READY")
        ready = notify_socket.messages("READY")[0]
        assert ready.fields["STATUS"].startswith("degraded: receiver not connected on ")
        assert not daemon.status().healthy

        rflink_receiver.plug()
        await until(
            lambda: notify_socket.messages("STATUS")[-1].fields["STATUS"].startswith("healthy"),
            "STATUS= to turn healthy",
        )
        assert notify_socket.count("READY") == 1  # READY=1 is said once
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 15) == 0


def test_a_token_written_as_a_yaml_key_stays_short_in_every_error_path(
    started: DaemonProcess,
    gateway_files: GatewayFiles,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    notify_socket: NotifyListener,
) -> None:
    # Issue 10: `- 8b3c…c4d5: sandbox` showed the whole token in check-config and run errors,
    # the status warning, status --json (config.reload_error) and STATUS= (world-readable).
    import json
    import subprocess
    import sys

    import yaml

    token = os.urandom(32).hex()
    good = gateway_files.config.read_text()
    data = yaml.safe_load(good)
    data["tokens"] = [{token: "sandbox"}]
    bad = yaml.safe_dump(data, sort_keys=False)

    started.start()
    gateway_files.config.write_text(bad)
    assert started.proc is not None
    started.proc.send_signal(signal.SIGHUP)
    notify_socket.wait_for(
        lambda ms: any("refused at reload" in m.fields.get("STATUS", "") for m in ms),
        "STATUS= naming the refused reload",
    )
    outputs = [m.fields.get("STATUS", "") for m in notify_socket.messages()]
    outputs.append(json.dumps(started.status()))
    for command in (("status",), ("status", "--json"), ("check-config",)):
        result = started.cli(*command)
        outputs += [result.stdout, result.stderr]
    run = subprocess.run(
        [sys.executable, "-m", "edgebell", "run", "--config", str(gateway_files.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    outputs += [run.stdout, run.stderr, started.log_text()]
    assert any(f"{token[:8]}…" in text for text in outputs)
    for text in outputs:
        assert token not in text
        assert token[8:24] not in text
    gateway_files.config.write_text(good)
