"""JSON from outside with a nesting limit, refused before the parser recurses into it.

Python's parser recurses once per level: a message of 30,000 ``[`` (60 KB, well
within every size limit) raises RecursionError, which is no ValueError and so
escaped every handler meant for bad input. No message of the contracts nests
more than four levels deep.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

MAX_DEPTH = 32

# The characters that can change the nesting depth or whether we are inside a string.
_SPECIAL = re.compile(rb'[\[\]{}"\\]')
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")


class TooDeep(ValueError):
    """A JSON document nested deeper than allowed (a ValueError, like any other bad JSON)."""


def check_depth(data: bytes | str, limit: int = MAX_DEPTH) -> None:
    """Raise TooDeep when arrays and objects in ``data`` nest deeper than ``limit``.

    A linear scan that skips string contents; it judges nesting only, not validity.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _SPECIAL.finditer(raw):
        at = match.start()
        if at == escaped_at:
            continue
        char = raw[at]
        if in_string:
            if char == _BACKSLASH:
                escaped_at = at + 1
            elif char == _QUOTE:
                in_string = False
        elif char == _QUOTE:
            in_string = True
        elif char in _OPEN:
            depth += 1
            if depth > limit:
                raise TooDeep(f"nested deeper than {limit} levels")
        elif char in _CLOSE:
            depth -= 1


def loads(data: bytes | str, *, limit: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` for input from outside: nesting over ``limit`` raises TooDeep."""
    check_depth(data, limit)
    try:
        return json.loads(data, **kwargs)
    except RecursionError:  # unreachable after the check; a second guard costs nothing
        raise TooDeep(f"nested deeper than {limit} levels") from None


def check_jws_depth(compact: str, limit: int = MAX_DEPTH) -> None:
    """TooDeep when the header or payload of a compact JWS nests deeper than ``limit``.

    JWT libraries parse the header (and, unverified, the payload) before anything we
    can check: this runs first. Segments that are not base64url are left to the library.
    """
    for segment in compact.split(".")[:2]:
        try:
            decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except ValueError:
            continue
        check_depth(decoded, limit)
