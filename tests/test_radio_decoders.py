"""The RFLink, rc-switch and lines decoders, alone and behind the line splitter."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebell.radio.decoders import (
    Decoder,
    StreamDecoder,
    default_baudrate,
    make_decoder,
    ping_command,
)
from edgebell.radio.events import BadFrame, Banner, Frame, Notice, Pong, RadioEvent
from edgebell.radio.keys import key_from_match, lines_key, rcswitch_key, rflink_key
from edgebell.radio.rcswitch import MAX_BLOCK_LINES
from edgebell.radio.rflink import Keepalive, PingWatchdog

FIXTURES = Path(__file__).parent / "fixtures"
RFLINK_LINES = (FIXTURES / "rflink-samples.txt").read_text().splitlines()
RCSWITCH_LINES = (FIXTURES / "rcswitch-samples.txt").read_text().splitlines()
RFLINK_WIRE = "".join(f"{line}\r\n" for line in RFLINK_LINES).encode()
RCSWITCH_WIRE = "".join(f"{line}\r\n" for line in RCSWITCH_LINES).encode()

BANNER = "20;00;Nodo RadioFrequencyLink - RFLink Gateway V1.1 - R46;"
EV1527 = "20;77;EV1527;ID=0f7499;SWITCH=04;CMD=ON;"
EV1527_KEY = rflink_key("EV1527", "0f7499", "04")
ADVANCED = (
    "Decimal: 5393 (24Bit) Binary: 000000000001010100010001 Tri-State: 00000FFF0F0F "
    "PulseLength: 320 microseconds Protocol: 1"
)


def decode(protocol: str, *lines: str) -> list[RadioEvent]:
    decoder = make_decoder(protocol)
    return [event for line in lines for event in decoder.feed_line(line)]


def one(protocol: str, line: str) -> RadioEvent:
    events = decode(protocol, line)
    assert len(events) == 1, events
    return events[0]


def kinds(events: list[RadioEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


# -- recorded fixtures -------------------------------------------------------------------


@pytest.mark.parametrize("line", [line for line in RFLINK_LINES if line])
def test_every_rflink_fixture_line_decodes(line: str) -> None:
    assert not isinstance(one("rflink", line), BadFrame)


@pytest.mark.parametrize("line", RCSWITCH_LINES)
def test_no_rcswitch_fixture_line_is_bad(line: str) -> None:
    assert not any(isinstance(e, BadFrame) for e in decode("rcswitch", line))


def test_rflink_fixture_as_a_stream() -> None:
    events = StreamDecoder.for_protocol("rflink").feed(RFLINK_WIRE)
    assert kinds(events) == ["Banner"] + ["Frame"] * 8 + ["Pong", "Notice"]


def test_rcswitch_fixture_as_a_stream() -> None:
    events = StreamDecoder.for_protocol("rcswitch").feed(RCSWITCH_WIRE)
    assert kinds(events) == ["Frame"] * 4
    assert {e.key for e in events if isinstance(e, Frame)} == {rcswitch_key(5393, 24, 1)}


# -- RFLink ------------------------------------------------------------------------------


def test_rflink_frame_identity_and_fields() -> None:
    frame = one("rflink", EV1527)
    assert frame == Frame(
        key=EV1527_KEY,
        match=(("protocol", "EV1527"), ("id", "0f7499"), ("switch", "04")),
        raw=EV1527,
        fields=(("CMD", "ON"),),
    )
    assert frame.key == key_from_match("rflink", {"protocol": "ev1527", "id": "f7499", "switch": 4})


def test_rflink_doorbell_without_switch() -> None:
    frame = one("rflink", "20;AF;SelectPlus;ID=1bb4;CHIME=01;")
    assert isinstance(frame, Frame)
    assert frame.match == (("protocol", "SelectPlus"), ("id", "1bb4"))
    assert frame.key == rflink_key("SelectPlus", "1bb4", None)
    assert dict(frame.key)["switch"] == ""
    assert frame.fields == (("CHIME", "01"),)


def test_rflink_counter_is_not_identity() -> None:
    first = one("rflink", EV1527)
    second = one("rflink", EV1527.replace("20;77;", "20;0A;"))
    assert isinstance(first, Frame)
    assert isinstance(second, Frame)
    assert first.key == second.key


def test_rflink_value_with_equals_sign() -> None:
    frame = one("rflink", "20;04;NewKaku;ID=000007;SWITCH=2;CMD=SET_LEVEL=14;")
    assert isinstance(frame, Frame)
    assert frame.fields == (("CMD", "SET_LEVEL=14"),)
    assert frame.key == key_from_match("rflink", {"protocol": "NewKaku", "id": 7, "switch": 2})


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (BANNER, Banner("Nodo RadioFrequencyLink - RFLink Gateway V1.1 - R46")),
        ("20;00;Nodo RadioFrequencyLink - RFLink Gateway V1.2 - R51;", Banner),
        ("20;99;PONG;", Pong()),
        ("20;D3;OK;", Notice("20;D3;OK;")),
        ("20;01;CMD UNKNOWN;", Notice),
        ("20;02;VER=1.1;REV=46;BUILD=0c;", Notice),
        ("20;03;DEBUG;Pulses=60;Pulses(uSec)=1200,450,1200;", Notice),
        ("20;04;RFDEBUG=ON;", Notice),
        ("11;20;0B;NewKaku;ID=000005;SWITCH=2;CMD=ON;", Notice),
        ("10;PING;", Notice),
        ("  20;D3;OK;  ", Notice),
    ],
)
def test_rflink_messages_that_are_not_buttons(line: str, expected: object) -> None:
    event = one("rflink", line)
    if isinstance(expected, type):
        assert isinstance(event, expected)
    else:
        assert event == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("hello", "not an RFLink line"),
        ("0f7499;SWITCH=04;CMD=ON;", "not an RFLink line"),
        ("20;77;EV1527;ID=0f7499;SWITCH=04;CMD=O", "truncated"),
        ("20;ZZ;EV1527;ID=0f7499;", "counter"),
        ("20;777;EV1527;ID=0f7499;", "counter"),
        ("20;77;", "without a name"),
        ("20;77;;ID=1;", "without a name"),
        ("20;77;EV1527;ID=;SWITCH=04;", "empty ID"),
        ("20;77;EV1527;ID=0f7499;SWITCH=;", "empty SWITCH"),
        ("20;77;EV1527;ID=0f7499;JUNK;", "KEY=VALUE"),
        ("20;77;EV1527;ID=0f7499;=4;", "KEY=VALUE"),
        ("20;77;EV1527;ID=0f7499;ID=0f7400;", "twice"),
    ],
)
def test_rflink_malformed_lines_are_bad_frames(line: str, reason: str) -> None:
    event = one("rflink", line)
    assert isinstance(event, BadFrame)
    assert reason in event.reason
    assert event.raw


def test_rflink_empty_lines_are_ignored() -> None:
    assert decode("rflink", "", "   ") == []


def test_rflink_junk_glued_before_a_frame() -> None:
    events = decode("rflink", "7499;SWITCH=04;CMD=ON;" + EV1527)
    assert kinds(events) == ["BadFrame", "Frame"]
    assert isinstance(events[1], Frame)
    assert events[1].key == EV1527_KEY


def test_rflink_ping_command_and_baudrate() -> None:
    assert ping_command("rflink") == b"10;PING;\r\n"
    assert default_baudrate("rflink") == 57600


# -- RFLink as a byte stream ------------------------------------------------------------


def test_split_reads_at_every_byte_boundary() -> None:
    expected = StreamDecoder.for_protocol("rflink").feed(RFLINK_WIRE)
    for cut in range(len(RFLINK_WIRE) + 1):
        stream = StreamDecoder.for_protocol("rflink")
        events = stream.feed(RFLINK_WIRE[:cut]) + stream.feed(RFLINK_WIRE[cut:])
        assert events == expected, cut


def test_byte_by_byte() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    events = [e for i in range(len(RFLINK_WIRE)) for e in stream.feed(RFLINK_WIRE[i : i + 1])]
    assert events == StreamDecoder.for_protocol("rflink").feed(RFLINK_WIRE)


def test_frame_is_out_as_soon_as_its_cr_arrives() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    assert stream.feed(EV1527.encode()) == []
    assert kinds(stream.feed(b"\r")) == ["Frame"]
    assert stream.feed(b"\n") == []


def test_junk_line_before_a_frame() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    events = stream.feed(b"\x00\x13garbage\r\n" + EV1527.encode() + b"\r\n")
    assert kinds(events) == ["BadFrame", "Frame"]


def test_half_line_after_reconnect_then_frames() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    events = stream.feed(b"CHIME=01;\r\n" + EV1527.encode() + b"\r\n")
    assert kinds(events) == ["BadFrame", "Frame"]


def test_back_to_back_frames_in_one_read() -> None:
    data = (EV1527 + "\r\n" + "20;78;SelectPlus;ID=1bb4;CHIME=01;\r\n" + EV1527 + "\r\n").encode()
    events = StreamDecoder.for_protocol("rflink").feed(data)
    assert kinds(events) == ["Frame"] * 3


def test_over_long_line_then_a_good_frame() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    events = stream.feed(b"20;01;DEBUG;Pulses=" + b"1200," * 200)
    events += stream.feed(b"450;\r\n" + EV1527.encode() + b"\r\n")
    assert kinds(events) == ["BadFrame", "Frame"]
    assert isinstance(events[0], BadFrame)
    assert "over-long" in events[0].reason
    assert stream.buffered == 0


def test_non_utf8_bytes_then_a_good_frame() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    events = stream.feed(b"\xff\xfe\x80 noise\r\n" + EV1527.encode() + b"\r\n")
    assert kinds(events) == ["BadFrame", "Frame"]
    assert isinstance(events[0], BadFrame)
    assert events[0].reason == "not UTF-8"


def test_reboot_banner_mid_stream() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    # The firmware resets half way through a line and starts over with its banner.
    data = f"{EV1527}\r\n20;78;EV15{BANNER}\r\n{EV1527}\r\n".encode()
    events = stream.feed(data)
    assert kinds(events) == ["Frame", "BadFrame", "Banner", "Frame"]
    assert isinstance(events[1], BadFrame)
    assert events[1].raw == "20;78;EV15"


def test_reboot_banner_glued_to_junk() -> None:
    events = StreamDecoder.for_protocol("rflink").feed(f"\x00\x7f{BANNER}\r\n".encode())
    assert kinds(events) == ["BadFrame", "Banner"]


def test_reset_forgets_the_half_line() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    stream.feed(b"20;77;EV1527;ID=0f")
    stream.reset()
    assert kinds(stream.feed(b"7499;SWITCH=04;CMD=ON;\r\n" + EV1527.encode() + b"\r\n")) == [
        "BadFrame",
        "Frame",
    ]


# -- rc-switch ---------------------------------------------------------------------------


def test_rcswitch_simple() -> None:
    frame = one("rcswitch", "Received 5393 / 24bit Protocol: 1")
    assert frame == Frame(
        key=rcswitch_key(5393, 24, 1),
        match=(("value", 5393), ("bits", 24), ("protocol", 1)),
        raw="Received 5393 / 24bit Protocol: 1",
    )
    assert isinstance(frame, Frame)
    assert frame.key == key_from_match("rcswitch", {"value": 5393, "bits": 24, "protocol": 1})


def test_rcswitch_advanced_on_one_line() -> None:
    frame = one("rcswitch", ADVANCED)
    assert isinstance(frame, Frame)
    assert frame.key == rcswitch_key(5393, 24, 1)
    assert frame.match == (("value", 5393), ("bits", 24), ("protocol", 1))
    assert dict(frame.fields) == {
        "binary": "000000000001010100010001",
        "tristate": "00000FFF0F0F",
        "pulse_length": "320",
    }


@pytest.mark.parametrize(
    "lines",
    [
        [
            "Decimal: 5393 (24Bit)",
            "Binary: 000000000001010100010001",
            "Tri-State: 00000FFF0F0F",
            "PulseLength: 320 microseconds",
            "Protocol: 1",
        ],
        [
            "Decimal: 5393 (24Bit) Binary: 000000000001010100010001",
            "Tri-State: 00000FFF0F0F PulseLength: 320 microseconds Protocol: 1",
        ],
        [
            "Decimal: 5393 (",
            "24Bit)",
            "Binary: 000000000001010100010001 Tri-State: not applicable",
            "PulseLength: 320 microseconds Protocol: 1",
        ],
    ],
)
def test_rcswitch_advanced_split_across_lines(lines: list[str]) -> None:
    decoder = make_decoder("rcswitch")
    events: list[RadioEvent] = []
    for line in lines[:-1]:
        events += decoder.feed_line(line)
        assert events == []  # nothing until the block is complete
    events += decoder.feed_line(lines[-1])
    assert kinds(events) == ["Frame"]
    assert isinstance(events[0], Frame)
    assert events[0].key == rcswitch_key(5393, 24, 1)
    # Then the block's tail is ignored, and the decoder is ready for the next.
    assert decode_after(decoder, "Raw data: 9936,320,960,", "", ADVANCED) == ["Frame"]


def decode_after(decoder: Decoder, *lines: str) -> list[str]:
    return kinds([e for line in lines for e in decoder.feed_line(line)])


def test_rcswitch_advanced_block_as_a_split_stream() -> None:
    wire = (
        b"Decimal: 5393 (24Bit)\r\nBinary: 000000000001010100010001\r\nTri-State: 00000FFF0F0F\r\n"
    )
    wire += b"PulseLength: 320 microseconds\r\nProtocol: 1\r\nRaw data: 1,2,3,\r\n\r\n"
    for cut in range(len(wire) + 1):
        stream = StreamDecoder.for_protocol("rcswitch")
        assert kinds(stream.feed(wire[:cut]) + stream.feed(wire[cut:])) == ["Frame"], cut


def test_rcswitch_interrupted_block_is_bad_and_the_next_line_still_decodes() -> None:
    events = decode("rcswitch", "Decimal: 5393 (24Bit)", "Received 5393 / 24bit Protocol: 1")
    assert kinds(events) == ["BadFrame", "Frame"]
    assert isinstance(events[0], BadFrame)
    assert "incomplete" in events[0].reason
    events = decode("rcswitch", "Decimal: 5393 (24Bit)", "", ADVANCED)
    assert kinds(events) == ["BadFrame", "Frame"]


def test_rcswitch_block_is_bounded() -> None:
    decoder = make_decoder("rcswitch")
    events = decoder.feed_line("Decimal: 5393 (24Bit)")
    for _ in range(MAX_BLOCK_LINES - 1):
        events += decoder.feed_line("Binary: 0101")
    assert len(events) == 1
    assert isinstance(events[0], BadFrame)
    assert "without 'Protocol:'" in events[0].reason
    assert decode_after(decoder, ADVANCED) == ["Frame"]


def test_rcswitch_unknown_encoding_prefix() -> None:
    # ReceiveDemo prints "Unknown encoding" without a line end.
    events = decode("rcswitch", "Unknown encodingReceived 5393 / 24bit Protocol: 1")
    assert events[0] == Notice("Unknown encoding")
    assert kinds(events) == ["Notice", "Frame"]
    assert kinds(decode("rcswitch", "Unknown encoding.Raw data: 1,2,3,")) == ["Notice"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("hello", "not an rc-switch line"),
        ("Received -5 / 24bit Protocol: 1", "not an rc-switch line"),
        ("Received 5393 / 24bit", "not an rc-switch line"),
        ("Received 5393 / 0bit Protocol: 1", "bit length"),
        ("Received 5393 / 65bit Protocol: 1", "bit length"),
        ("Received 16777216 / 24bit Protocol: 1", "does not fit"),
        ("Received 5393 / 24bit Protocol: 0", "protocol"),
        (ADVANCED.replace("Binary: 0000", "Binary: 1000"), "does not match"),
        (ADVANCED.replace("320 microseconds", "fast"), "malformed"),
    ],
)
def test_rcswitch_bad_lines(line: str, reason: str) -> None:
    event = one("rcswitch", line)
    assert isinstance(event, BadFrame)
    assert reason in event.reason


def test_rcswitch_defaults() -> None:
    assert default_baudrate("rcswitch") == 9600
    assert ping_command("rcswitch") is None


# -- lines -------------------------------------------------------------------------------


def test_lines_each_trimmed_line_is_a_code() -> None:
    events = decode("lines", "  A1B2 ", "", "   ", "front door")
    assert events == [
        Frame(key=lines_key("A1B2"), match=(("code", "A1B2"),), raw="A1B2"),
        Frame(key=lines_key("front door"), match=(("code", "front door"),), raw="front door"),
    ]
    assert lines_key("A1B2") == key_from_match("lines", {"code": "A1B2"})


def test_lines_control_characters_are_noise() -> None:
    event = one("lines", "A1\x00B2")
    assert isinstance(event, BadFrame)


def test_lines_defaults() -> None:
    assert default_baudrate("lines") == 9600
    assert ping_command("lines") is None


def test_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="unknown receiver protocol"):
        make_decoder("x10")
    with pytest.raises(ValueError, match="unknown receiver protocol"):
        default_baudrate("x10")


# -- the PING watchdog (sans-I/O) --------------------------------------------------------


def test_watchdog_pings_every_interval_while_answered() -> None:
    watchdog = PingWatchdog(interval=10, timeout=3, now=100)
    assert watchdog.poll(100) is Keepalive.WAIT
    assert watchdog.deadline() == 110
    assert watchdog.poll(110) is Keepalive.PING
    assert watchdog.deadline() == 113
    watchdog.alive()
    assert watchdog.poll(113) is Keepalive.WAIT
    assert watchdog.deadline() == 120
    assert watchdog.poll(120) is Keepalive.PING


def test_watchdog_declares_a_silent_receiver_dead() -> None:
    watchdog = PingWatchdog(interval=2, timeout=5, now=0)
    assert watchdog.poll(2) is Keepalive.PING
    assert watchdog.poll(4) is Keepalive.PING  # another ping, same unanswered clock
    assert watchdog.deadline() == 6
    assert watchdog.poll(6.9) is Keepalive.PING
    assert watchdog.poll(7) is Keepalive.DEAD


def test_watchdog_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        PingWatchdog(interval=0, timeout=1, now=0)


# -- properties --------------------------------------------------------------------------

PROTOCOLS = ("rflink", "rcswitch", "lines")
wire_bytes = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.sampled_from([RFLINK_WIRE[:80], RCSWITCH_WIRE[:90], b"\r\n", b"\r", b"\n", b"\xff"]),
    ),
    max_size=40,
)


@settings(max_examples=200)
@given(st.sampled_from(PROTOCOLS), wire_bytes)
def test_arbitrary_bytes_never_raise_and_memory_stays_bounded(
    protocol: str, chunks: list[bytes]
) -> None:
    stream = StreamDecoder.for_protocol(protocol, max_line=64)
    for chunk in chunks:
        for event in stream.feed(chunk):
            assert isinstance(event, Frame | Banner | Pong | Notice | BadFrame)
        assert stream.buffered <= 64


@given(st.sampled_from(PROTOCOLS), st.lists(st.text(max_size=80), max_size=20))
def test_arbitrary_lines_never_raise(protocol: str, lines: list[str]) -> None:
    decoder = make_decoder(protocol)
    for line in lines:
        for event in decoder.feed_line(line):
            if isinstance(event, Frame):
                assert event.key
                assert event.match


@given(st.sampled_from(PROTOCOLS), st.lists(st.integers(0, len(RFLINK_WIRE)), max_size=8))
def test_fixture_streams_split_anywhere(protocol: str, cuts: list[int]) -> None:
    wire = RCSWITCH_WIRE if protocol == "rcswitch" else RFLINK_WIRE
    expected = StreamDecoder.for_protocol(protocol).feed(wire)
    stream = StreamDecoder.for_protocol(protocol)
    bounds = [0, *sorted(c for c in cuts if c <= len(wire)), len(wire)]
    events = [e for a, b in itertools.pairwise(bounds) for e in stream.feed(wire[a:b])]
    assert events == expected


def test_frame_behind_non_utf8_noise_on_the_same_line_rings() -> None:
    # Issue 10: the whole line failed the UTF-8 check, so the junk recovery never ran.
    stream = StreamDecoder.for_protocol("rflink")
    events = stream.feed(b"\xff\xfe\x80" + EV1527.encode() + b"\r\n")
    assert kinds(events) == ["BadFrame", "Frame"]
    assert isinstance(events[0], BadFrame)
    assert events[0].reason == "not UTF-8"
    assert isinstance(events[1], Frame)
    assert events[1].key == EV1527_KEY


def test_noise_with_ascii_junk_then_a_frame() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    events = stream.feed(b"\xc3noise\xe2\x82 7499;" + EV1527.encode() + b"\r\n")
    assert kinds(events) == ["BadFrame", "Frame"]


def test_frame_with_trailing_nul_rings() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    events = stream.feed(EV1527.encode() + b"\x00\r\n" + b"\x00\x00" + EV1527.encode() + b"\r\n")
    assert kinds(events) == ["Frame", "Frame"]


def test_first_frame_after_a_burst_of_noise_rings() -> None:
    stream = StreamDecoder.for_protocol("rflink")
    noise = bytes(range(128, 256)) * 40  # 5 KB with no line end: over-long, then noise
    events = stream.feed(noise + b"\r\n" + b"\x9f\x00" + EV1527.encode() + b"\r\n")
    assert kinds(events)[-1] == "Frame"
    assert all(isinstance(e, BadFrame) for e in events[:-1])
