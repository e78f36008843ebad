"""The Ray fleet's shard-side compute without a cluster: back-pressure, lost jobs, lives.

:class:`~fedkb.device_runtime.ray_actors.RayCompute` with a plain bounded queue in place of
the cluster's: a job that finds the queue full is given back at once as an abort, a
result for an earlier life of the shard is dropped, and a job whose result never comes
is given up once its task's deadline (plus grace) has passed.
"""

from __future__ import annotations

import queue
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from ray.util.queue import Full

from fedkb.device_runtime import ray_actors
from fedkb.device_runtime.compute import Done, Job
from fedkb.device_runtime.phone import Outcome


class BoundedQueue:
    def __init__(self, size: int) -> None:
        self.q: queue.Queue = queue.Queue(size)

    def put_nowait(self, item) -> None:
        try:
            self.q.put_nowait(item)
        except queue.Full:
            raise Full from None


def _job(job_id: int, deadline_s: float = 30.0) -> Job:
    task = SimpleNamespace(deadline_s=deadline_s)
    phone = SimpleNamespace(cached_version=3, has_artifact=True)
    return Job(0, job_id, phone, task, 100.0, 0.0, 5)  # type: ignore[arg-type]


def test_a_full_queue_gives_the_task_back_at_once():
    jobs = BoundedQueue(1)
    rc = ray_actors.RayCompute(0, jobs)
    rc.submit(_job(1))
    rc.submit(_job(2))
    assert rc.counts["queue_full"] == 1 and rc.in_flight() == 1
    done = rc.results.get(timeout=1)
    assert done.job_id == 2 and done.outcome.kind == "abort"
    assert done.outcome.reason == "deadline" and done.outcome.due == 100.0
    # the job that got in is what a training worker takes, tagged with this life
    tag, _, job = jobs.q.get_nowait()
    assert tag == rc.incarnation and job.job_id == 1


def test_results_of_an_earlier_life_are_dropped_and_lost_jobs_given_up(monkeypatch):
    rc = ray_actors.RayCompute(0, BoundedQueue(10))
    rc.submit(_job(1))
    rc.submit(_job(2, deadline_s=1.0))
    outcome = Outcome(None, 120.0, "upload")  # type: ignore[arg-type]
    rc.deliver("another-life", Done(0, 1, outcome, 4, True))
    assert rc.results.empty() and rc.in_flight() == 2
    rc.deliver(rc.incarnation, Done(0, 1, outcome, 4, True))
    assert rc.results.get(timeout=1).outcome is outcome
    rc.deliver(rc.incarnation, Done(0, 1, outcome, 4, True))  # twice: once only
    assert rc.results.empty()
    # job 2's trainer died: past its deadline and the grace, the owner gives it up
    now = ray_actors.time.monotonic()
    monkeypatch.setattr(ray_actors.time, "monotonic",
                        lambda: now + 1.0 + ray_actors.GRACE_S + 0.1)
    lost = rc.results.get(timeout=1)
    assert lost.job_id == 2 and lost.outcome is None and lost.cached_version == 3
    assert rc.counts["lost_jobs"] == 1 and rc.in_flight() == 0
