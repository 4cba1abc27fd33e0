"""Button identity: the normalised key a frame carries and a ``match:`` mapping describes.

Both sides go through the same functions so that ``ID=000007`` on the wire and
``id: 7`` in YAML (which YAML reads as an integer) name the same button.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

ButtonKey = tuple[tuple[str, str], ...]

PROTOCOLS = ("rflink", "rcswitch", "lines")

# Keys a `match:` mapping must (and may) carry, per receiver protocol.
REQUIRED_MATCH_KEYS: dict[str, tuple[str, ...]] = {
    "rflink": ("protocol", "id"),
    "rcswitch": ("value", "bits", "protocol"),
    "lines": ("code",),
}
OPTIONAL_MATCH_KEYS: dict[str, tuple[str, ...]] = {
    "rflink": ("switch",),
    "rcswitch": (),
    "lines": (),
}


def _hexish(value: str | int) -> str:
    """Normalise an RFLink ID/SWITCH: case and leading zeros do not matter."""
    text = str(value).strip().lower()
    try:
        return format(int(text, 16), "x")
    except ValueError:
        return text


def _integer(value: str | int, what: str) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a whole number")
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, not {value!r}") from None
    if number < 0:
        raise ValueError(f"{what} must not be negative")
    return str(number)


def rflink_key(protocol: str, id_: str | int, switch: str | int | None) -> ButtonKey:
    """Identity of an RFLink frame: protocol name, ID and SWITCH (the counter is not part of it)."""
    return (
        ("protocol", " ".join(protocol.split()).lower()),
        ("id", _hexish(id_)),
        ("switch", "" if switch is None else _hexish(switch)),
    )


def rcswitch_key(value: str | int, bits: str | int, protocol: str | int) -> ButtonKey:
    """Identity of an rc-switch frame: decoded value, bit length and protocol number."""
    return (
        ("value", _integer(value, "value")),
        ("bits", _integer(bits, "bits")),
        ("protocol", _integer(protocol, "protocol")),
    )


def lines_key(code: str | int) -> ButtonKey:
    """Identity of a plain line: the trimmed line itself (case matters)."""
    return (("code", str(code).strip()),)


def key_from_match(protocol: str, match: Mapping[str, str | int]) -> ButtonKey:
    """The key a config ``match:`` mapping describes; ValueError says what is wrong."""
    if protocol not in REQUIRED_MATCH_KEYS:
        raise ValueError(f"unknown receiver protocol {protocol!r}")
    allowed = REQUIRED_MATCH_KEYS[protocol] + OPTIONAL_MATCH_KEYS[protocol]
    unknown = sorted(set(match) - set(allowed))
    if unknown:
        expected = ", ".join(allowed)
        raise ValueError(f"unknown key {unknown[0]!r} for {protocol} (expected {expected})")
    missing = [k for k in REQUIRED_MATCH_KEYS[protocol] if k not in match]
    if missing:
        raise ValueError(f"{missing[0]}: required for {protocol}")
    if protocol == "rflink":
        return rflink_key(str(match["protocol"]), match["id"], match.get("switch"))
    if protocol == "rcswitch":
        return rcswitch_key(match["value"], match["bits"], match["protocol"])
    return lines_key(match["code"])


def match_snippet(match: Mapping[str, str | int]) -> str:
    """The ``match:`` flow mapping to paste into the config (``edgebell learn``).

    Takes the identity values as the receiver printed them, so the snippet reads
    like the wire (``id: "0f7499"``); numbers stay numbers, text is quoted so YAML
    never turns ``04`` into an octal integer.
    """
    parts = []
    for name, value in match.items():
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{name}: {value}")
        else:
            parts.append(f"{name}: {json.dumps(str(value))}")
    return "match: {" + ", ".join(parts) + "}"
