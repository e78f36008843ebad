"""The server's SQLite state: devices, rounds, tasks, model versions, metrics, settings.

One connection shared by the WSGI threads (``check_same_thread=False``) behind a lock,
in WAL mode; the database file and its WAL and SHM files are 0600. Rows are the durable
record; the live round state is rebuilt from them on start (see
:mod:`fedkb.server.rounds`). Round statistics are a JSON column so new counters need
no migration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fedkb.server.state_dir import FILE_MODE, make_private

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, population TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
    registered_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL,
    base_version INTEGER NOT NULL, goal INTEGER NOT NULL, target INTEGER NOT NULL,
    min_reports INTEGER NOT NULL, opened_at REAL NOT NULL, selection_closed_at REAL,
    deadline REAL, closed_at REAL, committed_version INTEGER, reason TEXT,
    stats TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, round_id INTEGER NOT NULL, device_id TEXT NOT NULL,
    kind TEXT NOT NULL, model_version INTEGER NOT NULL, plan TEXT NOT NULL,
    state TEXT NOT NULL, assigned_at REAL NOT NULL, finished_at REAL,
    upload_sha256 TEXT, response TEXT, num_examples INTEGER, reason TEXT);
CREATE INDEX IF NOT EXISTS tasks_round ON tasks(round_id);
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY, round_id INTEGER, file TEXT NOT NULL, sha256 TEXT NOT NULL,
    created_at REAL NOT NULL, damaged INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS metrics (
    round_id INTEGER NOT NULL, model_version INTEGER NOT NULL, kind TEXT NOT NULL,
    name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (round_id, name));
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Database:
    """A locked SQLite connection with a few typed helpers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._after: list[Callable[[], None]] = []  # run once the open transaction commits
        # 0600 before SQLite opens it: SQLite gives the -wal and -shm files the mode of
        # the database file, so none of them is readable by others
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        for suffix in ("", "-wal", "-shm", "-journal"):
            make_private(self.path.with_name(self.path.name + suffix))
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements inside commit together or not at all."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._after.clear()
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except BaseException:  # e.g. a full disk: SQLite may have rolled back already
                self._after.clear()
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            after, self._after = self._after, []
            for fn in after:
                try:
                    fn()
                except Exception:  # the commit stands; the follow-up is logged
                    log.exception("after-commit action failed")

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the open :meth:`transaction` commits (dropped on rollback).

        Outside a transaction ``fn`` runs at once. Used for files that must only ever name
        committed rows (``checkpoints/latest.safetensors``).
        """
        with self._lock:
            if self._conn.in_transaction:
                self._after.append(fn)
                return
        fn()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    # --- settings ------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        row = self.one("SELECT value FROM kv WHERE key = ?", (key,))
        return json.loads(row["value"]) if row else default

    def forget(self, key: str) -> None:
        """Delete a setting so that its bytes are gone from the files too (secure_delete
        zeroes the row; the checkpoint empties the WAL that still held it)."""
        with self._lock:
            self._conn.execute("PRAGMA secure_delete=ON")
            self._conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._conn.execute("PRAGMA secure_delete=OFF")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def put(self, key: str, value: Any) -> None:
        self.execute("INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) "
                     "DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    # --- rows ----------------------------------------------------------------------------

    def insert(self, table: str, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(row.values()))

    def update(self, table: str, key: str, key_value: Any, changes: dict[str, Any]) -> None:
        sets = ", ".join(f"{c} = ?" for c in changes)
        self.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?",
                     [*changes.values(), key_value])


def row_dict(row: sqlite3.Row | None) -> dict[str, Any] | None:
    """A row as a dict, JSON columns (``stats``, ``plan``, ``response``) decoded."""
    if row is None:
        return None
    d = dict(row)
    for k in ("stats", "plan", "response"):
        if isinstance(d.get(k), str):
            d[k] = json.loads(d[k])
    return d
