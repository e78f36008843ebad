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



class _Clock:
    now = 0.0


class _Ref:
    """A fake ObjectRef, answered at ``ready_at`` on the fake clock."""

    def __init__(self, value, ready_at: float) -> None:
        self.value, self.ready_at = value, ready_at


class _Method:
    def __init__(self, actor: _Actor, name: str) -> None:
        self.actor, self.name = actor, name

    def remote(self, *args):
        self.actor.calls.append((self.name, args))
        # a call waits for the actor to be built, then takes its latency
        ready_at = max(self.actor.built_at, _Clock.now) + self.actor.latency_s
        return _Ref({"incarnation": self.actor.life, "node": "n", "phones": 12,
                     "accepted": []}, ready_at)


class _Actor:
    def __init__(self, life: str, built_at: float, latency_s: float) -> None:
        self.life, self.built_at, self.latency_s, self.calls = life, built_at, latency_s, []
        self.snapshot, self.stop = _Method(self, "snapshot"), _Method(self, "stop")


def test_a_restarted_shard_that_answers_slowly_is_counted_once_it_answers(monkeypatch):
    """A shard restarted after its node died answers only once its phones are built
    again, seconds after the driver's polls began to find it silent. Its call stays out
    until it answers (one call out at a time), and its new life is counted; a fresh call
    each poll, looked at without waiting, would never be seen answered."""
    import ray

    from fedkb.device_runtime.ray_fleet import RayFleet

    def wait(refs, num_returns, timeout):
        # returns when all are answered or the timeout passed, whichever is first
        _Clock.now = min(_Clock.now + timeout, max([_Clock.now, *(r.ready_at for r in refs)]))
        ready = [r for r in refs if r.ready_at <= _Clock.now]
        return ready, [r for r in refs if r not in ready]

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "get", lambda ref: ref.value)
    _Clock.now = 0.0
    slow = _Actor("second-life", built_at=5.0, latency_s=0.05)
    quick = _Actor("only-life", built_at=0.0, latency_s=0.01)
    run = object.__new__(RayFleet)
    run.shards, run.trainers = [slow, quick], []
    run.latest = {("shard", 0): {"incarnation": "first-life", "training": 2, "phones": 12,
                                 "node": "dead"}}
    run.accepted, run.ended, run.silent, run.pending = {}, [], {("shard", 0)}, {}
    run.lives_ended = run.lost_in_flight = 0
    run.lives = {}
    for _ in range(14):  # the driver polls twice a second
        run.poll()
        _Clock.now += 0.5
    assert run.lives_ended == 1 and run.lost_in_flight == 2
    assert run.latest[("shard", 0)]["incarnation"] == "second-life"
    assert ("shard", 0) not in run.silent
    # while it was silent (the first 11 polls) they shared one call
    assert len(slow.calls) == 14 - 11 + 1 and len(quick.calls) == 14
    run.poll("stop", timeout_s=60.0)
    assert slow.calls[-1][0] == "stop" and quick.calls[-1][0] == "stop"


def test_a_shard_killed_before_its_first_snapshot_still_counts_its_restart(monkeypatch):
    """Under load a shard may be killed before the driver ever got one of its snapshots
    (a fresh-clone run under load: the restarted shard's phones registered, yet
    ``actor_lives_ended`` was 0). The life its ready() answer named is the one that
    ended."""
    import ray

    from fedkb.device_runtime.ray_fleet import RayFleet

    def wait(refs, num_returns, timeout):
        _Clock.now = min(_Clock.now + timeout, max([_Clock.now, *(r.ready_at for r in refs)]))
        ready = [r for r in refs if r.ready_at <= _Clock.now]
        return ready, [r for r in refs if r not in ready]

    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "get", lambda ref: ref.value)
    _Clock.now = 0.0
    restarted = _Actor("second-life", built_at=0.0, latency_s=0.01)
    run = object.__new__(RayFleet)
    run.shards, run.trainers = [restarted], []
    run.latest, run.accepted, run.ended, run.silent, run.pending = {}, {}, [], set(), {}
    run.lives_ended = run.lost_in_flight = 0
    run.lives = {("shard", 0): "first-life"}  # what wait_ready() recorded
    run.poll()
    assert run.lives_ended == 1
    assert run.latest[("shard", 0)]["incarnation"] == "second-life"
    run.poll()  # the same life again: nothing more ended
    assert run.lives_ended == 1
