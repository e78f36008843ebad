"""The round loop: the model, the open rounds, deadlines, commits.

:class:`RoundLoop` drives the state machine of :mod:`fedkb.server.rounds` and never knows
the algorithm: it asks the :class:`~fedkb.server.strategy.Strategy` for a plan, an
aggregator and, at commit, the new weights. All state changes happen under one lock
(waitress serves requests from several threads); the expensive part of an upload (decode
and validation) runs outside it, and only the fold (one in-place add into an O(model)
accumulator) runs inside.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from fedkb.codec import CodecError
from fedkb.server.artifact import ModelArtifact
from fedkb.server.checkpoints import Checkpoint, CheckpointStore
from fedkb.server.config import RoundConfig
from fedkb.server.db import Database, row_dict
from fedkb.server.devices import DeviceRegistry
from fedkb.server.errors import NotFound
from fedkb.server.metrics import ServerMetrics
from fedkb.server.reports import Reporting
from fedkb.server.rounds import (
    ABANDONED,
    COMMITTED,
    EVALUATE,
    OPEN_STATES,
    POPULATION_OF,
    SELECTING,
    TRAIN,
    TRAINING,
    RoundState,
    RoundStats,
    TaskRecord,
    round_json,
)
from fedkb.server.selection import Selection
from fedkb.server.strategy import Strategy

log = logging.getLogger(__name__)


class RoundLoop(Selection, Reporting):
    """Owns the global model, the open rounds, and every transition between them.

    Check-ins and seats are in :class:`~fedkb.server.selection.Selection`, uploads and
    aborts in :class:`~fedkb.server.reports.Reporting`; this class holds the state they
    share and the round lifecycle: open, configure, close selection, commit or abandon.
    """

    def __init__(self, cfg: RoundConfig, db: Database, devices: DeviceRegistry,
                 store: CheckpointStore | None, strategy: Strategy, metrics: ServerMetrics,
                 clock: Callable[[], float], rng: random.Random) -> None:
        self.cfg, self.db, self.devices, self.store = cfg, db, devices, store
        self.strategy, self.metrics, self.clock, self.rng = strategy, metrics, clock, rng
        self.lock = threading.RLock()
        # notified when a round is configured or closes: held check-ins (wait_for_claim)
        self.changed = threading.Condition(self.lock)
        self.artifact: ModelArtifact | None = None
        self.model: Checkpoint | None = None
        self.open: dict[int, RoundState] = {}
        self._tasks: dict[str, TaskRecord] = {}  # tasks of open rounds
        self._busy: dict[str, str] = {}  # device id -> its outstanding task id
        # device id -> the round that selected it before that round's model existed
        self._reserved: dict[str, int] = {}
        # how long the last committed training rounds took from selection to commit
        self._recent_reporting_s: deque[float] = deque(maxlen=5)
        # device id -> model version its latest accepted training report started from
        self._trained_from: dict[str, int] = {
            r["device_id"]: int(r["v"]) for r in db.query(
                "SELECT device_id, MAX(model_version) v FROM tasks WHERE kind = ? AND "
                "state = 'reported' GROUP BY device_id", (TRAIN,))}
        self._cache: dict[int, Checkpoint] = {}
        self.damaged_versions: list[int] = []
        self.training_enabled: bool = bool(db.get("training_enabled", True))
        self._eval_queue: list[int] = list(db.get("eval_queue", []))
        self._next_round = 1 + int(db.one("SELECT COALESCE(MAX(id), 0) m FROM rounds")["m"])

    # --- start, publish, recover ---------------------------------------------------------

    def attach(self, artifact: ModelArtifact, store: CheckpointStore) -> None:
        """Serve ``artifact``; load the newest intact checkpoint, abandon rounds left open."""
        with self.lock:
            self.artifact, self.store = artifact, store
            now = self.clock()
            for r in self.db.query("SELECT * FROM rounds WHERE state IN (?, ?)", OPEN_STATES):
                stats = RoundStats.from_json(row_dict(r)["stats"])
                self.db.update("rounds", "id", r["id"], {
                    "state": ABANDONED, "reason": "server_restart", "closed_at": now,
                    "stats": _dumps(stats.to_json())})
                self.metrics.rounds.labels(r["kind"], ABANDONED).inc()
            ckpt, self.damaged_versions = store.latest()
            if ckpt is None:  # a fresh state dir (or every checkpoint damaged)
                self._publish_initial(artifact.initial_weights())
            else:
                self.strategy.load_state(ckpt.optimizer_state)
                self._serve(ckpt)

    def _next_version(self) -> int:
        return 1 + int(self.db.one("SELECT COALESCE(MAX(version), -1) m FROM models")["m"])

    def _publish_initial(self, weights: list[np.ndarray]) -> None:
        """Version 0: the artifact's initial weights."""
        assert self.store is not None
        version = self._next_version()
        file_sha, ckpt = self.store.write(version, weights, [])
        with self.db.transaction() as conn:
            self.store.record(conn, version, None, file_sha, self.clock())
        self._serve(ckpt)
        self._queue_eval(version)

    def _serve(self, ckpt: Checkpoint) -> None:
        self.model = ckpt
        self._cache[ckpt.version] = ckpt
        self.metrics.model_version.set(ckpt.version)

    def weights(self, version: int) -> Checkpoint:
        """The checkpoint of ``version`` (for downloads); :class:`NotFound` if none."""
        with self.lock:
            if self.model is not None and version == self.model.version:
                return self.model
            if version in self._cache:
                return self._cache[version]
        if self.store is None:
            raise NotFound("no model has been published", "no_model")
        try:
            ckpt = self.store.load(version)
        except (OSError, CodecError) as exc:
            raise NotFound(f"model version {version} is not available ({exc})") from exc
        with self.lock:
            if len(self._cache) > 4:
                self._cache.pop(min(k for k in self._cache if k != self.model.version))  # type: ignore[union-attr]
            self._cache[version] = ckpt
        return ckpt

    # --- admin -------------------------------------------------------------------------

    def set_training(self, enabled: bool) -> None:
        with self.lock:
            self.training_enabled = enabled
            self.db.put("training_enabled", enabled)
            self._tick()

    def set_config(self, cfg: RoundConfig) -> None:
        """New rounds use ``cfg``; open rounds keep the goal and plan they started with."""
        with self.lock:
            self.cfg = cfg
            self._tick()

    # --- time: deadlines and scheduling ------------------------------------------------------

    def tick(self) -> None:
        with self.lock:
            self._tick()

    def _tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for rnd in list(self.open.values()):
            if rnd.state == SELECTING and rnd.configured and (
                    now >= rnd.selection_deadline or (rnd.stats.selected >= rnd.target
                                                      and now >= rnd.claim_deadline)):
                self._close_selection(rnd, now)
            answered = rnd.stats.reported + sum(rnd.stats.aborted.values())
            everyone = rnd.state == TRAINING and answered >= rnd.stats.selected
            if everyone or (rnd.state == TRAINING and rnd.deadline is not None
                            and now >= rnd.deadline):
                # at the deadline, or earlier when every selected device has answered
                # (selection closed short of the goal): waiting longer cannot add reports
                if rnd.stats.reported >= rnd.min_reports:
                    self._commit(rnd, now)
                else:
                    self._abandon(rnd, now, "deadline")
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        if self.model is None:
            return
        trains = [r for r in self.open.values() if r.kind == TRAIN]
        if trains and not any(r.configured for r in trains):
            self._configure(min(trains, key=lambda r: r.id), now)
        if (self.training_enabled and not self._enough_rounds(len(trains))
                and self.devices.count(POPULATION_OF[TRAIN]) >= self.cfg.min_registered
                and not any(r.state == SELECTING for r in trains)
                and len(trains) < (2 if self.cfg.pipeline else 1)):
            # with ``pipeline`` a round opens while the one before it still trains: it
            # selects its devices now and is configured when that round closes
            self._open_round(TRAIN, self.model.version, self.cfg.report_goal, now,
                             configured=not trains)
        if self._eval_queue and not any(r.kind == EVALUATE for r in self.open.values()):
            version = self._eval_queue.pop(0)
            self.db.put("eval_queue", self._eval_queue)
            self._open_round(EVALUATE, version, self.cfg.eval_goal, now)

    def _enough_rounds(self, open_train: int) -> bool:
        limit = self.cfg.max_rounds
        return limit is not None and self.rounds_committed() + open_train >= limit

    def rounds_committed(self, kind: str = TRAIN) -> int:
        return int(self.db.one("SELECT COUNT(*) n FROM rounds WHERE kind = ? AND state = ?",
                               (kind, COMMITTED))["n"])

    def _open_round(self, kind: str, version: int, goal: int, now: float,
                    configured: bool = True) -> RoundState:
        assert self.artifact is not None
        rid, self._next_round = self._next_round, self._next_round + 1
        rnd = RoundState(
            id=rid, kind=kind, base_version=version, goal=goal, target=self.cfg.target(goal),
            min_reports=self.cfg.min_reports(goal), opened_at=now,
            selection_deadline=now + self.cfg.selection_window_s,
            plan=self.strategy.configure(kind, self.artifact.batch_size),
            aggregator=self.strategy.aggregator(self.artifact.specs) if kind == TRAIN else None,
            configured=configured)
        self.db.insert("rounds", rnd.row())
        self.open[rid] = rnd
        return rnd

    def _configure(self, rnd: RoundState, now: float) -> None:
        """The round before ``rnd`` has closed: ``rnd`` trains the model it left.

        Its devices selected so far claim their tasks on their next check-in; selection
        waits ``claim_window_s`` for them (longer if the round still wants devices).
        """
        assert self.model is not None
        rnd.configured, rnd.base_version = True, self.model.version
        rnd.claim_deadline = max(now, rnd.claim_by) + self.cfg.claim_window_s
        rnd.selection_deadline = max(rnd.selection_deadline, rnd.claim_deadline)
        self.db.update("rounds", "id", rnd.id, rnd.row())
        self.changed.notify_all()

    def _close_selection(self, rnd: RoundState, now: float) -> None:
        if rnd.state != SELECTING:
            return
        for _ in range(self._drop_reservations(rnd)):  # selected, never came for its task
            rnd.stats.count("aborted", "no_show")
            self.metrics.aborts.labels("no_show").inc()
        rnd.close_selection(now, self.cfg.reporting_deadline_s)
        self.metrics.phase.labels("selection").observe(rnd.stats.durations["selection_s"])
        if len(rnd.task_ids) < rnd.min_reports:
            self._abandon(rnd, now, "too_few_devices")
        else:
            self.db.update("rounds", "id", rnd.id, rnd.row())

    # --- commit / abandon ----------------------------------------------------------------

    def _commit(self, rnd: RoundState, now: float) -> None:
        t0 = time.perf_counter()
        if rnd.kind == EVALUATE:
            rnd.stats.metrics = rnd.scalars.result()
            self._close(rnd, COMMITTED, now)
            self._record_metrics(rnd, rnd.base_version)
            return
        assert self.model is not None and rnd.aggregator is not None
        assert rnd.base_version == self.model.version, "one configured training round at a time"
        result = rnd.aggregator.result()
        rnd.stats.measurements = dict(result.measurements)
        rnd.stats.clipped = int(result.measurements.get("clipped", 0))
        if result.value is None:
            self._abandon(rnd, now, "no_weight")
            return
        assert self.store is not None
        before = self.strategy.state()
        try:
            version = self._next_version()
            new = self.strategy.aggregate(self.model.weights, result, version)
            file_sha, ckpt = self.store.write(version, new, self.strategy.state())
        except Exception as exc:  # the model stays as it was
            log.exception("commit of round %d failed", rnd.id)
            self.strategy.load_state(before)
            self._abandon(rnd, now, f"commit_failed: {type(exc).__name__}")
            return
        rnd.stats.metrics = rnd.scalars.result()
        rnd.committed_version = version
        rnd.stats.durations["commit_s"] = round(time.perf_counter() - t0, 6)
        self._finish(rnd, now, COMMITTED, None)
        with self.db.transaction() as conn:
            self.store.record(conn, version, rnd.id, file_sha, now)
            _write_round(conn, rnd)
        self._serve(ckpt)
        self.metrics.phase.labels("commit").observe(rnd.stats.durations["commit_s"])
        self._recent_reporting_s.append(rnd.stats.durations["reporting_s"])
        self._record_metrics(rnd, rnd.base_version)
        if self.cfg.eval_every and version % self.cfg.eval_every == 0:
            self._queue_eval(version)

    def _abandon(self, rnd: RoundState, now: float, reason: str) -> None:
        self._close(rnd, ABANDONED, now, reason)
        if rnd.kind == EVALUATE and self.model is not None and \
                rnd.base_version == self.model.version and not self._eval_queue:
            self._queue_eval(rnd.base_version)  # the latest model is still unevaluated: retry

    def _close(self, rnd: RoundState, state: str, now: float, reason: str | None = None) -> None:
        self._finish(rnd, now, state, reason)
        self.db.update("rounds", "id", rnd.id, rnd.row())
        self.changed.notify_all()

    def _drop_reservations(self, rnd: RoundState) -> int:
        """Forget the seats of ``rnd`` not yet claimed; how many there were."""
        unclaimed = [d for d, rid in self._reserved.items() if rid == rnd.id]
        for device_id in unclaimed:
            del self._reserved[device_id]
        return len(unclaimed)

    def _finish(self, rnd: RoundState, now: float, state: str, reason: str | None) -> None:
        """Take the round out of the open set (the caller writes its row)."""
        rnd.close(state, now, reason)
        self.open.pop(rnd.id, None)
        self._drop_reservations(rnd)
        for tid in rnd.task_ids:
            task = self._tasks.pop(tid, None)
            if task is not None and self._busy.get(task.device_id) == tid:
                self._busy.pop(task.device_id)
        rnd.aggregator = None  # free the accumulator
        self.metrics.rounds.labels(rnd.kind, state).inc()
        self.metrics.phase.labels("reporting").observe(rnd.stats.durations["reporting_s"])

    def _record_metrics(self, rnd: RoundState, version: int) -> None:
        values = {**rnd.stats.metrics, "reports": float(rnd.stats.reported),
                  "num_examples": float(rnd.stats.num_examples)}
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO metrics(round_id, model_version, kind, name, value) "
                "VALUES (?, ?, ?, ?, ?)",
                [(rnd.id, version, rnd.kind, k, float(v)) for k, v in values.items()])

    def _queue_eval(self, version: int) -> None:
        if self.cfg.eval_every:
            self._eval_queue.append(version)
            self.db.put("eval_queue", self._eval_queue)

    # --- reading -------------------------------------------------------------------------

    def round_info(self, round_id: int) -> dict[str, Any]:
        with self.lock:
            self._tick()
            rnd = self.open.get(round_id)
            if rnd is not None:
                return round_json(rnd.row())
        row = row_dict(self.db.one("SELECT * FROM rounds WHERE id = ?", (round_id,)))
        if row is None:
            raise NotFound(f"no round {round_id}", "unknown_round")
        return round_json(row)

    def status(self) -> dict[str, Any]:
        with self.lock:
            self._tick()
            counts = {(r["kind"], r["state"]): r["n"] for r in self.db.query(
                "SELECT kind, state, COUNT(*) n FROM rounds GROUP BY kind, state")}
            trains = sorted((r for r in self.open.values() if r.kind == TRAIN),
                            key=lambda r: r.id)
            current = round_json(trains[-1].row()) if trains else None
            done = self.cfg.max_rounds is not None and \
                counts.get((TRAIN, COMMITTED), 0) >= self.cfg.max_rounds
            return {
                "model_version": self.model.version if self.model else None,
                "rounds_committed": counts.get((TRAIN, COMMITTED), 0),
                "rounds_abandoned": counts.get((TRAIN, ABANDONED), 0),
                "evaluation_rounds_committed": counts.get((EVALUATE, COMMITTED), 0),
                "evaluation_rounds_abandoned": counts.get((EVALUATE, ABANDONED), 0),
                "training": ("no_model" if self.model is None else "finished" if done
                             else "running" if self.training_enabled else "stopped"),
                "current_round": current,
                "open_rounds": [round_json(r.row()) for r in self.open.values()],
                "devices": {p: self.devices.count(p) for p in POPULATION_OF.values()},
                "damaged_versions": self.damaged_versions,
                "strategy": self.strategy.name,
                "time": self.clock(),
            }


def _dumps(obj: Any) -> str:
    return json.dumps(obj)


def _write_round(conn: Any, rnd: RoundState) -> None:
    row = rnd.row()
    sets = ", ".join(f"{k} = ?" for k in row)
    conn.execute(f"UPDATE rounds SET {sets} WHERE id = ?", [*row.values(), rnd.id])
