"""Tasks: one device's assignment in one round, and the book of the open rounds' tasks.

Every task carries its round's plan with a batch-order seed of its own
(:attr:`fedkb.wire.Plan.seed`, which the phone's batching uses): the fleet logs it per
client, and the TFF engine replays each client's batches from it exactly. The seeds come
from the operating system (:mod:`secrets`), not from the server's seeded ``rng``: that one
restarts its sequence when the server restarts (so tasks after a restart would repeat
earlier seeds) and also jitters pace steering, which a draw per task would perturb. A
run is reproduced from the seeds it logged, not from the server's seed.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass
from typing import Any

from fedkb.server.db import Database
from fedkb.server.rounds import RoundState
from fedkb.wire import Plan, Task

SEED_BITS = 31  # a non-negative int32: every runtime's integer, and any RNG's seed
ROTATION_SEED_BITS = 63  # fedkb.compression.rotate takes 64 bits; SQLite's JSON keeps 63


def new_seed() -> int:
    """A fresh batch-order seed for one task."""
    return secrets.randbits(SEED_BITS)


@dataclass
class TaskRecord:
    """One device's assignment in one round. States: assigned, reported, aborted, late."""

    id: str
    round_id: int
    device_id: str
    kind: str
    model_version: int
    plan: Plan
    assigned_at: float
    state: str = "assigned"
    upload_sha256: str | None = None
    response: dict[str, Any] | None = None

    @staticmethod
    def new_id() -> str:
        return "t-" + secrets.token_hex(12)

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "round_id": self.round_id, "device_id": self.device_id,
                "kind": self.kind, "model_version": self.model_version,
                "plan": json.dumps(self.plan.to_json()), "state": self.state,
                "assigned_at": self.assigned_at}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> TaskRecord:
        return cls(r["id"], r["round_id"], r["device_id"], r["kind"], r["model_version"],
                   Plan.from_json(r["plan"]), r["assigned_at"], r["state"],
                   r["upload_sha256"], r["response"])


class TaskBook:
    """The tasks of open rounds by id, and the task each device still owes an answer for."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._tasks: dict[str, TaskRecord] = {}
        self._outstanding: dict[str, str] = {}  # device id -> its task id

    def assign(self, rnd: RoundState, device_id: str, now: float) -> TaskRecord:
        """A task of ``rnd`` for ``device_id``: the round's plan on the round's base model,
        with a seed of its own."""
        plan = dataclasses.replace(rnd.plan, seed=new_seed())
        if plan.rotate:  # the rotation's signs: a seed per task, kept here with the plan
            plan = dataclasses.replace(plan, rotation_seed=secrets.randbits(ROTATION_SEED_BITS))
        rec = TaskRecord(TaskRecord.new_id(), rnd.id, device_id, rnd.kind, rnd.base_version,
                         plan, now)
        self._db.insert("tasks", rec.row())
        self._tasks[rec.id] = rec
        self._outstanding[device_id] = rec.id
        rnd.task_ids.append(rec.id)
        return rec

    def get(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    def outstanding(self, device_id: str) -> TaskRecord | None:
        """The task ``device_id`` was given and has not answered, if any."""
        return self._tasks.get(self._outstanding.get(device_id, ""))

    def answered(self, task: TaskRecord) -> None:
        """``task``'s device reported or aborted it: it is free for another."""
        if self._outstanding.get(task.device_id) == task.id:
            del self._outstanding[task.device_id]

    def close_round(self, rnd: RoundState) -> None:
        """Forget the tasks of a round that closed (later answers are read from the db)."""
        for tid in rnd.task_ids:
            task = self._tasks.pop(tid, None)
            if task is not None:
                self.answered(task)


def wire_task(rec: TaskRecord, rnd: RoundState, now: float) -> Task:
    """The task as sent to its device: where its model is, and how long it has."""
    return Task(task_id=rec.id, round_id=rec.round_id, model_version=rec.model_version,
                plan=rec.plan, weights_url=f"/v1/models/{rec.model_version}/weights",
                artifact_url=f"/v1/models/{rec.model_version}",
                deadline_s=round(rnd.time_left(now), 3))
