"""rc-switch ReceiveDemo_Simple / _Advanced output into radio events (sans-I/O)."""

from __future__ import annotations

import re

from edgebell.radio.events import BadFrame, Frame, Notice, RadioEvent
from edgebell.radio.keys import rcswitch_key

DEFAULT_BAUDRATE = 9600

# A split Advanced block is a handful of short lines; beyond these bounds it is noise.
MAX_BLOCK_LINES = 8
MAX_BLOCK_CHARS = 512
MAX_BITS = 64

_SIMPLE = re.compile(r"Received\s+(\d+)\s*/\s*(\d+)\s*bit\s+Protocol:\s*(\d+)")
_ADVANCED = re.compile(
    r"Decimal:\s*(\d+)\s*\(\s*(\d+)\s*Bit\)\s*"
    r"Binary:\s*([01]+)\s*"
    r"Tri-State:\s*(.*?)\s*"
    r"PulseLength:\s*(\d+)\s*microseconds\s*"
    r"Protocol:\s*(\d+)"
)
_BLOCK_END = re.compile(r"Protocol:\s*\d+$")
# Lines that can never continue an Advanced block.
_NOT_CONTINUATION = ("Decimal:", "Received", "Raw data:")
# ReceiveDemo prints this with print(), not println(): it prefixes the next output.
_UNKNOWN = "Unknown encoding"


class RCSwitchDecoder:
    """Decodes rc-switch lines, gathering an Advanced block that the firmware split over lines.

    ``Decimal: ...`` through ``Protocol: N`` may come on one line or several; the
    ``Raw data: ...`` line and the blank line after a block are ignored.
    """

    __slots__ = ("_block",)

    def __init__(self) -> None:
        self._block: list[str] | None = None

    def reset(self) -> None:
        """Drop a half-gathered block (the port was reopened)."""
        self._block = None

    def feed_line(self, line: str) -> list[RadioEvent]:
        text = line.strip()
        events: list[RadioEvent] = []
        while text.startswith(_UNKNOWN):
            events.append(Notice(_UNKNOWN))
            text = text[len(_UNKNOWN) :].lstrip(".").lstrip()
        if self._block is not None:
            if text and not text.startswith(_NOT_CONTINUATION):
                events.extend(self._continue(text))
                return events
            events.append(BadFrame(" ".join(self._block), "incomplete rc-switch block"))
            self._block = None
        if not text or text.startswith("Raw data:"):
            return events
        if text.startswith("Decimal:"):
            if _BLOCK_END.search(text) is not None:
                events.append(_advanced(text))
            else:
                self._block = [text]
            return events
        simple = _SIMPLE.fullmatch(text)
        if simple is None:
            events.append(BadFrame(text, "not an rc-switch line"))
            return events
        value, bits, protocol = (int(g) for g in simple.groups())
        events.append(_frame(text, value, bits, protocol, ()))
        return events

    def _continue(self, text: str) -> list[RadioEvent]:
        assert self._block is not None
        self._block.append(text)
        joined = " ".join(self._block)
        if _BLOCK_END.search(joined) is not None:
            self._block = None
            return [_advanced(joined)]
        if len(self._block) >= MAX_BLOCK_LINES or len(joined) > MAX_BLOCK_CHARS:
            self._block = None
            return [BadFrame(joined[:MAX_BLOCK_CHARS], "rc-switch block without 'Protocol:'")]
        return []


def _advanced(text: str) -> Frame | BadFrame:
    found = _ADVANCED.fullmatch(text)
    if found is None:
        return BadFrame(text, "malformed rc-switch Advanced block")
    value, bits = int(found[1]), int(found[2])
    binary, tristate, pulse, protocol = found[3], found[4], found[5], int(found[6])
    # The binary repeats the value: a disagreement means the block was garbled.
    if len(binary) != bits or int(binary, 2) != value:
        return BadFrame(text, "rc-switch Binary does not match Decimal")
    fields = (("binary", binary), ("tristate", tristate), ("pulse_length", pulse))
    return _frame(text, value, bits, protocol, fields)


def _frame(
    text: str, value: int, bits: int, protocol: int, fields: tuple[tuple[str, str], ...]
) -> Frame | BadFrame:
    if not 1 <= bits <= MAX_BITS:
        return BadFrame(text, f"rc-switch bit length {bits} out of range")
    if value >= 1 << bits:
        return BadFrame(text, f"rc-switch value {value} does not fit in {bits} bits")
    if protocol < 1:
        return BadFrame(text, f"rc-switch protocol {protocol} out of range")
    return Frame(
        key=rcswitch_key(value, bits, protocol),
        match=(("value", value), ("bits", bits), ("protocol", protocol)),
        raw=text,
        fields=fields,
    )
