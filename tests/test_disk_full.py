"""A full disk (issue 19, item 9): clear 507s, no skipped round ids, no round stuck open,
and "accepted" exactly as durable as :mod:`fedkb.server.storage` promises.

The disk fills where it would: the checkpoint file's write (``OSError`` ENOSPC, injected
into :func:`fedkb.server.checkpoints.atomic_write`) and SQLite statements, the COMMIT
included (``sqlite3.OperationalError`` "database or disk is full", from a connection
that fails the statements a test names). One test fills a real file: a child process
under ``RLIMIT_FSIZE``.
"""

from __future__ import annotations

import errno
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from server_support import deltas, harness, initial_weights

from fedkb.server import checkpoints
from fedkb.server.storage import is_storage_full


class FullDisk:
    """A SQLite connection whose statements matching ``pattern`` fail as on a full disk
    (while ``on``); everything else goes through."""

    def __init__(self, conn: sqlite3.Connection, pattern: str) -> None:
        self._conn, self._pattern, self.on, self.failed = conn, re.compile(pattern), True, 0

    def _check(self, sql: str) -> None:
        if self.on and self._pattern.search(sql):
            self.failed += 1
            raise sqlite3.OperationalError("database or disk is full")

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._check(sql)
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        self._check(sql)
        return self._conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def fill(h: Any, pattern: str) -> FullDisk:
    db = h.state.db
    db._conn = FullDisk(db._conn, pattern)
    return db._conn


