"""Logging set-up: one line per event, journald-friendly, tokens and JWTs masked everywhere."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
from collections.abc import Mapping
from typing import ClassVar, TextIO

from edgebell.logqueue import QUEUE_MAX, BoundedQueueHandler, RepeatLimiter
from edgebell.privacy import RedactingFilter

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Libraries whose debug output would show request headers (device tokens in :path) byte by byte.
_NOISY = ("hpack", "h2")


_listener: logging.handlers.QueueListener | None = None
_queued: BoundedQueueHandler | None = None
_limiter: RepeatLimiter | None = None


def setup_logging(
    level: str,
    environ: Mapping[str, str] = os.environ,
    stream: TextIO | None = None,
    *,
    background: bool = True,
) -> None:
    """Log to stderr; when stderr is journald's stream, journald adds time and priority.

    With ``background`` the event loop only puts records on a queue and a thread
    writes them: a ring's log line never waits on a slow journald or a full pipe
    before the push goes out. ``shutdown_logging()`` (also run at exit) drains it.
    """
    global _listener, _queued, _limiter
    shutdown_logging()
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if writes_to_journal(stream, environ):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    # On the handler, not a logger: it then sees every record, third-party loggers included.
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    _limiter = RepeatLimiter()
    if background:
        records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_MAX)
        _queued = BoundedQueueHandler(records)
        _queued.addFilter(_limiter)  # before the queue: held-back repeats cost nothing
        root.addHandler(_queued)
        _listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
        _listener.start()
    else:
        _queued = None
        handler.addFilter(_limiter)
        root.addHandler(handler)
    set_level(level)


def counters() -> dict[str, int]:
    """The ``logs`` part of status: records the full queue dropped, repeats held back."""
    return {
        "dropped": 0 if _queued is None else _queued.dropped,
        "repeats_held_back": 0 if _limiter is None else _limiter.suppressed,
    }


def shutdown_logging() -> None:
    """Write out every queued record and stop the writer thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(shutdown_logging)


def set_level(level: str) -> None:
    """Change the level of every edgebell logger at once (also on a SIGHUP reload)."""
    root = logging.getLogger()
    root.setLevel(LEVELS.get(level, logging.INFO))
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


def writes_to_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``stream`` is the journald stream systemd names in ``$JOURNAL_STREAM``.

    The variable is inherited by children whose stderr goes elsewhere (a shell started
    from a service, a pipe), so its device and inode must match the stream's own.
    """
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


class _JournalFormatter(logging.Formatter):
    """``<priority>logger: message``; journald takes the syslog priority from the prefix."""

    _PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
        logging.CRITICAL: 2,
    }

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self._PRIORITY.get(record.levelno, 6)}>"
        # journald makes one entry per line: a traceback's lines keep the record's priority.
        return "\n".join(prefix + line for line in super().format(record).splitlines())
