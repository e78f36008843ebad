"""The Ray fleet's two actors and the compute they share (imported only with Ray).

- :class:`PhoneShard` owns a range of the fleet's phones for the whole run: the same
  :class:`~fedkb.device_runtime.worker.Worker` event loop and per-phone state as a
  multiprocessing worker, started in its constructor (so a restarted actor starts again:
  its phones register anew). Its compute is :class:`RayCompute`: a task's job goes onto
  the cluster's one bounded job queue; the result comes back by an actor call.
- :class:`TrainingWorker` runs a Worker with no phones: only its training thread does
  anything, taking any shard's job from the queue (:class:`PulledCompute`), training with
  its own cached LiteRT interpreter per model version, and calling the job's owner back.

Deadlines cross machines in wall-clock time (``time.time()``), not ``time.monotonic()``,
which is per machine. A job whose result never comes back (its training worker's node
died) is given up by the owner once its task's deadline has passed: the phone is free
again and the server counts the task as a dropout.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import Counter
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.queue import Empty, Full

from fedkb.device_runtime.clock import SimClock
from fedkb.device_runtime.compute import Done, Job
from fedkb.device_runtime.faults import injector
from fedkb.device_runtime.phone import Outcome

GRACE_S = 5.0  # wall seconds past a task's deadline before its job counts as lost


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def shared_clock(speedup: float, start_hour: float, wall0_epoch: float) -> SimClock:
    """The fleet's simulated clock on any node: its zero is a wall-clock instant."""
    clock = SimClock(speedup, start_hour)
    clock._wall0 = time.monotonic() - (time.time() - wall0_epoch)
    return clock


class _Inbox(queue.Queue):
    """The results a shard's event loop reads; each read first gives up overdue jobs."""

    def __init__(self, compute: RayCompute) -> None:
        super().__init__()
        self._compute = compute

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self._compute.expire()
        return super().get(block, timeout)


class RayCompute:
    """A shard's compute: jobs to the cluster's queue, results back from any worker."""

    def __init__(self, owner: int, jobs: Any, counts: Counter | None = None) -> None:
        self.owner = owner
        self.incarnation = uuid.uuid4().hex  # results for an earlier life are dropped
        self._jobs = jobs
        self.counts: Counter = counts if counts is not None else Counter()
        self._lock = threading.Lock()
        self._out: dict[int, tuple[float, Job]] = {}  # job id -> (give up at, job)
        self.results = _Inbox(self)

    def submit(self, job: Job) -> None:
        with self._lock:
            self._out[job.job_id] = (time.monotonic() + job.task.deadline_s + GRACE_S, job)
        try:
            self._jobs.put_nowait((self.incarnation, time.time(), job))
        except (Full, RayError) as exc:
            # Back-pressure: the queue is full (or gone), so the task is given back now,
            # as one whose deadline passed before a training worker took it.
            self.counts["queue_full" if isinstance(exc, Full) else "queue_unreachable"] += 1
            self._give_back(job, Outcome(job.task, job.t_task, "abort", reason="deadline"))

    def _give_back(self, job: Job, outcome: Outcome | None) -> None:
        with self._lock:
            if self._out.pop(job.job_id, None) is None:
                return
        self.results.put(Done(self.owner, job.job_id, outcome, job.phone.cached_version,
                              job.phone.has_artifact))

    def deliver(self, incarnation: str, done: Done) -> None:
        with self._lock:
            if incarnation != self.incarnation or self._out.pop(done.job_id, None) is None:
                return  # a result for an earlier life of this shard, or given up on
        self.results.put(done)

    def expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            overdue = [job for t, job in self._out.values() if t < now]
        for job in overdue:  # lost with its training worker: the phone is free again
            self.counts["lost_jobs"] += 1
            self._give_back(job, None)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._out)

    def take(self, timeout: float) -> Job | None:
        time.sleep(timeout)  # a shard trains nothing itself: the training workers do
        return None

    def finish(self, done: Done) -> None:
        self.results.put(done)

    def close(self) -> None:
        pass


