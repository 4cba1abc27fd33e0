"""SQLite persistence of the outbox, written from one background thread.

The ring path never waits on the disk: callers enqueue writes and go on; a
single writer thread applies them in order, many per transaction. The database
runs in WAL mode with ``synchronous=NORMAL``, so a commit reaches the operating
system without an fsync: a killed daemon (``kill -9``) loses nothing that was
committed, only a power cut can lose the last moments. Reads happen once, at
start, before the writer runs.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgebell.errors import StoreError
from edgebell.rings import Notification

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: notifications.rings, last_ring_id, last_at (offline collapse)
# 3: suppressed.env, topic (a 400 holds only where Apple refused the token)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    apns_id     TEXT PRIMARY KEY,
    ring_id     TEXT NOT NULL,
    button      TEXT NOT NULL,
    token       TEXT NOT NULL,
    env         TEXT NOT NULL,
    collapse_id TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    ver         INTEGER,
    rings       INTEGER NOT NULL DEFAULT 1,
    last_ring_id TEXT,
    last_at     REAL
);
CREATE INDEX IF NOT EXISTS notifications_token ON notifications(token);
CREATE TABLE IF NOT EXISTS suppressed (
    token        TEXT PRIMARY KEY,
    status       INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    env          TEXT,
    topic        TEXT
);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_outgoing (
    seq     INTEGER PRIMARY KEY,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""

_Op = Callable[[sqlite3.Connection], None]
_STOP = object()


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A token Apple called dead, with Apple's timestamp (ms) for the registered_at rule.

    ``env`` and ``topic`` are where the refused push went (None in rows of schema 2).
    """

    token: str
    status: int
    reason: str
    timestamp_ms: int
    env: str | None = None
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class StoreHealth:
    ok: bool
    last_error: str | None
    moved_aside: str | None  # where a corrupt database was moved at start, if it was


