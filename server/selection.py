"""Selection: check-ins, eligibility, seats, pace steering (Bonawitz et al. 2019, Sec. 2.2).

A check-in from an eligible device that is not resting gets a seat in an open round of
its population that still wants devices. If the round is configured (its base model
exists) the seat comes with a task at once; if it is a pipelined round still waiting for
the round before it, the device is told to come back about when that round should end
("selected_waiting") and claims its task then. A device without a seat is told when to
come back (pace steering, :mod:`fedkb.server.pacing`).

:class:`Selection` is owned by the round machine, which passes it the rounds and the
config in force on every call; it never changes a round's phase (the machine does).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Mapping

from fedkb.server import pacing
from fedkb.server.config import RoundConfig
from fedkb.server.db import Database
from fedkb.server.devices import DeviceRegistry
from fedkb.server.metrics import ServerMetrics
from fedkb.server.rounds import KIND_OF, TRAIN, TRAINING, RoundState
from fedkb.server.tasks import TaskBook, TaskRecord
from fedkb.wire import CheckinResponse, Conditions

Rounds = Mapping[int, RoundState]


class Selection:
    """Seats in open rounds, who is resting, and when to ask devices back."""

    def __init__(self, db: Database, devices: DeviceRegistry, metrics: ServerMetrics,
                 rng: random.Random, tasks: TaskBook) -> None:
        self.devices, self.metrics, self.rng, self.tasks = devices, metrics, rng, tasks
        # device id -> the round that selected it before that round's model existed
        self._seats: dict[str, int] = {}
        # device id -> model version its latest accepted training report started from
        self._trained_from: dict[str, int] = {
            r["device_id"]: int(r["v"]) for r in db.query(
                "SELECT device_id, MAX(model_version) v FROM tasks WHERE kind = ? AND "
                "state = 'reported' GROUP BY device_id", (TRAIN,))}
        # how long the last committed training rounds took from selection to commit
        self._recent_s: deque[float] = deque(maxlen=5)

    def checkin(self, device_id: str, population: str, conditions: Conditions,
                cfg: RoundConfig, rounds: Rounds, model_version: int | None, now: float,
                ) -> CheckinResponse | TaskRecord:
        """A task for the device (its outstanding one, or one just assigned) or the answer
        to send it instead ("come back in N seconds", and why)."""
        kind = KIND_OF[population]
        busy = self.tasks.outstanding(device_id)
        if busy is not None:  # a lost answer or a restarted phone: the same task again
            self.metrics.checkins.labels("task_again").inc()
            return busy
        held = rounds.get(self._seats.get(device_id, -1))
        why = pacing.ineligibility(conditions, cfg)
        if why is not None:
            if held is not None:  # selected, but no longer able to train: free the seat
                self._release(held, device_id)
            self.metrics.checkins.labels("ineligible").inc()
            return CheckinResponse(retry_after_s=pacing.ineligible_retry(cfg, self.rng),
                                   reason=why)
        if held is not None:
            return self._claim_or_wait(held, device_id, cfg, rounds, now)
        resting = kind == TRAIN and self._resting(device_id, cfg, model_version)
        for rnd in rounds.values():
            if rnd.kind == kind and rnd.wants_devices() and device_id not in rnd.devices \
                    and not resting:
                rnd.devices.add(device_id)  # a seat: claimed at once if the model is there
                rnd.stats.selected += 1
                self._seats[device_id] = rnd.id
                return self._claim_or_wait(rnd, device_id, cfg, rounds, now)
        reason = "no_model" if model_version is None else (
            "recently_trained" if resting else "no_round")
        goal = cfg.report_goal if kind == TRAIN else cfg.eval_goal
        self.metrics.checkins.labels("retry").inc()
        return CheckinResponse(
            retry_after_s=pacing.steer(self.devices.count(population), cfg.target(goal), cfg,
                                       self.rng),
            reason=reason)

    def wait_for_claim(self, device_id: str, timeout_s: float, rounds: Rounds,
                       changed: threading.Condition) -> bool:
        """Hold a device selected ahead until its round is configured (or its seat is gone),
        at most ``timeout_s`` wall seconds; True if it should check in again now.

        The request handler calls this between two check-ins instead of answering
        "selected_waiting": the device then claims its task the moment the model exists,
        as over an open stream, rather than polling every ``claim_poll_s``. ``changed`` is
        the round machine's condition (on its lock), notified when a round is configured
        or closes.
        """
        end = time.monotonic() + timeout_s
        with changed:
            while True:
                rnd = rounds.get(self._seats.get(device_id, -1))
                if rnd is None or rnd.configured:
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                changed.wait(left)

    def drop_seats(self, rnd: RoundState) -> int:
        """Forget the seats of ``rnd`` not yet claimed; how many there were."""
        unclaimed = [d for d, rid in self._seats.items() if rid == rnd.id]
        for device_id in unclaimed:
            del self._seats[device_id]
        return len(unclaimed)

    def trained(self, device_id: str, version: int) -> None:
        """``device_id``'s training report on ``version`` was accepted: it rests."""
        self._trained_from[device_id] = version

    def round_took(self, seconds: float) -> None:
        """A training round committed ``seconds`` after its selection closed."""
        self._recent_s.append(seconds)

    def _resting(self, device_id: str, cfg: RoundConfig, model_version: int | None) -> bool:
        """Whether the device trained too recently to be given another training task."""
        last = self._trained_from.get(device_id)
        return (last is not None and model_version is not None and
                model_version < last + cfg.rejoin_after_rounds)

    def _claim_or_wait(self, rnd: RoundState, device_id: str, cfg: RoundConfig,
                       rounds: Rounds, now: float) -> CheckinResponse | TaskRecord:
        """A device with a seat in ``rnd``: its task, or (no model yet) "come back soon"."""
        if rnd.configured:
            task = self.tasks.assign(rnd, device_id, now)  # raises (disk full): seat kept
            del self._seats[device_id]
            self.metrics.checkins.labels("task").inc()
            self.metrics.selected.labels(rnd.kind).inc()
            return task
        self.metrics.checkins.labels("selected_waiting").inc()
        retry = self._claim_retry(cfg, rounds, now)
        rnd.claim_by = max(rnd.claim_by, now + retry)  # selection waits for it at least so long
        return CheckinResponse(retry_after_s=retry, reason="selected_waiting")

    def _claim_retry(self, cfg: RoundConfig, rounds: Rounds, now: float) -> float:
        """When a device selected ahead should come back: when the round training now may
        end at the earliest (its shortest recent duration), at least ``claim_poll_s``."""
        running = [r for r in rounds.values() if r.kind == TRAIN and r.configured]
        wait = 0.0
        if running and running[0].state == TRAINING and self._recent_s:
            start = running[0].selection_closed_at
            assert start is not None
            wait = (start + min(self._recent_s) - now) * \
                self.rng.uniform(1.0 - cfg.retry_jitter, 1.0)
        return round(max(cfg.claim_poll_s, wait), 3)

    def _release(self, rnd: RoundState, device_id: str) -> None:
        """Give back the seat of a device selected ahead of its round's model."""
        del self._seats[device_id]
        rnd.devices.discard(device_id)
        rnd.stats.selected -= 1
        self.metrics.checkins.labels("released").inc()