def no_room(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Checkpoint files cannot be written (ENOSPC); call the result to make room."""
    real = checkpoints.atomic_write

    def full(path: Any, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoints, "atomic_write", full)
    return lambda: monkeypatch.setattr(checkpoints, "atomic_write", real)


def row(h: Any, sql: str, *params: Any) -> Any:
    return h.state.db.one(sql, params)


def first_round(h: Any) -> tuple[list[Any], list[dict]]:
    devs = [h.register() for _ in range(3)]
    return devs, [d.task() for d in devs]


def assert_abandoned_for_storage(h: Any, round_id: int) -> None:
    r = h.client.get(f"/v1/rounds/{round_id}").get_json()
    assert (r["state"], r["reason"], r["committed_version"]) == (
        "abandoned", "storage_full", None), r
    db_row = row(h, "SELECT state, reason FROM rounds WHERE id = ?", round_id)
    assert (db_row["state"], db_row["reason"]) == ("abandoned", "storage_full")
    assert row(h, "SELECT COUNT(*) n FROM models")["n"] == 1  # version 0 only
    assert h.status()["model_version"] == 0
    for got, w0 in zip(h.global_weights(), initial_weights(), strict=True):
        np.testing.assert_array_equal(got, w0)


def test_a_checkpoint_that_cannot_be_written_abandons_its_round_and_skips_nothing(
        tmp_path, monkeypatch):
    h = harness(tmp_path, pipeline=False)
    devs, tasks = first_round(h)
    make_room = no_room(monkeypatch)
    assert devs[0].upload(tasks[0], deltas(1.0)).status_code == 200
    last = devs[1].upload(tasks[1], deltas(1.0))  # the goal: the commit fails
    # accepted = recorded: its task row says reported, and a retry gets the same answer
    assert last.status_code == 200 and last.get_json()["status"] == "accepted"
    assert row(h, "SELECT state FROM tasks WHERE id = ?", tasks[1]["task_id"])["state"] == \
        "reported"
    assert devs[1].upload(tasks[1], deltas(1.0)).get_json() == last.get_json()
    assert_abandoned_for_storage(h, 1)
    assert not list((h.state.state_dir / "checkpoints").glob(".*tmp*"))
    # nothing stuck: the next round is open, with the next id
    assert [r["id"] for r in h.status()["open_rounds"]] == [2]
    make_room()
    devs2, tasks2 = first_round(h)
    for d, t in zip(devs2[:2], tasks2[:2], strict=True):
        assert t["round_id"] == 2 and d.upload(t, deltas(2.0)).status_code == 200
    r = h.client.get("/v1/rounds/2").get_json()
    assert (r["state"], r["committed_version"]) == ("committed", 1)
    for got, w0 in zip(h.global_weights(), initial_weights(), strict=True):
        np.testing.assert_allclose(got, w0 + 2.0)  # round 1's updates are in no model


@pytest.mark.parametrize("statement", [r"INTO models", r"^COMMIT"])
def test_a_commit_transaction_on_a_full_disk_leaves_no_half_committed_round(
        tmp_path, statement):
    h = harness(tmp_path, pipeline=False)
    devs, tasks = first_round(h)
    assert devs[0].upload(tasks[0], deltas(1.0)).status_code == 200
    disk = fill(h, statement)
    assert devs[1].upload(tasks[1], deltas(1.0)).status_code == 200
    assert disk.failed == 1
    disk.on = False
    assert_abandoned_for_storage(h, 1)
    store = h.state.state_dir / "checkpoints"
    assert (store / "latest.safetensors").resolve().name == "v000000.safetensors"
    # the file written before the failed transaction has no row: never served, and the
    # next commit takes its version number
    devs2, tasks2 = first_round(h)
    for d, t in zip(devs2[:2], tasks2[:2], strict=True):
        assert d.upload(t, deltas(3.0)).status_code == 200
    assert h.client.get("/v1/rounds/2").get_json()["committed_version"] == 1
    assert (store / "latest.safetensors").resolve().name == "v000001.safetensors"


def test_an_upload_that_cannot_be_recorded_is_507_and_accepted_on_retry(tmp_path):
    h = harness(tmp_path, pipeline=False)
    devs, tasks = first_round(h)
    disk = fill(h, r"^UPDATE tasks")
    r = devs[0].upload(tasks[0], deltas(1.0))
    assert r.status_code == 507 and r.headers["Retry-After"].isdigit()
    assert r.get_json()["error"]["code"] == "storage_full"
    disk.on = False
    info = h.client.get("/v1/rounds/1").get_json()
    assert info["reported"] == 0 and info["rejected"] == {"storage_full": 1}
    assert row(h, "SELECT state FROM tasks WHERE id = ?", tasks[0]["task_id"])["state"] == \
        "assigned"
    assert devs[0].upload(tasks[0], deltas(1.0)).status_code == 200  # folded once
    assert devs[1].upload(tasks[1], deltas(3.0)).status_code == 200
    for got, w0 in zip(h.global_weights(), initial_weights(), strict=True):
        np.testing.assert_allclose(got, w0 + 2.0)  # (1 + 3) / 2: the first counted once


def test_checkins_and_round_opening_on_a_full_disk(tmp_path):
    h = harness(tmp_path, pipeline=False)
    dev = h.register()
    disk = fill(h, r"^INSERT INTO tasks")
    r = h.client.post("/v1/checkin", headers=dev.auth, json={"conditions": {
        "charging": True, "unmetered": True, "idle": True, "battery": 0.9}})
    assert r.status_code == 507 and r.get_json()["error"]["code"] == "storage_full"
    disk.on = False
    task = dev.task()  # its seat was kept: the task now
    assert task["round_id"] == 1 and h.client.get("/v1/rounds/1").get_json()["selected"] == 1
    # a round that cannot be written does not open, and takes no id
    others = [h.register() for _ in range(2)]
    disk = fill(h, r"^INSERT INTO rounds")
    dev.upload(task, deltas(1.0))
    others[0].upload(others[0].task(), deltas(1.0))  # goal: round 1 commits, 2 cannot open
    assert h.status()["open_rounds"] == [] and disk.failed >= 1
    assert others[1].checkin()["reason"] == "no_round"
    disk.on = False
    assert others[1].task()["round_id"] == 2


def test_a_closed_rounds_row_is_written_once_there_is_room(tmp_path):
    h = harness(tmp_path, pipeline=False)
    first_round(h)
    disk = fill(h, r"^UPDATE rounds")
    h.clock.advance(25)  # past the reporting deadline, no report: abandoned
    h.state.machine.tick()
    assert 1 not in h.state.machine.open
    assert len(h.state.machine.unsaved) == 1
    assert row(h, "SELECT state FROM rounds WHERE id = 1")["state"] == "training"
    disk.on = False
    h.state.machine.tick()
    assert len(h.state.machine.unsaved) == 0
    assert tuple(row(h, "SELECT state, reason FROM rounds WHERE id = 1")) == (
        "abandoned", "deadline")


CHILD = r"""
import resource, sys
from fedkb.server import checkpoints
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    checkpoints.atomic_write(__import__("pathlib").Path(sys.argv[1]), b"x" * 100_000)
except OSError as exc:
    from fedkb.server.storage import is_storage_full
    print("full" if is_storage_full(exc) else f"other {exc!r}")
else:
    print("written")
"""


def test_a_real_file_size_limit_is_recognised_as_a_full_disk(tmp_path):
    target = tmp_path / "v000001.safetensors"
    out = subprocess.run([sys.executable, "-c", CHILD, str(target)], capture_output=True,
                         text=True, timeout=60,  # SIGXFSZ ignored: write() gets EFBIG
                         preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
    assert out.stdout.strip() == "full", out.stderr
    assert not target.exists() and not list(tmp_path.glob(".*tmp*"))
    assert is_storage_full(OSError(errno.EFBIG, "File too large"))
    assert is_storage_full(sqlite3.OperationalError("database or disk is full"))
    assert not is_storage_full(OSError(errno.EACCES, "Permission denied"))
