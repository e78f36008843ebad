"""Reporting: uploads and aborts of selected devices (Bonawitz et al. 2019, Sec. 2.2).

An upload is checked against its task (owner, state, an identical retry gets the earlier
answer), decoded and validated (:meth:`Reporting.decode`, which the round machine runs
outside its lock), then folded into its round's streaming aggregator
(:meth:`Reporting.fold`, under the lock), which also records the upload's size on the
wire (its Content-Length) and the bytes the phone says it downloaded for the task. The
fold returns a :class:`Report`: whether the round still wants reports
(:attr:`Outcome.FOLDED`) or this one completed its goal (:attr:`Outcome.GOAL_REACHED`);
the machine acts on it, and commits. A report for a round that has closed is refused
and counted (late, or round abandoned) in that round's stats, as is every other
refusal: failures are data.
"""

from __future__ import annotations

import enum
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedkb.server.db import Database, row_dict
from fedkb.server.errors import Conflict, Forbidden, NotFound
from fedkb.server.metrics import ServerMetrics
from fedkb.server.rounds import ABANDONED, COMMITTED, RoundState, RoundStats, count_bytes
from fedkb.server.tasks import TaskBook, TaskRecord
from fedkb.server.uploads import UploadLimits, parse_upload
from fedkb.weights import WeightSpec
from fedkb.wire import AbortResult, UploadMetadata, UploadResult

Rounds = Mapping[int, RoundState]
log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What folding one report did to its round."""

    FOLDED = "folded"  # counted; the round wants more
    GOAL_REACHED = "goal_reached"  # this report completed the round's goal


@dataclass(frozen=True)
class Report:
    """The fold of one upload: its outcome for the round, and the device's answer."""

    outcome: Outcome
    answer: UploadResult


