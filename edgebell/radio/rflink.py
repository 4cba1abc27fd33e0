"""RFLink gateway lines (``20;NN;Name;K=V;...;``) into radio events, and its PING keepalive."""

from __future__ import annotations

import enum
import re

from edgebell.radio.events import BadFrame, Banner, Frame, Notice, Pong, RadioEvent
from edgebell.radio.keys import rflink_key

DEFAULT_BAUDRATE = 57600
PING = b"10;PING;\r\n"

# Where a gateway message starts; used to find a frame behind junk on the same line.
_MESSAGE_START = re.compile(r"20;[0-9A-Fa-f]{2};")
_COUNTER = re.compile(r"[0-9A-Fa-f]{2}")
# Every RFLink version announces itself as "... RFLink Gateway Vx.y - Rnn" (some
# prefixed with "Nodo RadioFrequencyLink - "): whatever the version, it just booted.
_BANNER = re.compile(r"\bRFLink Gateway\b", re.IGNORECASE)
# A banner behind other text: the firmware reset in the middle of a line.
_LATE_BANNER = re.compile(r"20;[0-9A-Fa-f]{2};[^;]*\bRFLink Gateway\b[^;]*;", re.IGNORECASE)
_KEY = re.compile(r"[A-Za-z0-9_()-]+")


class RFLinkDecoder:
    """Decodes RFLink lines; stateless, each line stands on its own.

    Identity of a frame is its protocol name, ``ID`` and ``SWITCH``; the ``NN``
    counter is ignored. Lines from the host side (``10;``) and relayed commands
    (``11;``) are notices, as are gateway messages without an ``ID``.
    """

    __slots__ = ()

    def reset(self) -> None:
        """Nothing is carried between lines."""

    def feed_line(self, line: str) -> list[RadioEvent]:
        text = line.strip()
        if not text:
            return []
        reset = _LATE_BANNER.search(text, 1)
        if reset is not None:
            cut, banner = text[: reset.start()], text[reset.start() :]
            return [BadFrame(cut, "line cut short by a receiver reset"), *self.feed_line(banner)]
        if text.startswith("20;"):
            return [_gateway_message(text)]
        if text.startswith(("10;", "11;")):
            return [Notice(text)]
        found = _MESSAGE_START.search(text)
        if found is None:
            return [BadFrame(text, "not an RFLink line")]
        # A half line or noise glued to a real message (typical right after the
        # port opens): report the junk, still decode the message behind it.
        junk, message = text[: found.start()], text[found.start() :]
        return [BadFrame(junk, "junk before an RFLink message"), _gateway_message(message)]


def _gateway_message(text: str) -> RadioEvent:
    """Decode a line that starts with ``20;``."""
    if not text.endswith(";"):
        return BadFrame(text, "truncated RFLink message (no final ';')")
    parts = text[:-1].split(";")
    if len(parts) < 3:
        return BadFrame(text, "RFLink message without a name")
    _, counter, name, *rest = parts
    if _COUNTER.fullmatch(counter) is None:
        return BadFrame(text, f"bad RFLink counter {counter!r}")
    name = name.strip()
    if not name:
        return BadFrame(text, "RFLink message without a name")
    if not rest and name == "PONG":
        return Pong()
    if _BANNER.search(name) is not None:
        return Banner(name)
    if not any(part.startswith("ID=") for part in rest):
        return Notice(text)
    return _frame(text, name, rest)


def _frame(text: str, name: str, parts: list[str]) -> Frame | BadFrame:
    values: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or _KEY.fullmatch(key) is None:
            return BadFrame(text, f"RFLink field {part!r} is not KEY=VALUE")
        if key in values:
            return BadFrame(text, f"RFLink field {key} given twice")
        values[key] = value
    id_ = values.pop("ID")
    if not id_:
        return BadFrame(text, "RFLink frame with an empty ID")
    switch = values.pop("SWITCH", None)
    if switch == "":
        return BadFrame(text, "RFLink frame with an empty SWITCH")
    match: tuple[tuple[str, str | int], ...] = (("protocol", name), ("id", id_))
    if switch is not None:
        match += (("switch", switch),)
    return Frame(
        key=rflink_key(name, id_, switch),
        match=match,
        raw=text,
        fields=tuple(values.items()),
    )


class Keepalive(enum.Enum):
    """What the PING watchdog wants done now."""

    WAIT = "wait"
    PING = "ping"
    DEAD = "dead"


class PingWatchdog:
    """Decides when to send ``10;PING;`` and when the receiver counts as hung (sans-I/O).

    A ping goes out every ``interval``; if nothing well-formed arrives within
    ``timeout`` of the oldest unanswered ping, the receiver is dead. Any
    well-formed line counts as an answer, not only PONG: an Arduino resets when
    the port opens and misses a ping sent while it boots, but its banner proves
    it alive; insisting on PONG would reopen (and so reset) it forever.
    """

    __slots__ = ("_interval", "_next_ping", "_timeout", "_unanswered_since")

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("ping interval and timeout must be positive")
        self._interval = interval
        self._timeout = timeout
        # The first ping waits a full interval: the firmware may still be booting.
        self._next_ping = now + interval
        self._unanswered_since: float | None = None

    @property
    def timeout(self) -> float:
        return self._timeout

    def alive(self) -> None:
        """The receiver printed something well-formed: outstanding pings are answered."""
        self._unanswered_since = None

    def poll(self, now: float) -> Keepalive:
        """What to do at ``now``; call again at :meth:`deadline`."""
        if self._unanswered_since is not None and now - self._unanswered_since >= self._timeout:
            return Keepalive.DEAD
        if now >= self._next_ping:
            self._next_ping = now + self._interval
            if self._unanswered_since is None:
                self._unanswered_since = now
            return Keepalive.PING
        return Keepalive.WAIT

    def deadline(self) -> float:
        """The next moment :meth:`poll` may answer something other than WAIT."""
        if self._unanswered_since is None:
            return self._next_ping
        return min(self._next_ping, self._unanswered_since + self._timeout)
