"""Reporting: uploads and aborts of selected devices (a part of :class:`RoundLoop`).

An upload is checked against its task (owner, state, an identical retry gets the earlier
answer), decoded and validated outside the loop's lock, then folded into its round's
streaming aggregator under it; the round commits as soon as it has its goal. A report
for a round that has closed is refused and counted (late, or round abandoned) in that
round's stats, as is every other refusal: failures are data.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import numpy as np

from fedkb.server.artifact import ModelArtifact
from fedkb.server.db import Database, row_dict
from fedkb.server.errors import ApiError, Conflict, Forbidden, NotFound
from fedkb.server.metrics import ServerMetrics
from fedkb.server.rounds import ABANDONED, COMMITTED, TRAIN, RoundState, RoundStats, TaskRecord
from fedkb.server.uploads import parse_upload, upload_fingerprint
from fedkb.wire import AbortResult, UploadMetadata, UploadResult


class Reporting:
    """Mixed into :class:`~fedkb.server.loop.RoundLoop`, whose state it uses."""

    lock: threading.RLock
    db: Database
    metrics: ServerMetrics
    clock: Callable[[], float]
    artifact: ModelArtifact | None
    open: dict[int, RoundState]
    _tasks: dict[str, TaskRecord]
    _busy: dict[str, str]
    _trained_from: dict[str, int]
    _tick: Callable[..., None]
    _commit: Callable[[RoundState, float], None]

    def report(self, device_id: str, task_id: str, body: bytes) -> UploadResult:
        """Validate an upload and fold it into its round (or refuse it, counted)."""
        digest = upload_fingerprint(body)
        with self.lock:
            self._tick()
            task = self._owned_task(device_id, task_id)
            prior = self._replayed(task, digest)
            if prior is not None:
                return prior
            self._round_for_report(task)
        t0 = time.perf_counter()
        try:
            meta, arrays = self._decode(task, body)
        except ApiError as exc:
            with self.lock:
                self._reject(task.round_id, exc.code)
            raise
        with self.lock:
            self._tick()
            prior = self._replayed(task, digest)
            if prior is not None:
                return prior
            rnd = self._round_for_report(task)
            now = self.clock()
            if rnd.aggregator is not None:
                rnd.aggregator.accumulate(arrays, float(meta.num_examples))
            scalars = {**meta.metrics, **{f"timing_{k}": v for k, v in meta.timings.items()}}
            if meta.loss is not None:
                scalars["loss"] = meta.loss
            rnd.scalars.accumulate(scalars, float(max(meta.num_examples, 1)))
            result = UploadResult(task.id, task.round_id, "accepted", now)
            task.state, task.upload_sha256, task.response = "reported", digest, result.to_json()
            self.db.update("tasks", "id", task.id, {
                "state": "reported", "finished_at": now, "upload_sha256": digest,
                "response": json.dumps(task.response), "num_examples": meta.num_examples})
            self._busy.pop(device_id, None)
            if rnd.kind == TRAIN:
                self._trained_from[device_id] = task.model_version
            rnd.stats.reported += 1
            rnd.stats.num_examples += meta.num_examples
            self.metrics.reports.labels(rnd.kind).inc()
            self.metrics.fold.observe(time.perf_counter() - t0)
            if rnd.stats.reported >= rnd.goal:
                self._commit(rnd, now)
            else:
                self.db.update("rounds", "id", rnd.id, {"stats": json.dumps(rnd.stats.to_json())})
            self._tick(now)  # after a commit: configure or open the next round now
            return result

    def _owned_task(self, device_id: str, task_id: str) -> TaskRecord:
        task = self._tasks.get(task_id)
        if task is None:
            row = row_dict(self.db.one("SELECT * FROM tasks WHERE id = ?", (task_id,)))
            if row is None:
                self.metrics.rejections.labels("unknown_task").inc()
                raise NotFound(f"no task {task_id}", "unknown_task")
            task = TaskRecord.from_row(row)
        if task.device_id != device_id:
            self._reject(task.round_id, "wrong_device")
            raise Forbidden(f"task {task_id} belongs to another device", "wrong_device")
        return task

    def _replayed(self, task: TaskRecord, digest: str) -> UploadResult | None:
        """The earlier answer for an identical retry; :class:`Conflict` for anything else."""
        if task.state == "reported":
            if task.upload_sha256 == digest and task.response is not None:
                return UploadResult.from_json(task.response)
            self._reject(task.round_id, "already_submitted")
            raise Conflict(f"task {task.id} already has a different upload",
                           "already_submitted")
        if task.state == "aborted":
            self._reject(task.round_id, "task_aborted")
            raise Conflict(f"task {task.id} was aborted", "task_aborted")
        return None

    def _round_for_report(self, task: TaskRecord) -> RoundState:
        """The task's round if it still takes reports; else count the report and refuse it."""
        rnd = self.open.get(task.round_id)
        if rnd is not None:
            return rnd
        row = row_dict(self.db.one("SELECT state, reason FROM rounds WHERE id = ?",
                                   (task.round_id,)))
        assert row is not None
        after_deadline = row["state"] == ABANDONED and row["reason"] == "deadline"
        if row["state"] == COMMITTED or after_deadline or task.state == "late":
            self.metrics.late.inc()
            if task.state != "late":
                self.db.update("tasks", "id", task.id, {"state": "late"})
                task.state = "late"
            self._amend_closed(task.round_id, lambda s: setattr(s, "late", s.late + 1))
            raise Conflict(f"round {task.round_id} is closed: the report is late", "late_report")
        self.metrics.rejections.labels("round_abandoned").inc()
        self._amend_closed(task.round_id, lambda s: s.count("rejected", "round_abandoned"))
        raise Conflict(f"round {task.round_id} was abandoned ({row['reason']})",
                       "round_abandoned")

    def _decode(self, task: TaskRecord, body: bytes) -> tuple[UploadMetadata, list[np.ndarray]]:
        assert self.artifact is not None
        return parse_upload(body, task.id, task.round_id, task.kind, self.artifact.specs,
                            lambda rid: self.db.one("SELECT 1 FROM rounds WHERE id = ?",
                                                    (rid,)) is not None)

    def reject_for_task(self, task_id: str, reason: str) -> None:
        """Count a refused upload (e.g. wrong content type) against its task's round."""
        with self.lock:
            task = self._tasks.get(task_id)
            row = None if task else self.db.one("SELECT round_id FROM tasks WHERE id = ?",
                                                (task_id,))
            if task is None and row is None:
                self.metrics.rejections.labels(reason).inc()
                return
            self._reject(task.round_id if task else int(row["round_id"]), reason)  # type: ignore[index]

    def _reject(self, round_id: int, reason: str) -> None:
        self.metrics.rejections.labels(reason).inc()
        rnd = self.open.get(round_id)
        if rnd is not None:
            rnd.stats.count("rejected", reason)
        else:
            self._amend_closed(round_id, lambda s: s.count("rejected", reason))

    def _amend_closed(self, round_id: int, change: Callable[[RoundStats], None]) -> None:
        """Count something against a round that is no longer open (its row's stats)."""
        row = row_dict(self.db.one("SELECT stats FROM rounds WHERE id = ?", (round_id,)))
        if row is not None:
            stats = RoundStats.from_json(row["stats"])
            change(stats)
            self.db.update("rounds", "id", round_id, {"stats": json.dumps(stats.to_json())})

    def abort(self, device_id: str, task_id: str, reason: str) -> AbortResult:
        """The device gives up its task (e.g. unplugged); counted by reason."""
        with self.lock:
            task = self._owned_task(device_id, task_id)
            if task.state == "aborted":
                return AbortResult(task.id, "aborted")
            if task.state != "assigned":
                raise Conflict(f"task {task.id} is already {task.state}", "task_finished")
            task.state = "aborted"
            self.db.update("tasks", "id", task.id, {"state": "aborted", "reason": reason,
                                                     "finished_at": self.clock()})
            self.metrics.aborts.labels(reason).inc()
            if self._busy.get(device_id) == task.id:
                self._busy.pop(device_id)
            rnd = self.open.get(task.round_id)
            if rnd is not None:
                rnd.stats.count("aborted", reason)
                self.db.update("rounds", "id", rnd.id, {"stats": json.dumps(rnd.stats.to_json())})
            else:
                self._amend_closed(task.round_id, lambda s: s.count("aborted", reason))
            return AbortResult(task.id, "aborted")
