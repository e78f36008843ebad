"""Where the phones' LiteRT work runs: a worker's own training thread, or a shared pool.

The emulated phones all compute at once; here their work queues for a few cores. A
round lasts as long as its slowest phone, so how tasks are spread over the cores decides
how long a round takes, never what a phone does: each phone's timeline is simulated
(measured compute x its tier's factor), whatever process runs its steps.

- :class:`LocalCompute` (one worker, or ``workers=0``): one queue, the largest shard
  first, so the round's slowest phone starts first.
- :class:`SharedCompute` (a fleet of worker processes): every worker's training thread
  takes jobs from one queue shared by all workers, and sends each result back to the
  worker that owns the phone. Before, each worker trained only its own phones: with 20
  phones a round split at random over two workers, one core often had twice the steps
  of the other (98 against 34 steps in one round) and idled half the round.

A :class:`Job` carries the phone itself (pickled, ~5 kB with its trace, in the shared
pool); :class:`Done` carries back the outcome and the phone's cache state after it.
"""

from __future__ import annotations

import itertools
import queue
from dataclasses import dataclass
from typing import Any, Protocol

from fedkb import wire
from fedkb.device_runtime.phone import Outcome, Phone


@dataclass
class Job:
    """One phone's task, waiting for a training thread."""

    owner: int  # index of the worker that owns the phone
    job_id: int
    phone: Phone
    task: wire.Task
    t_task: float  # simulated time the task came
    received: float  # time.monotonic() when it came (the same clock in every process)
    size: int  # windows in the shard the task reads


@dataclass
class Done:
    """A job's result for its owner: ``outcome`` None means the task never started."""

    owner: int
    job_id: int
    outcome: Outcome | None
    cached_version: int | None
    has_artifact: bool


class Compute(Protocol):
    """What a :class:`~fedkb.device_runtime.worker.Worker` needs from its compute."""

    results: Any  # Done items for this worker: .get(timeout=...) raising queue.Empty

    def submit(self, job: Job) -> None: ...

    def take(self, timeout: float) -> Job | None: ...

    def finish(self, done: Done) -> None: ...

    def close(self) -> None: ...


class LocalCompute:
    """One worker's own queue, the largest shard first."""

    def __init__(self) -> None:
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self.results: queue.Queue = queue.Queue()

    def submit(self, job: Job) -> None:
        self._jobs.put((-job.size, next(self._seq), job))

    def take(self, timeout: float) -> Job | None:
        try:
            return self._jobs.get(timeout=timeout)[2]
        except queue.Empty:
            return None

    def finish(self, done: Done) -> None:
        self.results.put(done)

    def close(self) -> None:
        pass


class SharedCompute:
    """One job queue for all worker processes; results go back to each phone's owner.

    ``jobs`` and ``results`` are ``multiprocessing`` queues made by the fleet's parent
    (``results[i]`` is worker i's). Jobs are taken first come, first served: a greedy
    list schedule, within one large job of the best split (largest-first across processes
    would need a priority queue server process; measured gains are in bench/README.md).
    """

    def __init__(self, owner: int, jobs: Any, results: list[Any]) -> None:
        self.owner = owner
        self._jobs = jobs
        self._all = results
        self.results = results[owner]

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def take(self, timeout: float) -> Job | None:
        try:
            return self._jobs.get(timeout=timeout)
        except queue.Empty:
            return None

    def finish(self, done: Done) -> None:
        self._all[done.owner].put(done)

    def close(self) -> None:
        # Results still buffered for a worker that has stopped reading must not keep this
        # process alive at exit (a multiprocessing queue joins its feeder thread).
        for q in (self._jobs, *self._all):
            if hasattr(q, "cancel_join_thread"):
                q.cancel_join_thread()