class OutboxStore:
    """The outbox database: load once at start, then write behind from a thread."""

    def __init__(self, path: Path, *, max_page_count: int | None = None) -> None:
        self.path = path
        self._max_page_count = max_page_count
        self._ops: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._pending_ops = 0
        self._lock = threading.Lock()
        self._last_error: str | None = None
        self._moved_aside: str | None = None
        self._conn: sqlite3.Connection | None = None

    # -- start and stop -------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database; a corrupt one is moved aside and started afresh.

        Only a database SQLite calls corrupt (or not a database at all) is moved: a locked,
        unreadable or read-only one is healthy data that we cannot use right now, so it
        stays where it is and start-up fails with the reason.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise StoreError(f"cannot open outbox database {self.path}: {exc}") from exc
            self._moved_aside = self._move_aside(exc)
            try:
                self._conn = self._connect()
            except sqlite3.Error as exc2:
                raise StoreError(f"cannot create outbox database {self.path}: {exc2}") from exc2
        except OSError as exc:
            raise StoreError(f"cannot open outbox database {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        # The writer thread owns the connection after start; before that, only open() and
        # the load_* readers use it, from the starting thread.
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=2000")
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise _IntegrityFailed(f"integrity check failed: {row}")
            conn.executescript(_SCHEMA)
            _migrate(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if self._max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count={int(self._max_page_count)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, exc: Exception) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.replace(Path(f"{target}{suffix}"))
        log.error(
            "outbox database %s is corrupt (%s): moved aside to %s, starting with an empty outbox",
            self.path,
            exc,
            target,
        )
        return str(target)

    def start(self) -> None:
        """Start the writer thread; from now on only it touches the database."""
        if self._conn is None:
            raise StoreError("outbox store is not open")
        self._thread = threading.Thread(target=self._writer, name="outbox-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Apply every queued write (for up to ``timeout``), then close."""
        if self._thread is not None:
            self._ops.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Closing the connection under the writer could tear a transaction: leave
                # both to the process's exit; SQLite rolls an unfinished one back.
                log.warning("outbox writes still pending after %.1f s: not waiting", timeout)
                return
            self._thread = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every write queued so far is applied (tests, shutdown)."""
        return self._idle.wait(timeout)

    # -- reads (at start, before the writer runs) -------------------------

    def load_pending(self) -> list[Notification]:
        conn = self._require_conn()
        rows = conn.execute(
            "SELECT apns_id, ring_id, button, token, env, collapse_id, payload, created_at,"
            " expires_at, attempts, ver, rings, last_ring_id, last_at FROM notifications"
            " ORDER BY created_at, rowid"
        ).fetchall()
        return [
            Notification(
                apns_id=r[0],
                ring_id=r[1],
                button=r[2],
                token=r[3],
                env=r[4],
                collapse_id=r[5],
                payload=bytes(r[6]),
                created_at=r[7],
                expires_at=r[8],
                attempts=r[9],
                ver=r[10],
                rings=r[11],
                last_ring_id=r[12],
                last_at=r[13],
            )
            for r in rows
        ]

    def load_suppressed(self) -> list[Suppressed]:
        conn = self._require_conn()
        rows = conn.execute(
            "SELECT token, status, reason, timestamp_ms, env, topic FROM suppressed"
        ).fetchall()
        return [Suppressed(*r) for r in rows]

    def load_value(self, key: str) -> bytes | None:
        conn = self._require_conn()
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def load_outgoing(self) -> list[tuple[int, str, bytes]]:
        """Messages for the cloud the broker has not acknowledged: (seq, topic suffix, payload)."""
        conn = self._require_conn()
        rows = conn.execute(
            "SELECT seq, topic, payload FROM cloud_outgoing ORDER BY seq"
        ).fetchall()
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("outbox store is not open")
        return self._conn

    # -- writes (queued, applied by the writer thread) -----------------------

    def add(self, notifications: Sequence[Notification]) -> None:
        rows = [
            (
                n.apns_id,
                n.ring_id,
                n.button,
                n.token,
                n.env,
                n.collapse_id,
                n.payload,
                n.created_at,
                n.expires_at,
                n.attempts,
                n.ver,
                n.rings,
                n.last_ring_id,
                n.last_at,
            )
            for n in notifications
        ]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO notifications (apns_id, ring_id, button, token, env,"
                " collapse_id, payload, created_at, expires_at, attempts, ver, rings,"
                " last_ring_id, last_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )

        self._submit(op)

    def remove(self, apns_ids: Iterable[str]) -> None:
        ids = [(i,) for i in apns_ids]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM notifications WHERE apns_id = ?", ids)

        self._submit(op)

    def set_attempts(self, apns_id: str, attempts: int) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE notifications SET attempts = ? WHERE apns_id = ?", (attempts, apns_id)
            )

        self._submit(op)

    def collapse(self, n: Notification) -> None:
        """A row now stands for more rings: its payload, expiry and ring count change."""
        values = (n.payload, n.expires_at, n.rings, n.last_ring_id, n.last_at, n.apns_id)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE notifications SET payload = ?, expires_at = ?, rings = ?,"
                " last_ring_id = ?, last_at = ? WHERE apns_id = ?",
                values,
            )

        self._submit(op)

    def suppress(self, item: Suppressed) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO suppressed (token, status, reason, timestamp_ms, env,"
                " topic) VALUES (?,?,?,?,?,?)",
                (item.token, item.status, item.reason, item.timestamp_ms, item.env, item.topic),
            )

        self._submit(op)

    def put_value(self, key: str, value: bytes) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

        self._submit(op)

    def add_outgoing(self, seq: int, topic: str, payload: bytes) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO cloud_outgoing VALUES (?, ?, ?)", (seq, topic, payload)
            )

        self._submit(op)

    def remove_outgoing(self, seqs: Iterable[int]) -> None:
        rows = [(s,) for s in seqs]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM cloud_outgoing WHERE seq = ?", rows)

        self._submit(op)

    def _submit(self, op: _Op) -> None:
        with self._lock:
            self._pending_ops += 1
            self._idle.clear()
        self._ops.put(op)

    # -- health ----------------------------------------------------------------

    def health(self) -> StoreHealth:
        return StoreHealth(self._last_error is None, self._last_error, self._moved_aside)

    # -- the writer thread -------------------------------------------------------

    def _writer(self) -> None:
        conn = self._require_conn()
        stop = False
        while not stop:
            batch: list[_Op] = []
            item = self._ops.get()
            while True:
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= 1000:
                    break
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._apply(conn, batch)
            with self._lock:
                self._pending_ops -= len(batch)
                if self._pending_ops == 0:
                    self._idle.set()

    def _apply(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        # Any exception, not only sqlite3.Error (a value SQLite cannot hold raises
        # OverflowError): the writer thread must outlive every bad write, or every later
        # write is lost while status still says the store is fine.
        try:
            conn.execute("BEGIN")
            for op in batch:
                op(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            # Retry one by one, so one failing write (a full disk refusing an insert)
            # does not take the deletes of delivered rows down with it.
            failures = 0
            for op in batch:
                try:
                    op(conn)
                except Exception:
                    failures += 1
            if failures == 0:
                return
            message = f"{exc} ({failures} of {len(batch)} writes lost)"
            if self._last_error is None:
                log.error("outbox database write failed: %s; pushes go on from memory", message)
            self._last_error = message
        else:
            if self._last_error is not None:
                log.warning("outbox database writes work again")
                self._last_error = None


class _IntegrityFailed(sqlite3.DatabaseError):
    """SQLite's quick check found damage in a database that still opened."""


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Damage, as opposed to a database that is locked, unreadable or read-only right now."""
    if isinstance(exc, _IntegrityFailed):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    # The primary result code is the low byte of an extended one.
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database written by an older edgebell up to the current schema."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(notifications)")}
    # Schema 1: every row stood for one ring.
    for name, kind in (
        ("rings", "INTEGER NOT NULL DEFAULT 1"),
        ("last_ring_id", "TEXT"),
        ("last_at", "REAL"),
    ):
        if name not in columns:
            conn.execute(f"ALTER TABLE notifications ADD COLUMN {name} {kind}")
    # Schema 2: suppressions did not say where the refused push went.
    columns = {row[1] for row in conn.execute("PRAGMA table_info(suppressed)")}
    for name in ("env", "topic"):
        if name not in columns:
            conn.execute(f"ALTER TABLE suppressed ADD COLUMN {name} TEXT")
