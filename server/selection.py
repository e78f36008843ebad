"""Selection: check-ins, eligibility, seats, pace steering (a part of :class:`RoundLoop`).

A check-in from an eligible device that is not resting gets a seat in an open round of
its population that still wants devices. If the round is configured (its base model
exists) the seat comes with a task at once; if it is a pipelined round still waiting for
the round before it, the device is told to come back about when that round should end
("selected_waiting") and claims its task then. A device without a seat is told when to
come back (pace steering, :mod:`fedkb.server.pacing`).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable

from fedkb.server import pacing
from fedkb.server.checkpoints import Checkpoint
from fedkb.server.config import RoundConfig
from fedkb.server.db import Database
from fedkb.server.devices import DeviceRegistry
from fedkb.server.metrics import ServerMetrics
from fedkb.server.rounds import KIND_OF, TRAIN, TRAINING, RoundState, TaskRecord
from fedkb.wire import CheckinResponse, Conditions, Task


class Selection:
    """Mixed into :class:`~fedkb.server.loop.RoundLoop`, whose state it uses."""

    cfg: RoundConfig
    lock: threading.RLock
    db: Database
    devices: DeviceRegistry
    metrics: ServerMetrics
    clock: Callable[[], float]
    rng: random.Random
    model: Checkpoint | None
    open: dict[int, RoundState]
    _tasks: dict[str, TaskRecord]
    _busy: dict[str, str]
    _reserved: dict[str, int]
    _trained_from: dict[str, int]
    _recent_reporting_s: deque[float]
    _tick: Callable[..., None]
    changed: threading.Condition
    _close_selection: Callable[[RoundState, float], None]

    def checkin(self, device_id: str, conditions: Conditions) -> CheckinResponse:
        population = self.devices.population(device_id)
        kind = KIND_OF[population]
        with self.lock:
            now = self.clock()
            self._tick(now)
            busy = self._tasks.get(self._busy.get(device_id, ""))
            if busy is not None:  # a lost answer or a restarted phone: the same task again
                self.metrics.checkins.labels("task_again").inc()
                return CheckinResponse(task=self._wire_task(busy, self.open[busy.round_id], now))
            held = self.open.get(self._reserved.get(device_id, -1))
            why = pacing.ineligibility(conditions, self.cfg)
            if why is not None:
                if held is not None:  # selected, but no longer able to train: free the seat
                    self._release(held, device_id)
                self.metrics.checkins.labels("ineligible").inc()
                return CheckinResponse(retry_after_s=pacing.ineligible_retry(self.cfg, self.rng),
                                       reason=why)
            if held is not None:
                return self._claim_or_wait(held, device_id, now)
            resting = kind == TRAIN and self._resting(device_id)
            for rnd in self.open.values():
                if rnd.kind == kind and rnd.wants_devices() and device_id not in rnd.devices \
                        and not resting:
                    rnd.devices.add(device_id)  # a seat: claimed at once if the model is there
                    rnd.stats.selected += 1
                    self._reserved[device_id] = rnd.id
                    return self._claim_or_wait(rnd, device_id, now)
            reason = "no_model" if self.model is None else (
                "recently_trained" if resting else "no_round")
            goal = self.cfg.report_goal if kind == TRAIN else self.cfg.eval_goal
            retry = pacing.steer(self.devices.count(population), self.cfg.target(goal),
                                 self.cfg, self.rng)
        self.metrics.checkins.labels("retry").inc()
        return CheckinResponse(retry_after_s=retry, reason=reason)

    def wait_for_claim(self, device_id: str, timeout_s: float) -> bool:
        """Hold a device selected ahead until its round is configured (or its seat is gone),
        at most ``timeout_s`` wall seconds; True if it should check in again now.

        The request handler calls this between two check-ins instead of answering
        "selected_waiting": the device then claims its task the moment the model exists,
        as over an open stream, rather than polling every ``claim_poll_s``.
        """
        end = time.monotonic() + timeout_s
        with self.lock:
            while True:
                rnd = self.open.get(self._reserved.get(device_id, -1))
                if rnd is None or rnd.configured:
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)

    def _resting(self, device_id: str) -> bool:
        """Whether the device trained too recently to be given another training task."""
        last = self._trained_from.get(device_id)
        return (last is not None and self.model is not None and
                self.model.version < last + self.cfg.rejoin_after_rounds)

    def _claim_or_wait(self, rnd: RoundState, device_id: str, now: float) -> CheckinResponse:
        """A device with a seat in ``rnd``: its task, or (no model yet) "come back soon"."""
        if rnd.configured:
            del self._reserved[device_id]
            self.metrics.checkins.labels("task").inc()
            return CheckinResponse(task=self._assign(rnd, device_id, now))
        self.metrics.checkins.labels("selected_waiting").inc()
        retry = self._claim_retry(now)
        rnd.claim_by = max(rnd.claim_by, now + retry)  # selection waits for it at least so long
        return CheckinResponse(retry_after_s=retry, reason="selected_waiting")

    def _claim_retry(self, now: float) -> float:
        """When a device selected ahead should come back: when the round training now may
        end at the earliest (its shortest recent duration), at least ``claim_poll_s``."""
        running = [r for r in self.open.values() if r.kind == TRAIN and r.configured]
        wait = 0.0
        if running and running[0].state == TRAINING and self._recent_reporting_s:
            start = running[0].selection_closed_at
            assert start is not None
            wait = (start + min(self._recent_reporting_s) - now) * \
                self.rng.uniform(1.0 - self.cfg.retry_jitter, 1.0)
        return round(max(self.cfg.claim_poll_s, wait), 3)

    def _release(self, rnd: RoundState, device_id: str) -> None:
        """Give back the seat of a device selected ahead of its round's model."""
        del self._reserved[device_id]
        rnd.devices.discard(device_id)
        rnd.stats.selected -= 1
        self.metrics.checkins.labels("released").inc()

    def _assign(self, rnd: RoundState, device_id: str, now: float) -> Task:
        """Hand a selected device its task: the round's plan on the round's base model."""
        rec = TaskRecord(TaskRecord.new_id(), rnd.id, device_id, rnd.kind, rnd.base_version,
                         rnd.plan, now)
        self.db.insert("tasks", rec.row())
        self._tasks[rec.id] = rec
        self._busy[device_id] = rec.id
        rnd.task_ids.append(rec.id)
        self.metrics.selected.labels(rnd.kind).inc()
        if rnd.stats.selected >= rnd.target and len(rnd.task_ids) == rnd.stats.selected:
            self._close_selection(rnd, now)
        return self._wire_task(rec, rnd, now)

    def _wire_task(self, rec: TaskRecord, rnd: RoundState, now: float) -> Task:
        return Task(task_id=rec.id, round_id=rec.round_id, model_version=rec.model_version,
                    plan=rec.plan, weights_url=f"/v1/models/{rec.model_version}/weights",
                    artifact_url=f"/v1/models/{rec.model_version}",
                    deadline_s=round(rnd.time_left(now, self.cfg.reporting_deadline_s), 3))
