"""Typed events the radio decoders produce from receiver output."""

from __future__ import annotations

from dataclasses import dataclass

from edgebell.radio.keys import ButtonKey


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded button transmission.

    ``match`` holds the identity values as the receiver printed them (what
    ``edgebell learn`` offers to paste); ``key`` is their normalised form, compared
    with the key of each ``buttons[].match``; ``fields`` is everything else the
    frame carried (RFLink's CHIME, CMD ...), kept for learn and logs.
    """

    key: ButtonKey
    match: tuple[tuple[str, str | int], ...]
    raw: str
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Banner:
    """The receiver announced itself: it has just (re)started."""

    text: str


@dataclass(frozen=True, slots=True)
class Pong:
    """RFLink's answer to ``10;PING;``: the receiver is alive."""


@dataclass(frozen=True, slots=True)
class Notice:
    """A well-formed line that is not a button (RFLink ``OK``, debug output)."""

    text: str


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Input that could not be decoded: garbage, an over-long or non-UTF-8 line."""

    raw: str
    reason: str


RadioEvent = Frame | Banner | Pong | Notice | BadFrame