class Reporting:
    """Checks, folds and counts the answers of selected devices (never commits)."""

    def __init__(self, db: Database, metrics: ServerMetrics, tasks: TaskBook) -> None:
        self.db, self.metrics, self.tasks = db, metrics, tasks

    def owned_task(self, device_id: str, task_id: str, rounds: Rounds) -> TaskRecord:
        """The task ``task_id`` if it is ``device_id``'s (404 / 403 otherwise, counted)."""
        task = self.tasks.get(task_id)
        if task is None:
            row = row_dict(self.db.one("SELECT * FROM tasks WHERE id = ?", (task_id,)))
            if row is None:
                self.metrics.rejections.labels("unknown_task").inc()
                raise NotFound(f"no task {task_id}", "unknown_task")
            task = TaskRecord.from_row(row)
        if task.device_id != device_id:
            self.reject(task.round_id, "wrong_device", rounds)
            raise Forbidden(f"task {task_id} belongs to another device", "wrong_device")
        return task

    def replayed(self, task: TaskRecord, digest: str, rounds: Rounds) -> UploadResult | None:
        """The earlier answer for an identical retry; :class:`Conflict` for anything else."""
        if task.state == "reported":
            if task.upload_sha256 == digest and task.response is not None:
                return UploadResult.from_json(task.response)
            self.reject(task.round_id, "already_submitted", rounds)
            raise Conflict(f"task {task.id} already has a different upload",
                           "already_submitted")
        if task.state == "aborted":
            self.reject(task.round_id, "task_aborted", rounds)
            raise Conflict(f"task {task.id} was aborted", "task_aborted")
        return None

    def open_round(self, task: TaskRecord, rounds: Rounds) -> RoundState:
        """The task's round if it still takes reports; else count the report and refuse it."""
        rnd = rounds.get(task.round_id)
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

    def decode(self, task: TaskRecord, body: bytes, specs: Sequence[WeightSpec],
               limits: UploadLimits) -> tuple[UploadMetadata, list[np.ndarray]]:
        """Parse and validate an upload (the expensive part: run it outside the lock)."""
        return parse_upload(body, task.id, task.round_id, task.kind, specs,
                            lambda rid: self.db.one("SELECT 1 FROM rounds WHERE id = ?",
                                                    (rid,)) is not None, limits, task.plan)

    def fold(self, task: TaskRecord, rnd: RoundState, meta: UploadMetadata,
             arrays: list[np.ndarray], digest: str, now: float, nbytes: int = 0) -> Report:
        """Fold a decoded upload into its open round (O(model)) and record the task.

        One step that happens completely or not at all: the task's row is written first
        (a failure there, e.g. a value SQLite cannot store, leaves the aggregator and the
        task as they were: still assigned), then the update is folded in memory; should
        the fold itself fail, the row is put back to assigned before the error goes on.
        """
        answer = UploadResult(task.id, task.round_id, "accepted", now)
        response = answer.to_json()
        self.db.update("tasks", "id", task.id, {
            "state": "reported", "finished_at": now, "upload_sha256": digest,
            "response": json.dumps(response), "num_examples": meta.num_examples})
        try:
            # a DP stage takes the phone's unclipped bit and gives every update weight 1
            dp_fold = getattr(rnd.aggregator, "accumulate_report", None)
            if dp_fold is not None:
                dp_fold(arrays, meta.unclipped)
            elif rnd.aggregator is not None:
                rnd.aggregator.accumulate(arrays, float(meta.num_examples))
        except BaseException:
            self.db.update("tasks", "id", task.id, {
                "state": "assigned", "finished_at": None, "upload_sha256": None,
                "response": None, "num_examples": None})
            raise
        scalars = {**meta.metrics, **{f"timing_{k}": v for k, v in meta.timings.items()}}
        if meta.loss is not None:
            scalars["loss"] = meta.loss
        rnd.scalars.accumulate(scalars, float(max(meta.num_examples, 1)))
        task.state, task.upload_sha256, task.response = "reported", digest, response
        self.tasks.answered(task)
        rnd.stats.reported += 1
        rnd.claim(meta.num_examples)
        count_bytes(rnd.stats, nbytes, meta.timings)
        self.metrics.uplink_bytes.labels(rnd.kind).inc(nbytes)
        self.metrics.reports.labels(rnd.kind).inc()
        done = rnd.stats.reported >= rnd.goal
        return Report(Outcome.GOAL_REACHED if done else Outcome.FOLDED, answer)

    def abort(self, device_id: str, task_id: str, reason: str, rounds: Rounds,
              now: float) -> AbortResult:
        """The device gives up its task (e.g. unplugged); counted by reason."""
        task = self.owned_task(device_id, task_id, rounds)
        if task.state == "aborted":
            return AbortResult(task.id, "aborted")
        if task.state == "reported" and task.plan.secagg:  # after its masked input
            rnd = rounds.get(task.round_id)
            if rnd is not None and rnd.secure is not None and rnd.secure.leave(task.id):
                return AbortResult(task.id, "left")
        if task.state != "assigned":
            raise Conflict(f"task {task.id} is already {task.state}", "task_finished")
        task.state = "aborted"
        self.db.update("tasks", "id", task.id, {"state": "aborted", "reason": reason,
                                                 "finished_at": now})
        self.metrics.aborts.labels(reason).inc()
        self.tasks.answered(task)
        rnd = rounds.get(task.round_id)
        if rnd is not None:
            rnd.stats.count("aborted", reason)
            save_stats(self.db, rnd)
        else:
            self._amend_closed(task.round_id, lambda s: s.count("aborted", reason))
        return AbortResult(task.id, "aborted")

    def reject_for_task(self, task_id: str, reason: str, rounds: Rounds) -> None:
        """Count a refused upload (e.g. wrong content type) against its task's round."""
        task = self.tasks.get(task_id)
        row = None if task else self.db.one("SELECT round_id FROM tasks WHERE id = ?",
                                            (task_id,))
        if task is None and row is None:
            self.metrics.rejections.labels(reason).inc()
            return
        self.reject(task.round_id if task else int(row["round_id"]), reason, rounds)  # type: ignore[index]

    def reject(self, round_id: int, reason: str, rounds: Rounds) -> None:
        """Count a refusal against round ``round_id``, open or closed."""
        self.metrics.rejections.labels(reason).inc()
        rnd = rounds.get(round_id)
        if rnd is not None:
            rnd.stats.count("rejected", reason)
            try:  # durable at once: a kill must not erase why uploads were refused
                save_stats(self.db, rnd)
            except (OSError, sqlite3.Error) as exc:  # e.g. a full disk: the refusal goes on,
                log.warning("round %d's refusal counts not saved: %s", round_id, exc)  # counted
        else:
            self._amend_closed(round_id, lambda s: s.count("rejected", reason))

    def _amend_closed(self, round_id: int, change: Callable[[RoundStats], None]) -> None:
        """Count something against a round that is no longer open (its row's stats)."""
        row = row_dict(self.db.one("SELECT stats FROM rounds WHERE id = ?", (round_id,)))
        if row is not None:
            stats = RoundStats.from_json(row["stats"])
            change(stats)
            self.db.update("rounds", "id", round_id, {"stats": json.dumps(stats.to_json())})


def save_stats(db: Database, rnd: RoundState) -> None:
    """Write an open round's counters to its row."""
    db.update("rounds", "id", rnd.id, {"stats": json.dumps(rnd.stats.to_json())})
