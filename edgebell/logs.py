"""Logging set-up: one line per event, journald-friendly, tokens and JWTs masked everywhere."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import ClassVar

from edgebell.privacy import RedactingFilter

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def setup_logging(level: str, environ: Mapping[str, str] = os.environ) -> None:
    """Log to stderr; under systemd (``$JOURNAL_STREAM``) journald adds the timestamps."""
    handler = logging.StreamHandler(sys.stderr)
    if environ.get("JOURNAL_STREAM"):
        # <N> prefixes are syslog priorities journald understands; no own timestamp.
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    # On the handler, not a logger: it then sees every record, third-party loggers included.
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    # hpack/h2 debug output would show headers (device tokens in :path) byte by byte.
    for noisy in ("hpack", "h2"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


class _JournalFormatter(logging.Formatter):
    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIORITY.get(record.levelno, 6)}>{super().format(record)}"
