"""Where the registry keeps its state: SQLite (one file) or PostgreSQL (several instances).

Both speak the same SQL here (``?`` placeholders, ``ON CONFLICT`` upserts); the
difference is locking. SQLite takes the whole database for a writing transaction
(``BEGIN IMMEDIATE``), so one instance at a time; PostgreSQL locks only the rows
of the users and gateways a call changes (``FOR UPDATE``), so instances behind a
load balancer serialise exactly the calls that touch the same list, and a
gateway's ``ver`` is computed under its row lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from edgebell.errors import ConfigError, StoreError

T = TypeVar("T")

# Retried when two instances' calls deadlock or PostgreSQL cannot serialise them.
RETRIES = 5

_TABLES = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(id),
    ver BIGINT NOT NULL,
    digest TEXT NOT NULL,
    jws TEXT NOT NULL,
    published_ver BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS gateways_owner ON gateways(owner);
CREATE INDEX IF NOT EXISTS gateways_unpublished ON gateways(id) WHERE ver > published_ver;
CREATE TABLE IF NOT EXISTS phones (
    token TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id),
    env TEXT NOT NULL,
    registered_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS phones_user ON phones(user_id);
CREATE TABLE IF NOT EXISTS shares (
    gateway TEXT NOT NULL REFERENCES gateways(id),
    user_id TEXT NOT NULL REFERENCES users(id),
    buttons TEXT,
    PRIMARY KEY (gateway, user_id)
);
CREATE INDEX IF NOT EXISTS shares_user ON shares(user_id);
CREATE TABLE IF NOT EXISTS removed (
    id {serial},
    token TEXT NOT NULL,
    user_id TEXT NOT NULL,
    env TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    removed_at BIGINT NOT NULL,
    gateway TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    apple_timestamp BIGINT
);
CREATE INDEX IF NOT EXISTS removed_when ON removed(removed_at);
CREATE TABLE IF NOT EXISTS events (
    gateway TEXT NOT NULL,
    ring_id TEXT NOT NULL,
    button TEXT,
    at TEXT,
    presses INTEGER,
    manual INTEGER,
    received_at BIGINT NOT NULL,
    delivery TEXT,
    PRIMARY KEY (gateway, ring_id)
);
CREATE INDEX IF NOT EXISTS events_recent ON events(gateway, received_at);
CREATE TABLE IF NOT EXISTS fleet (
    id INTEGER PRIMARY KEY,
    jwt TEXT NOT NULL,
    iat BIGINT NOT NULL
);
"""


class StoreFailed(StoreError):
    """The registry's database could not be reached or refused a statement (the API: 503)."""


class Tx(Protocol):
    """One transaction: statements with ``?`` placeholders, and row locks."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def lock(self, table: str, ids: Sequence[str]) -> list[str]:
        """Lock the rows of ``ids`` (sorted, so two calls never wait on each other in a
        circle) until the transaction ends; the ids that exist."""
        ...


class Database(Protocol):
    url: str

    def transaction(self) -> contextlib.AbstractContextManager[Tx]: ...

    def close(self) -> None: ...


def open_database(url: str) -> Database:
    """``sqlite:///path`` or ``postgresql://…``; the tables are created when missing."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        parts = urlsplit(url)
        path = unquote(parts.path)
        if not path:
            raise ConfigError(f"database: {url!r} names no file (sqlite:///path/registry.db)")
        return SqliteDatabase(Path(path))
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url)
    raise ConfigError("database must be sqlite:///path or postgresql://…")


class SqliteDatabase:
    """One file; one connection used by one thread at a time (the caller's executor)."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite://{path}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_TABLES.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
        except (OSError, sqlite3.Error) as exc:
            raise StoreFailed(f"cannot open {path}: {exc}") from exc
        # The CLI and tests may share one object between threads; statements never interleave.
        self._mutex = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._mutex:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreFailed(f"database: {exc}") from exc
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreFailed(f"database: {exc}") from exc

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreFailed(f"database: {exc}") from exc

    def lock(self, table: str, ids: Sequence[str]) -> list[str]:
        # BEGIN IMMEDIATE already holds the database's one write lock.
        wanted = sorted(set(ids))
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        rows = self.execute(f"SELECT id FROM {table} WHERE id IN ({marks})", wanted)  # noqa: S608
        return sorted(r[0] for r in rows)


class PostgresDatabase:
    """A PostgreSQL server shared by every instance; one connection per instance, opened
    again when the server restarted or the network dropped it."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = _without_password(url)
        self._dsn = url
        self._psycopg = psycopg
        try:
            self._conn = self._connect()
            with self._conn.transaction():
                # Two instances starting at once would race on CREATE TABLE IF NOT EXISTS.
                self._conn.execute("SELECT pg_advisory_xact_lock(7423101)")
                for statement in _TABLES.format(
                    serial="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
                ).split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
        except psycopg.Error as exc:
            raise StoreFailed(f"cannot use {self.url}: {exc}") from exc
        self._mutex = threading.Lock()

    def _connect(self) -> Any:
        return self._psycopg.connect(self._dsn, autocommit=False, connect_timeout=10)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        psycopg = self._psycopg
        with self._mutex:
            if self._conn.closed or self._conn.broken:
                try:
                    self._conn = self._connect()
                except psycopg.Error as exc:
                    raise StoreFailed(f"cannot reach {self.url}: {exc}") from exc
            try:
                with self._conn.transaction():
                    yield _PostgresTx(self._conn, psycopg)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                raise Retry(str(exc)) from exc
            except psycopg.OperationalError as exc:
                if self._conn.broken:  # the server went away: run it again on a new connection
                    raise Retry(str(exc)) from exc
                raise StoreFailed(f"database: {exc}") from exc
            except psycopg.Error as exc:
                raise StoreFailed(f"database: {exc}") from exc

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


class Retry(StoreFailed):
    """The transaction lost a race with another instance's and may simply run again."""


class _PostgresTx:
    def __init__(self, conn: Any, psycopg: Any) -> None:
        self._conn = conn
        self._psycopg = psycopg

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._conn.execute(sql.replace("?", "%s"), tuple(params))
        if cursor.description is None:
            return []
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows

    def lock(self, table: str, ids: Sequence[str]) -> list[str]:
        wanted = sorted(set(ids))
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        rows = self.execute(
            f"SELECT id FROM {table} WHERE id IN ({marks}) ORDER BY id FOR UPDATE",  # noqa: S608
            wanted,
        )
        return [r[0] for r in rows]


def run_retrying(db: Database, work: Callable[[Tx], T]) -> T:
    """``work(tx)`` in a transaction, run again if it lost a race with another instance."""
    for attempt in range(RETRIES):
        try:
            with db.transaction() as tx:
                result = work(tx)
            return result
        except Retry:
            if attempt == RETRIES - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _without_password(url: str) -> str:
    """The URL for messages: never the password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":…@")
    return parts._replace(netloc=netloc).geturl()
