"""Keeping device tokens, keys and provider JWTs out of logs, messages and reprs."""

from __future__ import annotations

import logging
import re

from edgebell.printable import printable
from edgebell.tokens import MIN_TOKEN_HEX

# Device tokens are hex of variable length: any run as long as the shortest token the config
# and the cloud accept is treated as one, even glued to other text ("0x…", inside a URL),
# since a false positive only costs log detail.
_TOKEN_RE = re.compile(rf"([0-9A-Fa-f]{{8}})[0-9A-Fa-f]{{{MIN_TOKEN_HEX - 8},}}")
# A JWS compact serialisation: base64url header (starts "eyJ", i.e. '{"'), payload, signature.
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

JWT_MASK = "<jwt>"


def short_token(token: str) -> str:
    """The first 8 hex digits of a device token and an ellipsis: enough to tell tokens apart."""
    return f"{token[:8]}…"


def redact(text: str) -> str:
    """``text`` with every JWT replaced and every token-like hex run shortened."""
    if "eyJ" in text:
        text = _JWT_RE.sub(JWT_MASK, text)
    return _TOKEN_RE.sub(r"\1…", text)


class RedactingFilter(logging.Filter):
    """Masks device tokens and JWTs in every record's final text, tracebacks included,
    and escapes control characters (:func:`edgebell.printable.printable`).

    Install it on handlers, not loggers: a handler's filter sees records of every logger,
    third-party ones (h2, hpack debug output) included.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            # Logging would print the raw arguments to stderr on a formatting error.
            message = f"{record.msg!s} [log arguments dropped: they do not fit the message]"
            record.msg, record.args = message, None
        # One line per record, whatever the receiver or a peer put in the text.
        masked = printable(redact(message))
        if masked != message:
            # Freeze the masked text: formatters call getMessage() again later.
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters cache the traceback text in exc_text and reuse it, so mask it there.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = printable(redact(record.exc_text), keep_newlines=True)
        if record.stack_info:
            record.stack_info = printable(redact(record.stack_info), keep_newlines=True)
        return True
