"""SQLite persistence of the outbox and of the token state, kept true even when the disk is not.

What the ring path writes (a ring's new rows, a ring folded into a waiting row) is
committed at once, on the caller's thread, before the ring is acknowledged anywhere:
a WAL commit with ``synchronous=OFF`` reaches the operating system in tens of
microseconds and never waits on an fsync, so a ``kill -9`` cannot lose it and the
first push does not wait for the flash. Everything else (rows delivered, attempts,
messages for the cloud, suppressions, the token list) is written behind by one
thread. That thread also checkpoints the WAL from its own connection (where the
fsyncs happen, off the event loop) and watches the files.

The store keeps what it holds in memory as well (a mirror of the tables) and notes
what is not on disk yet. A write that fails (a full disk, an I/O error, a read-only
file system) leaves the rows in memory and is retried every second; a database file
deleted or replaced while running is noticed (the path's inode, the file vanishing)
and re-created from the mirror. ``health()`` says what is failing and how many
accepted rings are not on disk yet; only when that is 0 is the store healthy.

Two files: ``outbox.sqlite3`` (notifications, messages for the cloud) and
``tokens.sqlite3`` beside it (the token list and its ``ver``, the suppressions), so
that an outbox found corrupt and reset cannot take the token state with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgebell.errors import StoreError
from edgebell.rings import Notification
from edgebell.tokens import Suppression

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4  # 2: notifications.rings, last_ring_id, last_at (offline collapse)
# 3: suppressed.env, topic (a 400 holds only where Apple refused the token)
# 4: suppressed and kv move to tokens.sqlite3
TOKENS_FILE = "tokens.sqlite3"

_OUTBOX_SCHEMA = """
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
-- No index on token: nothing looks rows up by it, and each index is one more page
-- the ring path's commit writes.
DROP INDEX IF EXISTS notifications_token;
CREATE TABLE IF NOT EXISTS cloud_outgoing (
    seq     INTEGER PRIMARY KEY,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""
_TOKENS_SCHEMA = """
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
"""
_NOTIFICATION_COLUMNS = (
    "apns_id, ring_id, button, token, env, collapse_id, payload, created_at, expires_at,"
    " attempts, ver, rings, last_ring_id, last_at"
)

RETRY_EVERY = 1.0  # how often a failing store tries again, and the files are checked
CHECKPOINT_EVERY = 10.0  # WAL checkpoints (with their fsyncs) from the writer thread
BACKLOG_MAX_ROWS = 10_000  # notifications kept for a failing disk; beyond, the oldest go
# How a notice of a loss that is over (a file moved aside, rings dropped) is cleared.
ACKNOWLEDGE = "`edgebell acknowledge` or a restart clears this notice"


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What ``status`` says about the disk. ``ok`` only when nothing waits to be written."""

    ok: bool
    last_error: str | None  # why the outbox cannot be written now (None: it can)
    moved_aside: str | None  # where a corrupt database was moved at start, if it was
    unwritten_rings: int = 0  # accepted rings whose rows are only in memory
    unwritten_rows: int = 0  # their notifications (ring x phone)
    dropped_rings: int = 0  # rings whose rows the memory bound dropped before the disk took them
    lost_at_start: int | None = None  # rows in the database moved aside (None: unknown)
    tokens_error: str | None = None  # why the token state cannot be written now
    tokens_unwritten: int = 0  # token-state changes only in memory
    tokens_moved_aside: str | None = None

    @property
    def problems(self) -> list[str]:
        """Each store failure in words, with what to do; empty when healthy."""
        out: list[str] = []
        if self.moved_aside is not None:
            lost = "an unknown number of" if self.lost_at_start is None else self.lost_at_start
            out.append(
                f"outbox was corrupt at start: moved to {self.moved_aside}, {lost} rows lost"
                f" ({ACKNOWLEDGE})"
            )
        if self.last_error is not None or self.unwritten_rows:
            why = self.last_error or "writing"
            out.append(
                f"outbox database failing ({why}): {self.unwritten_rings} accepted rings"
                f" ({self.unwritten_rows} pushes) not on disk yet, lost if the daemon stops"
                " before they are delivered — free space or fix the state directory"
            )
        if self.dropped_rings:
            out.append(
                f"{self.dropped_rings} accepted rings dropped from memory before the disk took"
                f" them (bound {BACKLOG_MAX_ROWS} pushes; {ACKNOWLEDGE})"
            )
        if self.tokens_moved_aside is not None:
            out.append(
                f"token state was corrupt at start: moved to {self.tokens_moved_aside}"
                f" ({ACKNOWLEDGE})"
            )
        if self.tokens_error is not None or self.tokens_unwritten:
            out.append(
                f"token state file failing ({self.tokens_error or 'writing'}):"
                f" {self.tokens_unwritten} changes (token list, suppressions) not on disk yet"
            )
        return out


class _Table:
    """One table's rows in memory, and which keys changed since the disk last took them."""

    def __init__(self) -> None:
        self.rows: dict[object, object] = {}
        self.dirty: set[object] = set()

    def put(self, key: object, row: object) -> None:
        self.rows[key] = row
        self.dirty.add(key)

    def drop(self, key: object) -> None:
        self.rows.pop(key, None)
        self.dirty.add(key)


_Writer = Callable[[sqlite3.Connection, bool], None]  # (conn, everything) -> writes


class _Db:
    """One SQLite file: its connection, the identity of the file it opened, its failures."""

    def __init__(self, path: Path, schema: str, what: str, max_page_count: int | None) -> None:
        self.path = path
        self.schema = schema
        self.what = what
        self.max_page_count = max_page_count
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None
        self.wal_identity: tuple[int, int] | None = None
        self.error: str | None = None
        self.need_all = False  # the file on disk holds none of our rows: write the mirror
        self.moved_aside: str | None = None
        self.commits_since_checkpoint = 0

    # -- opening -------------------------------------------------------------------------

    def open_at_start(self) -> None:
        """Open (or create); a corrupt file is moved aside and started afresh.

        Only a database SQLite calls corrupt (or not a database at all) is moved: a locked,
        unreadable or read-only one is healthy data that we cannot use right now, so it
        stays where it is and start-up fails with the reason.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = self._connect(busy_timeout_ms=2000)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise StoreError(f"cannot open {self.what} {self.path}: {exc}") from exc
            self.moved_aside = self._move_aside(exc)
            try:
                self.conn = self._connect(busy_timeout_ms=2000)
            except sqlite3.Error as exc2:
                raise StoreError(f"cannot create {self.what} {self.path}: {exc2}") from exc2
        except OSError as exc:
            raise StoreError(f"cannot open {self.what} {self.path}: {exc}") from exc
        self.identity = _identity(self.path)

    def _connect(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode=WAL")
            # No fsync on a commit: it reaches the OS, which is what a kill -9 needs. The
            # writer thread's checkpoints sync the WAL and the database (see checkpoint).
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            # A 256 KiB page cache (SQLite's default is 2 MiB): the outbox is written far more
            # than read, and a fan-out to thousands of phones would otherwise leave its pages
            # cached for good.
            conn.execute("PRAGMA cache_size=-256")
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise _IntegrityFailed(f"integrity check failed: {row}")
            conn.executescript(self.schema)
            _migrate(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if self.max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count={int(self.max_page_count)}")
            # The ring path commits on the event loop: it must never wait for a lock.
            conn.execute("PRAGMA busy_timeout=0")
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
            "%s %s is corrupt (%s): moved aside to %s, starting with an empty one",
            self.what,
            self.path,
            exc,
            target,
        )
        return str(target)

    def reopen(self) -> None:
        """A fresh connection to whatever file is at the path now (re-created if gone)."""
        self.close_conn()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = self._connect(busy_timeout_ms=0)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._move_aside(exc)
            self.conn = self._connect(busy_timeout_ms=0)
        self.identity = _identity(self.path)
        self.wal_identity = None

    def close_conn(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                # The last close checkpoints: let that one sync, a clean stop is durable.
                self.conn.execute("PRAGMA synchronous=NORMAL")
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    # -- watching the file ---------------------------------------------------------------

    def file_changed(self) -> str | None:
        """Why the file we write is no longer the one at the path (None: it still is)."""
        now = _identity(self.path)
        if now is None:
            return f"{self.path.name} was deleted"
        if now != self.identity:
            return f"{self.path.name} was replaced"
        wal = _identity(Path(f"{self.path}-wal"))
        if self.wal_identity is None:
            self.wal_identity = wal
        elif wal != self.wal_identity:
            return f"{self.path.name}-wal was deleted or replaced"
        return None

    # -- writing -------------------------------------------------------------------------

    def write(self, writer: _Writer) -> bool:
        """Write what changed (or everything, after the file was lost); True when it worked."""
        try:
            if self.conn is None:  # closed after an I/O error: the same file, or a new one
                before = self.identity
                self.reopen()
                if self.identity != before:
                    self.need_all = True
            else:
                changed = self.file_changed()
                if changed is not None:
                    log.error(
                        "%s %s: %s; re-creating it from memory", self.what, self.path, changed
                    )
                    self.error = changed
                    self.need_all = True
                    self.reopen()
            conn = self.conn
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                writer(conn, self.need_all)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError, OverflowError, ValueError) as exc:
            # Any failure keeps the rows in memory for the next try; a connection that saw
            # an I/O error is reopened then, in case it is the handle that went bad.
            message = _describe(exc)
            if self.error != message:
                log.error(
                    "%s %s cannot be written (%s): rows stay in memory, retrying",
                    self.what,
                    self.path,
                    message,
                )
            self.error = message
            if not isinstance(exc, sqlite3.Error) or _code(exc) not in _RETRY_IN_PLACE:
                self.close_conn()
            return False
        if self.error is not None:
            log.warning("%s %s is written again", self.what, self.path)
        self.error = None
        self.need_all = False
        self.commits_since_checkpoint += 1
        return True

    def checkpoint(self) -> None:
        """Move the WAL into the database, with fsyncs, from a second connection.

        A second connection so the ring path's commits (on the first) never wait for it;
        opened without create, so a vanished file is not silently re-created here.
        """
        if self.commits_since_checkpoint == 0 or self.error is not None:
            return
        self.commits_since_checkpoint = 0
        try:
            conn = sqlite3.connect(
                f"file:{self.path}?mode=rw", uri=True, isolation_level=None, timeout=0
            )
        except sqlite3.Error:
            return
        try:
            if _identity(self.path) != self.identity:
                return
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.debug("%s checkpoint skipped: %s", self.what, exc)
        finally:
            conn.close()


class OutboxStore:
    """The outbox and token-state databases: load once at start, then commit or write behind."""

    def __init__(
        self,
        path: Path,
        *,
        max_page_count: int | None = None,
        backlog_max_rows: int = BACKLOG_MAX_ROWS,
        retry_every: float = RETRY_EVERY,
    ) -> None:
        self.path = path
        self._outbox = _Db(path, _OUTBOX_SCHEMA, "outbox database", max_page_count)
        self._tokens = _Db(path.with_name(TOKENS_FILE), _TOKENS_SCHEMA, "token state file", None)
        self._backlog_max = backlog_max_rows
        self._retry_every = retry_every
        self._notifications = _Table()
        self._outgoing = _Table()
        self._suppressed = _Table()
        self._kv = _Table()
        self._lock = threading.RLock()  # re-entered by add() inside transaction()
        self._batching = 0
        self._batched = False  # something to commit when the outermost transaction ends
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._stop = False
        self._thread: threading.Thread | None = None
        # Rows whose rings are not on disk in any form: new, or with rings folded in since.
        # Changed attempts of a row on disk put no ring at risk, so they are not here.
        self._at_risk: set[str] = set()
        self._dropped_rings = 0
        self._lost_at_start: int | None = None

    # -- start and stop -------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) both files and read them into memory.

        A corrupt outbox is moved aside and started afresh (``health()`` names it and the
        rows it held); the token state lives in its own file and is not touched by that.
        """
        self._outbox.open_at_start()
        if self._outbox.moved_aside is not None:
            self._lost_at_start = _count_rows(self._outbox.moved_aside)
        self._tokens.open_at_start()
        self._load()

    def _load(self) -> None:
        conn = self._outbox.conn
        assert conn is not None
        for r in conn.execute(
            f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications ORDER BY created_at, rowid"  # noqa: S608 - constant
        ):
            n = _notification(r)
            self._notifications.rows[n.apns_id] = n
        for seq, topic, payload in conn.execute(
            "SELECT seq, topic, payload FROM cloud_outgoing ORDER BY seq"
        ):
            self._outgoing.rows[seq] = (topic, bytes(payload))
        tokens = self._tokens.conn
        assert tokens is not None
        sources = [tokens]
        if not _has_rows(tokens) and (_has_table(conn, "kv") or _has_table(conn, "suppressed")):
            # Schema 3 and older kept the token state in the outbox: take it over once.
            sources.insert(0, conn)
        for source in sources:
            if _has_table(source, "suppressed"):
                for s in source.execute(
                    "SELECT token, status, reason, timestamp_ms, env, topic FROM suppressed"
                ):
                    self._suppressed.put(s[0], Suppression(*s))
            if _has_table(source, "kv"):
                for key, value in source.execute("SELECT key, value FROM kv"):
                    self._kv.put(key, bytes(value))
        if len(sources) == 1:
            self._suppressed.dirty.clear()
            self._kv.dirty.clear()

    def start(self) -> None:
        """Start the writer thread (write-behind, retries, checkpoints, watching the files)."""
        if self._outbox.conn is None:
            raise StoreError("outbox store is not open")
        self._thread = threading.Thread(target=self._writer, name="outbox-writer", daemon=True)
        self._thread.start()
        self._wake.set()  # token state taken over from an old outbox: write it now

    def close(self, timeout: float = 5.0) -> None:
        """Write what is still in memory (for up to ``timeout``), then close."""
        if self._thread is not None:
            with self._lock:
                self._stop = True
            self._wake.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Closing the connection under the writer could tear a transaction: leave
                # both to the process's exit; SQLite rolls an unfinished one back.
                log.warning("outbox writes still pending after %.1f s: not waiting", timeout)
                return
            self._thread = None
        else:
            with self._lock:
                self._write_all()
        with self._lock:
            self._outbox.close_conn()
            self._tokens.close_conn()

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything in memory is on disk (tests, shutdown); False on time-out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._wake.set()
            while self._unwritten_any():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # -- reads (at start) -------------------------------------------------------------------

    def load_pending(self) -> list[Notification]:
        with self._lock:
            rows = [n for n in self._notifications.rows.values() if isinstance(n, Notification)]
        return sorted(rows, key=lambda n: n.created_at)

    def load_suppressed(self) -> list[Suppression]:
        with self._lock:
            return [s for s in self._suppressed.rows.values() if isinstance(s, Suppression)]

    def load_value(self, key: str) -> bytes | None:
        with self._lock:
            value = self._kv.rows.get(key)
        return value if isinstance(value, bytes) else None

    def load_outgoing(self) -> list[tuple[int, str, bytes]]:
        """Messages for the cloud the broker has not acknowledged: (seq, topic suffix, payload)."""
        out: list[tuple[int, str, bytes]] = []
        with self._lock:
            for seq, row in self._outgoing.rows.items():
                topic, payload = row  # type: ignore[misc]
                out.append((int(seq), str(topic), payload))  # type: ignore[call-overload, has-type]
        return sorted(out)

    # -- the ring path: committed before it returns ----------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One commit for every ``add`` and ``collapse`` inside: a ring's rows, all or none."""
        with self._lock:
            self._batching += 1
            try:
                yield
            finally:
                self._batching -= 1
                if self._batching == 0 and self._batched:
                    self._batched = False
                    self._commit_outbox()

    def add(self, notifications: Sequence[Notification]) -> None:
        """A ring's rows: committed now (no fsync); ``is_durable`` says whether that worked.

        Rows already here as they are (the ring path adds them before the dispatcher does)
        cost nothing the second time.
        """
        with self._lock:
            fresh = False
            for n in notifications:
                if self._notifications.rows.get(n.apns_id) == n:
                    continue
                self._notifications.put(n.apns_id, n)
                self._at_risk.add(n.apns_id)
                fresh = True
            if fresh:
                self._commit_or_batch()

    def collapse(self, n: Notification) -> None:
        """A row now stands for more rings (a new one among them): committed now.

        The newest ring's own row for that phone, if it was added, leaves in the same
        commit: its ring is now carried by ``n``, and must not come back on its own.
        """
        with self._lock:
            self._notifications.put(n.apns_id, n)
            self._at_risk.add(n.apns_id)
            if n.last_ring_id is not None:
                for other in list(self._notifications.rows.values()):
                    if (
                        isinstance(other, Notification)
                        and other.ring_id == n.last_ring_id
                        and other.token == n.token
                        and other.apns_id != n.apns_id
                    ):
                        self._notifications.drop(other.apns_id)
                        self._at_risk.discard(other.apns_id)
            self._commit_or_batch()

    def is_durable(self, ring_id: str) -> bool:
        """Whether ring ``ring_id``'s rows are on disk (False while they are only in memory)."""
        with self._lock:
            if not self._outbox.need_all and not self._at_risk:
                return True
            return all(ring_id not in (n.ring_id, n.last_ring_id) for n in self._unwritten_rows())

    # -- written behind ----------------------------------------------------------------------

    def remove(self, apns_ids: Iterable[str]) -> None:
        with self._lock:
            for apns_id in apns_ids:
                self._notifications.drop(apns_id)
                self._at_risk.discard(apns_id)
        self._wake.set()

    def set_attempts(self, apns_id: str, attempts: int) -> None:
        with self._lock:
            n = self._notifications.rows.get(apns_id)
            if isinstance(n, Notification):
                self._notifications.put(apns_id, dataclasses.replace(n, attempts=attempts))
        self._wake.set()

    def suppress(self, item: Suppression) -> None:
        with self._lock:
            self._suppressed.put(item.token, item)
        self._wake.set()

    def put_value(self, key: str, value: bytes) -> None:
        with self._lock:
            self._kv.put(key, value)
        self._wake.set()

    def add_outgoing(self, seq: int, topic: str, payload: bytes) -> None:
        with self._lock:
            self._outgoing.put(seq, (topic, payload))
        self._wake.set()

    def remove_outgoing(self, seqs: Iterable[int]) -> None:
        with self._lock:
            for seq in seqs:
                self._outgoing.drop(seq)
        self._wake.set()

    # -- health ---------------------------------------------------------------------------------

    def acknowledge(self) -> list[str]:
        """Clear the notices of losses that are over; returns what they said.

        The operator has read them: a corrupt outbox or token-state file moved aside at
        start (the files stay where they were moved), accepted rings the memory bound
        dropped. A failure still going on (a disk that cannot be written) is no notice:
        it stays in ``health()`` until it ends.
        """
        with self._lock:
            before = set(self.health().problems)
            self._outbox.moved_aside = None
            self._lost_at_start = None
            self._tokens.moved_aside = None
            self._dropped_rings = 0
            after = set(self.health().problems)
        return [problem for problem in sorted(before - after)]

    def health(self) -> StoreHealth:
        with self._lock:
            rows = self._unwritten_rows()
            rings = {n.latest_ring_id for n in rows} | {n.ring_id for n in rows}
            tokens_unwritten = (
                len(self._suppressed.rows) + len(self._kv.rows)
                if self._tokens.need_all
                else len(self._suppressed.dirty) + len(self._kv.dirty)
            )
            error = self._outbox.error
            if error is None and self._outbox.need_all:
                error = "re-creating the database"
            return StoreHealth(
                ok=not rows
                and error is None
                and self._outbox.moved_aside is None
                and not self._dropped_rings
                and self._tokens.error is None
                and not tokens_unwritten,
                last_error=error,
                moved_aside=self._outbox.moved_aside,
                unwritten_rings=len(rings),
                unwritten_rows=len(rows),
                dropped_rings=self._dropped_rings,
                lost_at_start=self._lost_at_start,
                tokens_error=self._tokens.error,
                tokens_unwritten=tokens_unwritten,
                tokens_moved_aside=self._tokens.moved_aside,
            )

    # -- writing (always under the lock) ---------------------------------------------------------

    def _unwritten_rows(self) -> list[Notification]:
        table = self._notifications
        keys = table.rows.keys() if self._outbox.need_all else self._at_risk
        out = []
        for key in keys:
            n = table.rows.get(key)
            if isinstance(n, Notification):
                out.append(n)
        return out

    def _unwritten_any(self) -> bool:
        return bool(
            self._outbox.need_all
            or self._tokens.need_all
            or self._notifications.dirty
            or self._outgoing.dirty
            or self._suppressed.dirty
            or self._kv.dirty
        )

    def _commit_or_batch(self) -> None:
        if self._batching:
            self._batched = True
        else:
            self._commit_outbox()

    def _commit_outbox(self) -> None:
        ok = self._outbox.write(self._write_outbox)
        if ok:
            self._notifications.dirty.clear()
            self._outgoing.dirty.clear()
            self._at_risk.clear()
        else:
            self._bound_backlog()
            self._wake.set()  # the writer thread retries

    def _write_outbox(self, conn: sqlite3.Connection, everything: bool) -> None:
        if everything:
            conn.execute("DELETE FROM notifications")
            conn.execute("DELETE FROM cloud_outgoing")
        _sync(
            conn,
            self._notifications,
            everything,
            upsert=f"INSERT OR REPLACE INTO notifications ({_NOTIFICATION_COLUMNS})"  # noqa: S608
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            delete="DELETE FROM notifications WHERE apns_id = ?",
            values=lambda _, n: _notification_values(n),  # type: ignore[arg-type]
        )
        _sync(
            conn,
            self._outgoing,
            everything,
            upsert="INSERT OR REPLACE INTO cloud_outgoing VALUES (?, ?, ?)",
            delete="DELETE FROM cloud_outgoing WHERE seq = ?",
            values=lambda seq, row: (seq, *row),  # type: ignore[misc]
        )

    def _write_tokens(self, conn: sqlite3.Connection, everything: bool) -> None:
        if everything:
            conn.execute("DELETE FROM suppressed")
            conn.execute("DELETE FROM kv")
        _sync(
            conn,
            self._suppressed,
            everything,
            upsert="INSERT OR REPLACE INTO suppressed (token, status, reason, timestamp_ms, env,"
            " topic) VALUES (?,?,?,?,?,?)",
            delete="DELETE FROM suppressed WHERE token = ?",
            values=lambda _, s: dataclasses.astuple(s),  # type: ignore[call-overload]
        )
        _sync(
            conn,
            self._kv,
            everything,
            upsert="INSERT OR REPLACE INTO kv VALUES (?, ?)",
            delete="DELETE FROM kv WHERE key = ?",
            values=lambda key, value: (key, value),
        )

    def _write_all(self) -> None:
        if self._notifications.dirty or self._outgoing.dirty or self._outbox.need_all:
            self._commit_outbox()
        tokens_waiting = self._suppressed.dirty or self._kv.dirty or self._tokens.need_all
        if tokens_waiting and self._tokens.write(self._write_tokens):
            self._suppressed.dirty.clear()
            self._kv.dirty.clear()

    def _bound_backlog(self) -> None:
        """Keep what a failing disk leaves in memory bounded: the oldest rows go first."""
        rows = self._unwritten_rows()
        excess = len(rows) - self._backlog_max
        if excess <= 0:
            return
        rows.sort(key=lambda n: n.created_at)
        dropped = rows[:excess]
        for n in dropped:
            self._notifications.rows.pop(n.apns_id, None)
            self._notifications.dirty.discard(n.apns_id)
            self._at_risk.discard(n.apns_id)
        self._dropped_rings += len({n.ring_id for n in dropped})
        log.error(
            "%d pushes could not be written for too long: dropped from the backlog in memory",
            len(dropped),
        )

    # -- the writer thread -------------------------------------------------------------------------

    def _writer(self) -> None:
        last_checkpoint = time.monotonic()
        while True:
            self._wake.wait(self._retry_every)
            self._wake.clear()
            with self._lock:
                stop = self._stop
                for db in (self._outbox, self._tokens):
                    if db.conn is not None and db.error is None and db.file_changed():
                        db.need_all = True  # noticed without a write: re-create it now
                self._write_all()
                self._idle.notify_all()
            now = time.monotonic()
            if stop:
                return
            if now - last_checkpoint >= CHECKPOINT_EVERY:
                last_checkpoint = now
                self._outbox.checkpoint()
                self._tokens.checkpoint()


def _sync(
    conn: sqlite3.Connection,
    table: _Table,
    everything: bool,
    *,
    upsert: str,
    delete: str,
    values: Callable[[object, object], tuple[object, ...]],
) -> None:
    keys = table.rows.keys() if everything else table.dirty
    ups: list[tuple[object, tuple[object, ...]]] = []
    downs = []
    for key in keys:
        row = table.rows.get(key)
        if row is None:
            downs.append((key,))
        else:
            ups.append((key, values(key, row)))
    if downs:
        conn.executemany(delete, downs)
    if not ups:
        return
    try:
        conn.executemany(upsert, [v for _, v in ups])
    except (OverflowError, ValueError):
        # A value SQLite cannot hold (Apple's timestamp is a number from the network) would
        # fail every later try too: that one row is dropped, the others are written.
        for key, v in ups:
            try:
                conn.execute(upsert, v)
            except (OverflowError, ValueError) as exc:
                log.error("dropped a row SQLite cannot store (%s): %.8s…", exc, key)
                table.rows.pop(key, None)


def _notification(r: Sequence[object]) -> Notification:
    return Notification(
        apns_id=str(r[0]),
        ring_id=str(r[1]),
        button=str(r[2]),
        token=str(r[3]),
        env=str(r[4]),
        collapse_id=str(r[5]),
        payload=bytes(r[6]),  # type: ignore[call-overload]
        created_at=float(r[7]),  # type: ignore[arg-type]
        expires_at=float(r[8]),  # type: ignore[arg-type]
        attempts=int(r[9]),  # type: ignore[call-overload]
        ver=None if r[10] is None else int(r[10]),  # type: ignore[call-overload]
        rings=int(r[11]),  # type: ignore[call-overload]
        last_ring_id=None if r[12] is None else str(r[12]),
        last_at=None if r[13] is None else float(r[13]),  # type: ignore[arg-type]
    )


def _notification_values(n: Notification) -> tuple[object, ...]:
    return (
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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
    return row.fetchone() is not None


def _has_rows(tokens: sqlite3.Connection) -> bool:
    return any(
        tokens.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()  # noqa: S608 - constant
        for table in ("kv", "suppressed")
    )


def _count_rows(moved: str) -> int | None:
    """Rows in a database moved aside as corrupt, when SQLite can still count them."""
    try:
        conn = sqlite3.connect(f"file:{moved}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return int(conn.execute("SELECT count(*) FROM notifications").fetchone()[0])
    except (sqlite3.Error, TypeError):
        return None
    finally:
        conn.close()


class _IntegrityFailed(sqlite3.DatabaseError):
    """SQLite's quick check found damage in a database that still opened."""


# A full disk or a lock held elsewhere is not the connection's fault: retry on it.
_RETRY_IN_PLACE = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _describe(exc: BaseException) -> str:
    code = _code(exc) if isinstance(exc, sqlite3.Error) else None
    if code == sqlite3.SQLITE_FULL:
        return f"disk full: {exc}"
    if code == sqlite3.SQLITE_READONLY:
        return f"read-only: {exc}"
    if code == sqlite3.SQLITE_IOERR:
        return f"I/O error: {exc}"
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return f"locked by another process: {exc}"
    return str(exc)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Damage, as opposed to a database that is locked, unreadable or read-only right now."""
    if isinstance(exc, _IntegrityFailed):
        return True
    return _code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database written by an older edgebell up to the current schema."""
    if _has_table(conn, "notifications"):
        columns = {row[1] for row in conn.execute("PRAGMA table_info(notifications)")}
        # Schema 1: every row stood for one ring.
        for name, kind in (
            ("rings", "INTEGER NOT NULL DEFAULT 1"),
            ("last_ring_id", "TEXT"),
            ("last_at", "REAL"),
        ):
            if name not in columns:
                conn.execute(f"ALTER TABLE notifications ADD COLUMN {name} {kind}")
    if _has_table(conn, "suppressed"):
        # Schema 2: suppressions did not say where the refused push went.
        columns = {row[1] for row in conn.execute("PRAGMA table_info(suppressed)")}
        for name in ("env", "topic"):
            if name not in columns:
                conn.execute(f"ALTER TABLE suppressed ADD COLUMN {name} TEXT")
