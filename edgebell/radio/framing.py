"""Receiver output framing: bytes into bounded lines, and lines into text (sans-I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgebell.radio.events import BadFrame

MAX_LINE = 512  # bytes before a newline; receivers print far less, so more is noise
SAMPLE_BYTES = 64  # how much of a rejected line we keep for logs and status

_EOL = re.compile(rb"[\r\n]")
_CR = 0x0D
_LF = 0x0A


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line, without its line end."""

    data: bytes


@dataclass(frozen=True, slots=True)
class OverlongLine:
    """A line that grew past the cap; ``head`` is its start, the rest was discarded."""

    head: bytes
    limit: int


Chunk = Line | OverlongLine


class LineSplitter:
    """Splits a byte stream on LF, CR LF and bare CR, never holding more than ``max_line`` bytes.

    A bare CR ends a line at once (no waiting to see whether LF follows, so a frame
    is delivered as soon as its CR arrives); an LF straight after it, even in the
    next read, is then swallowed rather than read as an empty line.
    """

    __slots__ = ("_buffer", "_discarding", "_max_line", "_skip_lf")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self._max_line = max_line
        self._buffer = bytearray()
        self._discarding = False
        self._skip_lf = False

    @property
    def max_line(self) -> int:
        return self._max_line

    @property
    def buffered(self) -> int:
        """Bytes held for the unfinished line (never more than ``max_line``)."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget the unfinished line: after a reconnect the first bytes are half a line."""
        self._buffer.clear()
        self._discarding = False
        self._skip_lf = False

    def feed(self, data: bytes) -> list[Chunk]:
        """Add received bytes; returns the lines they complete, in order."""
        out: list[Chunk] = []
        start = 0
        end = len(data)
        if self._skip_lf and end:
            self._skip_lf = False
            if data[0] == _LF:
                start = 1
        while start < end:
            eol = _EOL.search(data, start)
            stop = end if eol is None else eol.start()
            self._take(data, start, stop, out)
            if eol is None:
                break
            if self._discarding:
                # The over-long line was reported when it crossed the cap.
                self._discarding = False
            else:
                out.append(Line(bytes(self._buffer)))
            self._buffer.clear()
            start = stop + 1
            if data[stop] == _CR:
                if start < end:
                    if data[start] == _LF:
                        start += 1
                else:
                    self._skip_lf = True
        return out

    def _take(self, data: bytes, start: int, stop: int, out: list[Chunk]) -> None:
        if self._discarding or start == stop:
            return
        room = self._max_line - len(self._buffer)
        if stop - start <= room:
            self._buffer += data[start:stop]
            return
        head = bytes(self._buffer[:SAMPLE_BYTES])
        if len(head) < SAMPLE_BYTES:
            head += data[start : start + SAMPLE_BYTES - len(head)]
        out.append(OverlongLine(head, self._max_line))
        self._buffer.clear()
        self._discarding = True


def decode_line(data: bytes) -> str | BadFrame:
    """The line as text, or a BadFrame when it is not UTF-8 (never an exception)."""
    junk, text = recover_text(data)
    return text if junk is None else junk


def recover_text(data: bytes) -> tuple[BadFrame | None, str]:
    """The UTF-8 text that ends the line, and a BadFrame for any undecodable bytes before it.

    Noise from a receiver that just opened, or from a burst of interference, arrives
    glued to the front of the next frame; the frame behind it must still ring, so the
    line is cut after its last undecodable byte and the rest is decoded on its own.
    NUL bytes padding either end (a line break condition, a resetting microcontroller)
    are not part of any frame and are dropped.
    """
    data = data.strip(b"\x00")
    start = 0
    while True:
        try:
            text = data[start:].decode("utf-8")
        except UnicodeDecodeError as exc:
            start += exc.end  # past the bad bytes; at most MAX_LINE rounds
            continue
        if start == 0:
            return None, text
        return BadFrame(sample(data[:start]), "not UTF-8"), text


def sample(data: bytes) -> str:
    """A short, printable rendering of raw bytes for a BadFrame."""
    text = data[:SAMPLE_BYTES].decode("utf-8", "backslashreplace")
    return text + ("…" if len(data) > SAMPLE_BYTES else "")


def overlong_frame(chunk: OverlongLine) -> BadFrame:
    """The BadFrame that reports an over-long line."""
    return BadFrame(sample(chunk.head) + "…", f"over-long line (more than {chunk.limit} bytes)")
