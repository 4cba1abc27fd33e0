"""The decoder for each receiver protocol, and the byte stream → events pipeline (sans-I/O)."""

from __future__ import annotations

from typing import Protocol

from edgebell.radio import lines, rcswitch, rflink
from edgebell.radio.events import BadFrame, RadioEvent
from edgebell.radio.framing import (
    MAX_LINE,
    LineSplitter,
    OverlongLine,
    overlong_frame,
    recover_text,
)


class Decoder(Protocol):
    """Turns receiver lines (without line ends) into events; never raises on bad input."""

    def feed_line(self, line: str) -> list[RadioEvent]: ...

    def reset(self) -> None:
        """Forget anything gathered from earlier lines (the port was reopened)."""


_DEFAULT_BAUDRATES = {
    "rflink": rflink.DEFAULT_BAUDRATE,
    "rcswitch": rcswitch.DEFAULT_BAUDRATE,
    "lines": lines.DEFAULT_BAUDRATE,
}
_PING_COMMANDS = {"rflink": rflink.PING}


def _check(protocol: str) -> None:
    if protocol not in _DEFAULT_BAUDRATES:
        known = ", ".join(_DEFAULT_BAUDRATES)
        raise ValueError(f"unknown receiver protocol {protocol!r} (expected one of {known})")


def make_decoder(protocol: str) -> Decoder:
    """A fresh decoder for ``rflink``, ``rcswitch`` or ``lines``; ValueError for anything else."""
    _check(protocol)
    if protocol == "rflink":
        return rflink.RFLinkDecoder()
    if protocol == "rcswitch":
        return rcswitch.RCSwitchDecoder()
    return lines.LinesDecoder()


def default_baudrate(protocol: str) -> int:
    """The baud rate the protocol's firmware talks at unless configured otherwise."""
    _check(protocol)
    return _DEFAULT_BAUDRATES[protocol]


def ping_command(protocol: str) -> bytes | None:
    """What to send to check the receiver is alive, or None if its firmware has no such command."""
    _check(protocol)
    return _PING_COMMANDS.get(protocol)


class StreamDecoder:
    """Bytes as read from the port in, events out: splitter, UTF-8 check and decoder together.

    Never raises on any input, and holds at most ``max_line`` bytes of an
    unfinished line.
    """

    __slots__ = ("_decoder", "_splitter")

    def __init__(self, decoder: Decoder, max_line: int = MAX_LINE) -> None:
        self._decoder = decoder
        self._splitter = LineSplitter(max_line)

    @classmethod
    def for_protocol(cls, protocol: str, max_line: int = MAX_LINE) -> StreamDecoder:
        return cls(make_decoder(protocol), max_line)

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished line held so far."""
        return self._splitter.buffered

    def reset(self) -> None:
        """Start afresh: the port was reopened and its first bytes may be half a line."""
        self._splitter.reset()
        self._decoder.reset()

    def feed(self, data: bytes) -> list[RadioEvent]:
        events: list[RadioEvent] = []
        for chunk in self._splitter.feed(data):
            if isinstance(chunk, OverlongLine):
                events.append(overlong_frame(chunk))
                continue
            junk, text = recover_text(chunk.data)
            decoded = self._decoder.feed_line(text) if text else []
            if junk is not None:
                if decoded and isinstance(decoded[0], BadFrame):
                    # The noise and the junk text after it are one bad line, counted once.
                    decoded[0] = BadFrame(junk.raw + decoded[0].raw, junk.reason)
                else:
                    events.append(junk)
            events.extend(decoded)
        return events
