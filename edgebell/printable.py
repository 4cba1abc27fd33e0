"""Text from outside made safe for a terminal or a log line: control characters escaped.

Receiver frames, firmware banners, Apple's and the broker's answers and file names
reach `edgebell learn`, `status` and the journal. An ANSI escape in a frame cleared
and recoloured an installer's terminal; a newline in one would forge a log line.
Every such character is shown as a visible escape (``\\x1b``) instead.
"""

from __future__ import annotations

import re
from typing import TextIO

# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a line shows.
_REORDERING = "\u200e\u200f\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_REORDERING}]")
_UNSAFE_KEEPING_LINES = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_REORDERING}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x09:
        return "\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control character escaped (tabs kept; line ends if asked)."""
    pattern = _UNSAFE_KEEPING_LINES if keep_newlines else _UNSAFE
    return pattern.sub(_escape, text)


class PrintableStream:
    """A text stream whose every write goes through :func:`printable`, line ends kept.

    What the ``edgebell`` command prints passes through it, so no command can put a
    control character from outside input on the terminal.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(printable(text, keep_newlines=True))

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()
