"""One-code-per-line receiver output into radio events (sans-I/O)."""

from __future__ import annotations

from edgebell.radio.events import BadFrame, Frame, RadioEvent
from edgebell.radio.keys import lines_key

DEFAULT_BAUDRATE = 9600


class LinesDecoder:
    """Each non-empty trimmed line is a code; empty lines are ignored.

    A line with control characters inside is refused: that is what line noise and
    a wrong baud rate look like, and no firmware prints them in a code.
    """

    __slots__ = ()

    def reset(self) -> None:
        """Nothing is carried between lines."""

    def feed_line(self, line: str) -> list[RadioEvent]:
        code = line.strip()
        if not code:
            return []
        if not code.isprintable():
            return [BadFrame(code, "control characters in a code line")]
        return [Frame(key=lines_key(code), match=(("code", code),), raw=code)]
