"""The daemon's log: journald-friendly under systemd, levels from the config, no secrets ever."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fixtures_service import edit_config, reload

from edgebell.logs import setup_logging, shutdown_logging, writes_to_journal
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import FRONT_FRAME, DaemonProcess, GatewayFiles, random_token
from testkit.standin_thread import StandInThread

JOURNAL_LINE = re.compile(r"<[0-7]>[a-z_.]+: ")


def journal_stream_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger back as pytest had it after a test that calls setup_logging()."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_under_journald_lines_carry_a_priority_and_no_timestamp(
    gateway_files: GatewayFiles, rflink_receiver: FakeReceiver, apns_standin_thread: StandInThread
) -> None:
    edit_config(gateway_files, lambda d: d.update(log_level="info"))
    gateway_files.log.touch()  # the daemon's stderr: journald's stream, as systemd sets it up
    env = {"JOURNAL_STREAM": journal_stream_of(gateway_files.log)}
    with DaemonProcess(gateway_files, env=env) as daemon:
        rflink_receiver.write_line(FRONT_FRAME.format(n=1))
        apns_standin_thread.wait_for(lambda s: len(s.received) >= 3, timeout=10)
        daemon.wait_status(lambda s: s["outbox"]["pending"] == 0)
        assert daemon.stop() == 0
    lines = [line for line in daemon.log_text().splitlines() if line]
    assert lines
    assert all(JOURNAL_LINE.match(line) for line in lines), lines
    assert "<6>edgebell.ringpath: ring " in daemon.log_text()
    assert not any(line.startswith("<7>") for line in lines)  # log_level: info


def test_an_inherited_journal_stream_that_is_not_stderr_keeps_timestamps(tmp_path: Path) -> None:
    own = tmp_path / "stderr.log"
    other = tmp_path / "journal"
    other.touch()
    with own.open("w") as stream:
        assert writes_to_journal(stream, {"JOURNAL_STREAM": journal_stream_of(own)})
        # A shell started from a service inherits the variable with its stderr elsewhere.
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": journal_stream_of(other)})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not writes_to_journal(stream, {})
    assert not writes_to_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_a_traceback_keeps_its_priority_on_every_line(tmp_path: Path, root_logging: None) -> None:
    path = tmp_path / "stderr.log"
    with path.open("w") as stream:
        setup_logging("info", {"JOURNAL_STREAM": journal_stream_of(path)}, stream=stream)
        token = random_token()
        try:
            raise ValueError(f"push to {token} failed")
        except ValueError:
            logging.getLogger("edgebell.test").exception("it went wrong")
        shutdown_logging()  # the records are written by a thread: let it finish
    lines = path.read_text().splitlines()
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines), lines
    assert token not in path.read_text()


def test_a_full_run_logs_no_device_token_key_or_jwt(
    gateway_files: GatewayFiles,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    phones: list[str],
) -> None:
    key_file = Path(yaml.safe_load(gateway_files.config.read_text())["apns"]["auth"]["key_file"])
    key_lines = [
        line for line in key_file.read_text().splitlines() if line and "PRIVATE KEY" not in line
    ]
    apns_standin_thread.set(token_errors={phones[0]: (410, "Unregistered")})
    outputs = []
    with DaemonProcess(gateway_files) as daemon:  # log_level: debug, h2 and all
        rflink_receiver.write_line(FRONT_FRAME.format(n=1))
        apns_standin_thread.wait_for(lambda s: len(s.responses) >= 3, timeout=10)
        daemon.wait_status(lambda s: s["outbox"]["pending"] == 0)
        for args in (("status",), ("status", "--json"), ("test-push",), ("ring", "back")):
            result = daemon.cli(*args)
            outputs.append(result.stdout + result.stderr)
        edit_config(gateway_files, lambda d: d.update(tokens=d["tokens"] + [random_token(64)]))
        reload(daemon)
        assert daemon.stop() == 0
    text = daemon.log_text() + "\n".join(outputs)
    assert "ring " in text
    assert phones[0][:8] + "…" in text  # the dead token is reported, shortened
    for token in phones:
        assert token[:16] not in text
    for line in key_lines:
        assert line not in text
    assert "PRIVATE KEY" not in text
    assert "eyJ" not in text  # every JWT starts so (its header is base64 JSON)


def test_control_characters_from_outside_never_reach_a_log_line(root_logging: None) -> None:
    # Issue 10: 50,000 firmware banners made 50,000 INFO lines with raw escape bytes.
    stream = io.StringIO()
    setup_logging("info", {}, stream=stream, background=False)
    banner = "Nodo RFLink Gateway\x1b[2J\x1b]0;owned\x07\nFAKE 12:00 INFO edgebell: forged line"
    logging.getLogger("edgebell.daemon").info("receiver announced itself: %s", banner)
    try:
        raise ValueError("bad \x1b[31m frame")
    except ValueError:
        logging.getLogger("edgebell.test").exception("failed on %s", "\x9b")
    text = stream.getvalue()
    assert not any(ch in text for ch in "\x1b\x07\x9b\r")
    first = text.splitlines()[0]
    assert first.endswith(
        "Gateway\\x1b[2J\\x1b]0;owned\\x07\\x0aFAKE 12:00 INFO edgebell: forged line"
    )
    assert "bad \\x1b[31m frame" in text


def test_a_banner_loop_makes_a_bounded_number_of_log_lines(
    gateway_files: GatewayFiles, rflink_receiver: FakeReceiver, apns_standin_thread: StandInThread
) -> None:
    # Issue 10: 50,000 firmware banner lines made 50,000 INFO lines.
    from edgebell.logqueue import BURST

    with DaemonProcess(gateway_files) as daemon:
        banner = b"20;00;Nodo RadioFrequencyLink - RFLink Gateway V1.1 - R46\x1b[2J;\r\n"
        for _ in range(10):
            rflink_receiver.write(banner * 500)
        rflink_receiver.write_line(FRONT_FRAME.format(n=1))
        apns_standin_thread.wait_for(lambda s: len(s.received) >= 3, timeout=20)
        held = daemon.status()["logs"]
        assert held["repeats_held_back"] >= 5_000 - BURST  # counted, and status says so
        assert held["dropped"] == 0
        assert "repeated lines held back" in daemon.cli("status").stdout
        assert daemon.stop() == 0
    announced = [ln for ln in daemon.log_text().splitlines() if "receiver announced itself" in ln]
    assert 1 <= len(announced) <= BURST
    assert "\x1b" not in daemon.log_text()
