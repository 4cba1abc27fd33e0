"""Human durations (``1.5s``, ``10m``, ``1m30s``) to seconds and back."""

from __future__ import annotations

import math
import re

# Largest unit first: a duration names each unit at most once, in this order.
_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_ORDER = tuple(_UNITS)

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_BARE = re.compile(rf"{_NUMBER}")
# "ms" before "m" so that 250ms is not read as 250 minutes followed by junk.
_PART = re.compile(rf"\s*(?P<number>{_NUMBER})\s*(?P<unit>ms|[dhms])")

_HINT = "use seconds or a string like 1.5s, 10m, 2h, 250ms, 1m30s"


def parse_duration(value: str | float) -> float:
    """Seconds in ``value``: a number of seconds or a string like ``1.5s``, ``10m``, ``1m30s``.

    Raises ValueError, saying what is accepted, for anything else and for negative durations.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r} ({_HINT})")
    if isinstance(value, int | float):
        return _checked(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r} ({_HINT})")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"a duration must not be negative, not {value!r}")
    if _BARE.fullmatch(text):
        return _checked(float(text), value)
    return _checked(_parse_units(text, value), value)


def _parse_units(text: str, original: str) -> float:
    total = 0.0
    position = 0
    last_rank = -1
    while position < len(text):
        part = _PART.match(text, position)
        if part is None:
            raise ValueError(f"not a duration: {original!r} ({_HINT})")
        rank = _ORDER.index(part["unit"])
        if rank <= last_rank:
            raise ValueError(
                f"not a duration: {original!r} (each unit at most once, largest first, as in 1h30m)"
            )
        last_rank = rank
        total += float(part["number"]) * _UNITS[part["unit"]]
        position = part.end()
    if last_rank < 0:
        raise ValueError(f"not a duration: {original!r} ({_HINT})")
    return total


def _checked(seconds: float, original: object) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"not a duration: {original!r} ({_HINT})")
    if seconds < 0:
        raise ValueError(f"a duration must not be negative, not {original!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form of ``seconds`` that parse_duration reads back: ``1h30m``, ``1.5s``."""
    if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    parts = []
    rest = seconds
    for unit in ("d", "h", "m"):
        whole = int(rest // _UNITS[unit])
        if whole:
            parts.append(f"{whole}{unit}")
            rest -= whole * _UNITS[unit]
    rest = round(rest, 3)
    if rest:
        parts.append(f"{rest:g}s")
    return "".join(parts) or "0s"
