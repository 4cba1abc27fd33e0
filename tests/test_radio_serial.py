"""The serial receiver on real ptys and sockets: events, unplug/replug, PING, exclusivity."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from fixtures_radio import DEADLINE, Recorder, make_receiver, running, wait_until

from edgebell.backoff import Backoff
from edgebell.errors import RadioError
from edgebell.radio.events import Banner, Pong, RadioEvent
from edgebell.radio.serial import RadioStatus, SerialPort, SerialReceiver, open_port
from testkit.fake_receiver import FakeReceiver

EV1527 = "20;77;EV1527;ID=0f7499;SWITCH=04;CMD=ON;"
SELECTPLUS = "20;78;SelectPlus;ID=1bb4;CHIME=01;"
BANNER = "20;00;Nodo RadioFrequencyLink - RFLink Gateway V1.1 - R46;"
LOGGER = "edgebell.radio.serial"


@pytest.mark.asyncio
async def test_frames_written_to_the_pty_arrive_as_events(fake_receiver: FakeReceiver) -> None:
    recorder = Recorder()
    receiver = make_receiver(
        fake_receiver.path, "rflink", recorder, wall_clock=lambda: 1_700_000_000.5
    )
    assert receiver.status().connected is False
    async with running(receiver):
        await asyncio.to_thread(fake_receiver.wait_opened, DEADLINE)
        assert fake_receiver.peer_open
        fake_receiver.write_line(EV1527)
        fake_receiver.write(b"garbage \xff\r\n" + SELECTPLUS.encode() + b"\r\n")
        # A firmware reset in mid-stream is just a banner: the port stays open.
        fake_receiver.write_line(BANNER)
        fake_receiver.write_line(EV1527)
        await recorder.wait_frames(3)
        await recorder.wait_for(Banner)
        status = receiver.status()
    assert status == RadioStatus(
        connected=True,
        port=str(fake_receiver.path),
        last_frame_at=1_700_000_000.5,
        frames=3,
        bad_frames=1,
        reconnects=0,
        last_error=None,
    )
    assert [type(e).__name__ for e in recorder.events] == [
        "Frame",
        "BadFrame",
        "Frame",
        "Banner",
        "Frame",
    ]
    assert recorder.frames[0].match == (("protocol", "EV1527"), ("id", "0f7499"), ("switch", "04"))
    assert receiver.status().connected is False


@pytest.mark.asyncio
async def test_unplug_and_replug(fake_receiver: FakeReceiver) -> None:
    recorder = Recorder()
    receiver = make_receiver(fake_receiver.path, "rflink", recorder)
    async with running(receiver):
        fake_receiver.write_line(EV1527)
        await recorder.wait_frames(1)

        fake_receiver.unplug()
        await wait_until(lambda: not receiver.status().connected, "the receiver to notice")
        # While it is out the reopen keeps failing: the link is gone.
        await wait_until(
            lambda: "No such file" in (receiver.status().last_error or ""), "an open failure"
        )
        assert receiver.status().reconnects == 0

        fake_receiver.plug()
        await wait_until(lambda: receiver.status().connected, "the reconnect")
        assert receiver.status().reconnects == 1
        fake_receiver.write_line(SELECTPLUS)
        frames = await recorder.wait_frames(2)
        assert frames[1].match == (("protocol", "SelectPlus"), ("id", "1bb4"))

        # And once more: every unplug is survived.
        fake_receiver.replug()
        await wait_until(lambda: receiver.status().reconnects == 2, "the second reconnect")
        await wait_until(lambda: receiver.status().connected, "connected again")
        fake_receiver.write_line(EV1527)
        await recorder.wait_frames(3)
    assert receiver.status().frames == 3


@pytest.mark.asyncio
async def test_rflink_ping_answered_keeps_it_connected_and_silence_reopens(
    rflink_receiver: FakeReceiver,
) -> None:
    recorder = Recorder()
    receiver = make_receiver(
        rflink_receiver.path, "rflink", recorder, ping_interval=0.05, ping_timeout=1.0
    )
    async with running(receiver):
        await recorder.wait_for(Pong, count=4)
        assert rflink_receiver.pings >= 4
        assert receiver.status().reconnects == 0
        assert receiver.status().connected

        rflink_receiver.answer_pings = False
        await wait_until(lambda: receiver.status().reconnects >= 1, "a reopen after silence")
        assert "no answer to PING" in (receiver.status().last_error or "")

        rflink_receiver.answer_pings = True
        pongs = sum(isinstance(e, Pong) for e in recorder.events)
        await recorder.wait_for(Pong, count=pongs + 2)
        assert receiver.status().connected
    assert all(line == b"10;PING;" for line in rflink_receiver.received)


@pytest.mark.asyncio
async def test_any_wellformed_line_answers_a_ping(fake_receiver: FakeReceiver) -> None:
    # An Arduino that reset on open misses the first ping, then prints its banner.
    recorder = Recorder()
    receiver = make_receiver(
        fake_receiver.path, "rflink", recorder, ping_interval=0.05, ping_timeout=1.0
    )
    async with running(receiver):
        await asyncio.to_thread(fake_receiver.wait_pings, 1, DEADLINE)
        fake_receiver.write_line(BANNER)
        await recorder.wait_for(Banner)
        assert receiver.status().reconnects == 0


@pytest.mark.asyncio
async def test_port_is_opened_exclusively(fake_receiver: FakeReceiver) -> None:
    first = make_receiver(fake_receiver.path, "lines", Recorder())
    second = make_receiver(fake_receiver.path, "lines", Recorder())
    async with running(first), running(second, connect=False):
        await wait_until(lambda: second.status().last_error is not None, "the refusal")
        assert "in use" in (second.status().last_error or "")
        assert not second.status().connected
        assert first.status().connected


@pytest.mark.asyncio
async def test_cancelling_closes_the_port(fake_receiver: FakeReceiver) -> None:
    receiver = make_receiver(fake_receiver.path, "lines", Recorder())
    async with running(receiver):
        await asyncio.to_thread(fake_receiver.wait_opened, DEADLINE)
    await asyncio.to_thread(fake_receiver.wait_closed, DEADLINE)
    # The exclusive lock went with it: another reader can open the port now.
    recorder = Recorder()
    async with running(make_receiver(fake_receiver.path, "lines", recorder)):
        fake_receiver.write_line("A1B2")
        await recorder.wait_frames(1)


@pytest.mark.asyncio
async def test_open_failures_log_once_then_it_connects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    recorder = Recorder()
    with FakeReceiver(tmp_path / "ttyRF") as rx:
        rx.unplug()  # not there yet when the daemon starts
        receiver = make_receiver(rx.path, "lines", recorder)
        async with running(receiver, connect=False):

            def retries() -> int:
                return sum("retrying" in r.getMessage() for r in caplog.records)

            await wait_until(lambda: retries() >= 3, "three failed attempts")
            assert not receiver.status().connected
            rx.plug()
            await asyncio.wait_for(receiver.wait_connected(), DEADLINE)
            rx.write_line("A1B2")
            await recorder.wait_frames(1)
    ours = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelname for r in ours if r.levelno >= logging.WARNING] == ["WARNING"]
    retry_levels = [r.levelname for r in ours if "retrying" in r.getMessage()]
    assert retry_levels[0] == "WARNING"
    assert set(retry_levels[1:]) == {"DEBUG"}
    connected = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert len(connected) == 1
    assert "failed attempt" in connected[0]
    assert receiver.status().reconnects == 0  # the first connection is not a reconnect


@pytest.mark.asyncio
async def test_disconnect_is_logged_with_its_reason(
    fake_receiver: FakeReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    receiver = make_receiver(fake_receiver.path, "lines", Recorder())
    async with running(receiver):
        fake_receiver.replug()
        await wait_until(lambda: receiver.status().reconnects == 1, "the reconnect")
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("disconnected" in m and "reopening" in m for m in messages), messages
    assert any("reconnected" in m for m in messages), messages


@pytest.mark.asyncio
async def test_a_failing_handler_does_not_stop_the_reader(
    fake_receiver: FakeReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[RadioEvent] = []

    def handler(event: RadioEvent) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("boom")

    receiver = SerialReceiver(
        str(fake_receiver.path), "lines", 9600, handler, backoff_min=0.05, backoff_max=0.2
    )
    async with running(receiver):
        fake_receiver.write(b"one\r\ntwo\r\n")
        await wait_until(lambda: len(seen) == 2, "both codes")
        fake_receiver.write_line("three")
        await wait_until(lambda: len(seen) == 3, "the third code")
        assert receiver.status().reconnects == 0
    assert any("handler failed" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_socket_url_to_a_local_server() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the receiver goes away
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    recorder = Recorder()
    receiver = make_receiver(f"socket://127.0.0.1:{port}", "rflink", recorder)
    try:
        async with running(receiver):
            await wait_until(lambda: len(writers) == 1, "the connection")
            writers[0].write(f"{EV1527}\r\n".encode())
            await recorder.wait_frames(1)

            # The server hanging up is an unplug too.
            writers[0].close()
            await wait_until(lambda: receiver.status().reconnects == 1, "the reconnect")
            await wait_until(lambda: len(writers) == 2, "the second connection")
            writers[1].write(f"{SELECTPLUS}\r\n".encode())
            frames = await recorder.wait_frames(2)
        assert frames[1].key == (("protocol", "selectplus"), ("id", "1bb4"), ("switch", ""))
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_ports_without_a_file_descriptor_are_read_by_a_thread() -> None:
    opened: list[SerialPort] = []

    def opener(port: str, baudrate: int) -> SerialPort:
        opened.append(open_port(port, baudrate))
        return opened[-1]

    recorder = Recorder()
    receiver = make_receiver("loop://", "lines", recorder, opener=opener)
    async with running(receiver):
        with pytest.raises(OSError, match="fileno"):
            opened[0].fileno()
        opened[0].write(b"A1B2\r\nC3")
        opened[0].write(b"D4\r\n")
        frames = await recorder.wait_frames(2)
        assert [f.match for f in frames] == [(("code", "A1B2"),), (("code", "C3D4"),)]

        opened[0].close()  # a read error in the thread is a lost port as well
        await wait_until(lambda: receiver.status().reconnects == 1, "the reconnect")
        opened[1].write(b"E5\r\n")
        await recorder.wait_frames(3)


@pytest.mark.asyncio
async def test_wait_connected_and_single_run(fake_receiver: FakeReceiver) -> None:
    receiver = make_receiver(fake_receiver.path, "lines", Recorder())
    async with running(receiver):
        await receiver.wait_connected()  # returns at once when connected
        with pytest.raises(RuntimeError, match="already running"):
            await receiver.run()


def test_open_port_failure_is_a_radio_error(tmp_path: Path) -> None:
    with pytest.raises(RadioError, match="No such file or directory") as caught:
        open_port(str(tmp_path / "nothing"), 9600)
    assert caught.value.__cause__ is not None


def test_receiver_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="unknown receiver protocol"):
        SerialReceiver("/dev/null", "x10", 9600, Recorder())
    with pytest.raises(ValueError, match="backoff"):
        SerialReceiver("/dev/null", "lines", 9600, Recorder(), backoff_min=2, backoff_max=1)
    with pytest.raises(ValueError, match="positive"):
        SerialReceiver("/dev/null", "rflink", 9600, Recorder(), ping_interval=1, ping_timeout=0)
    # Protocols without a ping command ignore the interval.
    SerialReceiver("/dev/null", "lines", 9600, Recorder(), ping_interval=1, ping_timeout=0)


# -- backoff (sans-I/O) ------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum() -> None:
    highest = Backoff(0.5, 4.0, lambda: 1.0)
    assert [highest.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    lowest = Backoff(0.5, 4.0, lambda: 0.0)
    assert [lowest.next() for _ in range(6)] == [0.5, 0.5, 1.0, 2.0, 2.0, 2.0]
    lowest.reset()
    assert lowest.next() == 0.5


def test_backoff_stays_in_bounds_forever() -> None:
    backoff = Backoff(0.1, 30.0, lambda: 0.999)
    delays = [backoff.next() for _ in range(2000)]
    assert all(0.1 <= d <= 30.0 for d in delays)


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(0, 1, lambda: 0.5)