class PulledCompute:
    """A training worker's compute: any shard's job from the queue, its result to its owner."""

    def __init__(self, jobs: Any, owners: list[Any]) -> None:
        self._jobs = jobs
        self._owners = owners
        self._tags: dict[tuple[int, int], str] = {}
        self.results: queue.Queue = queue.Queue()  # nothing: this worker owns no phones
        self.taken = 0

    def submit(self, job: Job) -> None:
        raise RuntimeError("a training worker owns no phones")

    def take(self, timeout: float) -> Job | None:
        try:
            tag, sent, job = self._jobs.get(timeout=timeout)
        except Empty:
            return None
        except RayError:  # the queue's actor is restarting: try again shortly
            time.sleep(timeout)
            return None
        # its deadline counts from when the owner got the task, on the owner's machine
        job.received = time.monotonic() - max(0.0, time.time() - sent)
        self._tags[(job.owner, job.job_id)] = tag
        self.taken += 1
        return job

    def finish(self, done: Done) -> None:
        tag = self._tags.pop((done.owner, done.job_id), "")
        # not awaited: an owner that died loses the result, as its phone lost the task
        self._owners[done.owner].finished.remote(tag, done)

    def close(self) -> None:
        pass


def _node() -> str:
    return ray.get_runtime_context().get_node_id()


@ray.remote
class PhoneShard:
    """Phones ``indices`` of the fleet ``cfg``, their event loop running from the start."""

    def __init__(self, cfg: Any, indices: range, owner: int, wall0_epoch: float,
                 jobs: Any) -> None:
        from fedkb.device_runtime.fleet import fleet_profiles
        from fedkb.device_runtime.worker import Worker

        base = rss_bytes()
        self.compute = RayCompute(owner, jobs)
        self.worker = Worker(cfg.server, str(cfg.data), fleet_profiles(cfg, indices),
                             shared_clock(cfg.speedup, cfg.start_hour, wall0_epoch),
                             seed=cfg.seed + indices.start, compute=self.compute, owner=owner,
                             hold_s=cfg.claim_hold_s, faults=injector(cfg.faults, cfg.seed))
        self.compute.counts = self.worker.stats.counts
        self.info = {"owner": owner, "incarnation": self.compute.incarnation, "node": _node(),
                     "phones": len(indices), "rss_before_phones": base,
                     "rss_with_phones": rss_bytes(),
                     "restarted": ray.get_runtime_context().was_current_actor_reconstructed}
        self._thread = threading.Thread(target=self.worker.run, name="fedkb-shard", daemon=True)
        self._thread.start()

    def ready(self) -> dict[str, Any]:
        return self.info

    def finished(self, incarnation: str, done: Done) -> None:
        self.compute.deliver(incarnation, done)

    def snapshot(self, incarnation: str = "", accepted_from: int = 0) -> dict[str, Any]:
        """Counters and gauges; the accepted reports from ``accepted_from`` on (all of them
        when ``incarnation`` is not this life's)."""
        self.worker.refresh_gauges()
        snap = self.worker.stats.snapshot()
        start = accepted_from if incarnation == self.compute.incarnation else 0
        snap["accepted"] = list(self.worker.stats.accepted[start:])
        snap["in_flight_jobs"] = self.compute.in_flight()
        return {**snap, **self.info, "rss_bytes": rss_bytes()}

    def stop(self, incarnation: str = "", accepted_from: int = 0) -> dict[str, Any]:
        self.worker.stop()
        self._thread.join(timeout=60)
        return self.snapshot(incarnation, accepted_from)


@ray.remote
class TrainingWorker:
    """One core's LiteRT training for any phone of the fleet ``cfg``."""

    def __init__(self, cfg: Any, wall0_epoch: float, jobs: Any, owners: list[Any]) -> None:
        from fedkb.device_runtime.worker import Worker

        self.compute = PulledCompute(jobs, owners)
        self.worker = Worker(cfg.server, str(cfg.data), [],
                             shared_clock(cfg.speedup, cfg.start_hour, wall0_epoch),
                             seed=cfg.seed, compute=self.compute)
        self.info = {"node": _node(),
                     "restarted": ray.get_runtime_context().was_current_actor_reconstructed}
        self._thread = threading.Thread(target=self.worker.run, name="fedkb-trainer",
                                        daemon=True)
        self._thread.start()

    def ready(self) -> dict[str, Any]:
        return self.info

    def snapshot(self) -> dict[str, Any]:
        snap = self.worker.stats.snapshot()
        return {**snap, **self.info, "phones": 0, "jobs_taken": self.compute.taken,
                "rss_bytes": rss_bytes()}

    def stop(self) -> dict[str, Any]:
        self.worker.stop()
        self._thread.join(timeout=60)
        return self.snapshot()
