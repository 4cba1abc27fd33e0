"""The outbox database: rows survive a restart, corruption and a full disk are survived."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

import pytest

from edgebell.errors import StoreError
from edgebell.outbox.store import BACKLOG_MAX_ROWS, TOKENS_FILE, OutboxStore
from edgebell.rings import Notification, new_id
from edgebell.tokens import Suppression


def _notification(ring: str = "r1", token: str = "ab" * 32, **kw: object) -> Notification:
    values: dict[str, object] = {
        "apns_id": new_id(),
        "ring_id": ring,
        "button": "front",
        "token": token,
        "env": "sandbox",
        "collapse_id": ring,
        "payload": b'{"aps":{}}',
        "created_at": 1000.0,
        "expires_at": 1900.0,
    }
    values.update(kw)
    return Notification(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> OutboxStore:
    s = OutboxStore(tmp_path / "outbox.sqlite3")
    s.open()
    s.start()
    return s


def reopen(store: OutboxStore, max_page_count: int | None = None) -> OutboxStore:
    store.close()
    again = OutboxStore(store.path, max_page_count=max_page_count)
    again.open()
    return again


def test_rows_survive_a_restart_in_order(store: OutboxStore) -> None:
    rows = [_notification(token=f"{i:02x}" * 32, created_at=1000.0 + i) for i in range(5)]
    store.add(rows)
    store.remove([rows[1].apns_id])
    store.set_attempts(rows[2].apns_id, 3)
    again = reopen(store)
    loaded = again.load_pending()
    assert [n.apns_id for n in loaded] == [r.apns_id for i, r in enumerate(rows) if i != 1]
    assert loaded[1].attempts == 3
    assert loaded[0].payload == rows[0].payload
    again.close()


def test_suppressions_and_values_persist(store: OutboxStore) -> None:
    store.suppress(Suppression("cd" * 32, 410, "Unregistered", 1234))
    store.put_value("tokens", b"jws")
    again = reopen(store)
    assert again.load_suppressed() == [Suppression("cd" * 32, 410, "Unregistered", 1234)]
    assert again.load_value("tokens") == b"jws"
    assert again.load_value("missing") is None
    again.close()


def test_writes_do_not_block_and_flush_waits_for_them(store: OutboxStore) -> None:
    store.add([_notification() for _ in range(200)])
    assert store.flush(5.0)
    check = sqlite3.connect(store.path)
    assert check.execute("SELECT count(*) FROM notifications").fetchone()[0] == 200
    check.close()
    store.close()


def test_corrupt_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = OutboxStore(path)
    store.open()
    health = store.health()
    assert health.moved_aside is not None
    assert Path(health.moved_aside).read_bytes().startswith(b"this is not a database")
    assert store.load_pending() == []
    assert "corrupt" in caplog.text
    store.close()


def test_full_disk_is_reported_and_later_writes_recover(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "outbox.sqlite3", max_page_count=40)
    store.open()
    store.start()
    big = b"x" * 3000
    store.add([_notification(payload=big) for _ in range(100)])
    store.flush(5.0)
    health = store.health()
    assert not health.ok
    assert "full" in (health.last_error or "")
    # Deleting what is there makes room: the store says so.
    again = reopen(store, max_page_count=40)
    ids = [n.apns_id for n in again.load_pending()]
    again.start()
    again.remove(ids)
    again.add([_notification()])
    again.flush(5.0)
    assert again.health().ok
    again.close()


def test_a_schema_1_database_gains_the_collapse_columns(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE notifications (apns_id TEXT PRIMARY KEY, ring_id TEXT NOT NULL,"
        " button TEXT NOT NULL, token TEXT NOT NULL, env TEXT NOT NULL,"
        " collapse_id TEXT NOT NULL, payload BLOB NOT NULL, created_at REAL NOT NULL,"
        " expires_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, ver INTEGER);"
        "INSERT INTO notifications VALUES"
        " ('a1', 'r1', 'front', 'abab', 'sandbox', 'r1', x'7b7d', 1000, 1900, 2, NULL);"
        "PRAGMA user_version=1;"
    )
    old.commit()
    old.close()
    store = OutboxStore(path)
    store.open()
    [row] = store.load_pending()
    assert (row.apns_id, row.attempts, row.rings, row.latest_ring_id) == ("a1", 2, 1, "r1")
    store.start()
    store.collapse(dataclasses.replace(row, rings=3, last_ring_id="r3", last_at=1500.0))
    again = reopen(store)
    [merged] = again.load_pending()
    assert (merged.rings, merged.latest_ring_id, merged.latest_at) == (3, "r3", 1500.0)
    again.close()


def test_a_locked_database_is_refused_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = OutboxStore(path)
    first.open()
    first.close()
    other = sqlite3.connect(path, isolation_level=None)  # another process in mid-write
    other.execute("BEGIN IMMEDIATE")
    try:
        store = OutboxStore(path)
        with pytest.raises(StoreError, match="locked"):
            store.open()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.health().moved_aside is None
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []
    again = OutboxStore(path)
    again.open()  # the same database, usable again once the lock is gone
    again.close()


def test_a_value_sqlite_cannot_hold_is_dropped_and_the_other_writes_go_on(
    store: OutboxStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Apple's 410 timestamp is a number from the network: one past SQLite's INTEGER range.
    store.suppress(Suppression("cd" * 32, 410, "Unregistered", 2**63))
    store.suppress(Suppression("ef" * 32, 410, "Unregistered", 1234))
    row = _notification()
    store.add([row])
    assert store.flush(2.0), "the writer thread died or retries a row forever"
    assert "cannot store" in caplog.text
    assert "cd" * 32 not in caplog.text
    assert store.health().ok
    again = reopen(store)
    assert row.apns_id in [n.apns_id for n in again.load_pending()]
    assert [s.token for s in again.load_suppressed()] == ["ef" * 32]
    again.close()


def _rows_on_disk(path: Path) -> set[str]:
    check = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in check.execute("SELECT apns_id FROM notifications")}
    finally:
        check.close()


def test_a_ring_is_on_disk_when_add_returns_not_later(store: OutboxStore) -> None:
    row = _notification()
    with store.transaction():
        store.add([row])
        assert row.apns_id not in _rows_on_disk(store.path)  # one commit, at the end
    assert row.apns_id in _rows_on_disk(store.path)  # no flush, no writer thread needed
    assert store.is_durable(row.ring_id)
    store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_database_deleted_or_replaced_is_recreated_with_every_row(
    store: OutboxStore, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = [_notification(ring=f"r{i}") for i in range(3)]
    store.add(before)
    # The main file goes first, in one step, as a user's `rm` or `mv` does it: the writer
    # thread may look at any moment, and must then see what happened to it, not a
    # half-made state (it once saw "deleted" in the gap before a replacement appeared).
    if how == "replaced":
        stranger = sqlite3.connect(tmp_path / "stranger.sqlite3")
        stranger.execute("CREATE TABLE t (x)")
        stranger.close()
        os.replace(tmp_path / "stranger.sqlite3", store.path)
    else:
        store.path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink(missing_ok=True)
    after = _notification(ring="r9")
    store.add([after])
    assert store.is_durable("r9")
    assert _rows_on_disk(store.path) == {n.apns_id for n in [*before, after]}
    assert f"was {how}" in caplog.text
    assert store.health().ok
    store.close()


def test_a_failing_disk_keeps_rings_in_memory_and_says_how_many(tmp_path: Path) -> None:
    store = OutboxStore(tmp_path / "outbox.sqlite3", max_page_count=8, backlog_max_rows=5)
    store.open()
    store.start()
    big = b"x" * 3000
    rows = [_notification(ring=f"r{i}", payload=big, created_at=1000.0 + i) for i in range(12)]
    for row in rows:
        store.add([row])
    health = store.health()
    assert not health.ok
    assert "disk full" in (health.last_error or "")
    assert health.unwritten_rows == 5  # the memory bound: the oldest went first
    assert health.dropped_rings >= 1
    assert not store.is_durable("r11")
    assert any("5 accepted rings (5 pushes) not on disk yet" in p for p in health.problems)
    assert any(f"{health.dropped_rings} accepted rings dropped" in p for p in health.problems)
    store.close()


def test_acknowledge_clears_the_notices_of_losses_that_are_over(tmp_path: Path) -> None:
    """Files moved aside and rings dropped are notices; a disk still failing is not."""
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    (tmp_path / TOKENS_FILE).write_bytes(b"nor is this" * 100)
    store = OutboxStore(path, max_page_count=8, backlog_max_rows=5)
    store.open()
    store.start()
    for i in range(12):
        store.add([_notification(ring=f"r{i}", payload=b"x" * 3000, created_at=1000.0 + i)])
    health = store.health()
    assert health.dropped_rings >= 1
    failing = [p for p in health.problems if "not on disk yet" in p]
    notices = sorted(set(health.problems) - set(failing))
    assert [n.split(":")[0] for n in notices] == [
        f"{health.dropped_rings} accepted rings dropped from memory before the disk took them"
        f" (bound {BACKLOG_MAX_ROWS} pushes; `edgebell acknowledge` or a restart clears this"
        " notice)",
        "outbox was corrupt at start",
        "token state was corrupt at start",
    ]
    assert store.acknowledge() == notices
    after = store.health()
    assert after.problems == failing  # the disk is still full: that stays
    assert (after.moved_aside, after.tokens_moved_aside, after.dropped_rings) == (None, None, 0)
    assert store.acknowledge() == []
    assert list(tmp_path.glob("outbox.sqlite3.corrupt-*"))  # the files stay
    store.close()


def test_the_token_state_is_kept_apart_from_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    store = OutboxStore(path)
    store.open()
    store.start()
    store.suppress(Suppression("cd" * 32, 410, "Unregistered", 1234))
    store.put_value("tokens.ver", b"17")
    store.close()
    path.write_bytes(b"this is not a database" * 100)  # the outbox is lost ...
    again = OutboxStore(path)
    again.open()
    assert again.health().moved_aside is not None
    # ... the token list's ver and Apple's verdicts are not.
    assert again.load_value("tokens.ver") == b"17"
    assert [s.token for s in again.load_suppressed()] == ["cd" * 32]
    again.close()
