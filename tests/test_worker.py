"""A worker's phones behave like a job scheduler would (no server: a recording client)."""

from __future__ import annotations

import copy
import heapq
import queue
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkb import wire
from fedkb.device_runtime.client import Retry
from fedkb.device_runtime.clock import SimClock
from fedkb.device_runtime.compute import Done, SharedCompute
from fedkb.device_runtime.holds import CheckinHolds, Claimed
from fedkb.device_runtime.phone import Outcome
from fedkb.device_runtime.profile import TIERS, DeviceProfile
from fedkb.device_runtime.secagg_client import SecureTask
from fedkb.device_runtime.traces import NETWORKS, Trace
from fedkb.device_runtime.worker import Worker

WIFI = NETWORKS.index("wifi")


@dataclass
class RecordingClient:
    """Stands in for DeviceClient: records check-ins, answers with ``answer``."""

    answer: Any = None
    checkins: list[wire.Conditions] = field(default_factory=list)

    def register(self, population: str, name: str) -> Any:
        return wire.RegisterResponse(device_id=f"d-{name}", token=f"tok-{name}", token_ttl_s=3600)

    def checkin(self, token: str, conditions: wire.Conditions, cached: int | None) -> Any:
        self.checkins.append(conditions)
        return self.answer(token) if callable(self.answer) else self.answer


def _trace(rows: list[tuple[float, bool, bool, float]]) -> Trace:
    t, charging, idle, battery = (np.array(c) for c in zip(*rows, strict=True))
    return Trace(t, charging, np.full(len(rows), WIFI), idle, battery)


def _worker(tiny_data, traces: list[Trace], answer: Any, compute: Any = None,
            owner: int = 0) -> tuple[Worker, RecordingClient]:
    from fedkb.datasets.store import Dataset

    ds = Dataset.open(tiny_data)
    by_size = {ds.entry(u).train[1]: u for u in ds.train_users}  # users of distinct sizes
    users = list(by_size.values())
    profiles = [DeviceProfile(f"p{i}", users[i], "train", TIERS[1], 1e6, 1e6, 0.0, tr)
                for i, tr in enumerate(traces)]
    worker = Worker("http://127.0.0.1:9", str(tiny_data), profiles, SimClock(speedup=60.0),
                    compute=compute, owner=owner)
    worker.client.close()
    client = RecordingClient(answer)
    worker.client = client  # type: ignore[assignment]
    return worker, client


def _task(task_id: str) -> wire.Task:
    return wire.Task(task_id=task_id, round_id=1, model_version=0,
                     plan=wire.Plan(kind="train", lr=0.5, batch_size=4, epochs=1, max_steps=5,
                                    seed=0),
                     weights_url="/v1/models/0/weights", artifact_url="/v1/models/0",
                     deadline_s=60.0)


def test_a_phone_with_a_low_battery_waits_for_a_higher_level(tiny_data):
    # charging, on Wi-Fi and idle from t=0, but at 10% until the trace says 60% at t=900
    trace = _trace([(0.0, True, True, 0.1), (900.0, True, True, 0.6)])
    worker, client = _worker(tiny_data, [trace], wire.CheckinResponse(retry_after_s=5.0))
    phone = worker.phones[0]
    worker._wake(phone, 10.0)
    assert client.checkins == []  # "battery not low" does not hold: no check-in at all
    assert worker._heap[0][0] == 900.0  # asleep until the level changes
    worker._wake(phone, 900.0)
    assert len(client.checkins) == 1 and client.checkins[0].battery == 0.6


def test_a_phone_selected_ahead_gives_its_seat_back_when_unplugged(tiny_data):
    trace = _trace([(0.0, True, True, 0.8), (100.0, False, True, 0.8)])
    wait = wire.CheckinResponse(retry_after_s=0.5, reason="selected_waiting")
    worker, client = _worker(tiny_data, [trace], wait)
    phone = worker.phones[0]
    worker._wake(phone, 0.0)
    assert phone.waiting and worker._urgent[0][0] == 30.0  # 0.5 wall s at 60x
    worker._wake(phone, 120.0)  # unplugged while waiting: tells the server once
    assert [c.charging for c in client.checkins] == [True, False]
    assert not phone.waiting and worker.stats.counts["withdrawn"] == 1
    worker._wake(phone, 130.0)
    assert len(client.checkins) == 2  # and then sleeps like any unplugged phone


def test_the_largest_shard_trains_first(tiny_data):
    always = _trace([(0.0, True, True, 0.9)])
    worker, _ = _worker(tiny_data, [always] * 3, lambda token: wire.CheckinResponse(
        task=_task(f"t-{token}")))
    sizes = {p.profile.name: worker.dataset.entry(p.profile.user).train[1]
             for p in worker.phones}
    assert len(set(sizes.values())) == 3
    for phone in worker.phones:
        worker._wake(phone, 0.0)
    order = []
    while (job := worker.compute.take(timeout=0.01)) is not None:
        order.append(job.phone.profile.name)
    assert [sizes[d] for d in order] == sorted(sizes.values(), reverse=True)


def test_a_phone_trained_by_another_worker_gets_its_result_back(tiny_data):
    # two workers of a fleet share one job queue; the result goes back to the phone's owner
    # (thread queues here: multiprocessing ones would start a resource tracker process;
    # the fleet end-to-end tests run the real thing, with two worker processes)
    jobs, results = queue.Queue(), [queue.Queue(), queue.Queue()]
    always = _trace([(0.0, True, True, 0.9)])
    answer = lambda token: wire.CheckinResponse(task=_task(f"t-{token}"))  # noqa: E731
    a, _ = _worker(tiny_data, [always], answer, SharedCompute(0, jobs, results), owner=0)
    b, _ = _worker(tiny_data, [always], answer, SharedCompute(1, jobs, results), owner=1)
    try:
        phone = a.phones[0]
        a._wake(phone, 0.0)
        job = b.compute.take(timeout=10)
        assert job is not None and job.owner == 0 and job.phone is phone
        assert b.compute.take(timeout=0.05) is None and a.compute.take(timeout=0.05) is None
        job.phone = copy.deepcopy(phone)  # what the other process holds: a copy
        outcome = Outcome(job.task, 50.0, "abort", reason="charging")
        b.compute.finish(Done(job.owner, job.job_id, outcome, 0, True))
        a._finished(a.compute.results.get(timeout=10))
        assert (phone.cached_version, phone.has_artifact) == (0, True)  # the copy's state
        due, _, who, action, sent = a._urgent[0]
        assert (due, who, action, sent.reason) == (50.0, phone, "send", "charging")
        assert b.compute.results.empty()
    finally:
        a.compute.close()
        b.compute.close()


class RecordingHolds:
    """Stands in for CheckinHolds: records what would be held."""

    def __init__(self) -> None:
        self.submitted: list[tuple[int, float]] = []

    def submit(self, hold_id: int, token: str, conditions: wire.Conditions,
               cached: int | None, wait_s: float) -> None:
        self.submitted.append((hold_id, wait_s))

    def close(self) -> None:
        pass


WAITING = wire.CheckinResponse(retry_after_s=0.5, reason="selected_waiting")


def _holding_worker(tiny_data, ineligible_in_s: float):
    """A worker with held check-ins (5 s) and one phone that stops being eligible
    ``ineligible_in_s`` simulated seconds from now (60x: 60 simulated s a wall second)."""
    probe = SimClock(speedup=60.0).now()
    trace = _trace([(0.0, True, True, 0.9), (probe + ineligible_in_s, False, True, 0.9)])
    worker, _ = _worker(tiny_data, [trace], WAITING)
    worker.hold_s = 5.0
    worker._holds = RecordingHolds()  # type: ignore[assignment]
    return worker, worker.phones[0]


def test_a_phone_selected_ahead_is_held_only_until_it_stops_being_eligible(tiny_data):
    worker, phone = _holding_worker(tiny_data, ineligible_in_s=30.0)  # 0.5 wall s away
    now = worker.clock.now()
    worker._answer(phone, WAITING, now, phone.profile.trace.state_at(now))
    (hold_id, wait_s), = worker._holds.submitted
    assert 0.4 <= wait_s <= 0.5 and worker._heap == worker._urgent == []
    assert worker._held == {hold_id: phone}
    # the server held it to the end: it wakes now, to look at its conditions again
    worker._finished(Claimed(hold_id, WAITING, held_to_the_end=True))
    assert phone.waiting and worker._urgent[0][2] is phone and worker._urgent[0][0] <= \
        worker.clock.now()


def test_a_phone_about_to_become_ineligible_is_not_held(tiny_data):
    worker, phone = _holding_worker(tiny_data, ineligible_in_s=1.0)  # 1/60 wall s away
    now = worker.clock.now()
    worker._answer(phone, WAITING, now, phone.profile.trace.state_at(now))
    assert worker._holds.submitted == []
    assert worker._urgent[0][0] == phone.profile.trace.next_ineligible(now)  # wakes then


def test_a_held_checkin_answered_at_once_falls_back_to_asking_again(tiny_data):
    # no thread was free to hold it: "selected_waiting" at once; ask again when told
    worker, phone = _holding_worker(tiny_data, ineligible_in_s=600.0)
    now = worker.clock.now()
    worker._answer(phone, WAITING, now, phone.profile.trace.state_at(now))
    (hold_id, _), = worker._holds.submitted
    worker._finished(Claimed(hold_id, WAITING, held_to_the_end=False))
    due = worker._urgent[0][0]
    assert 0.5 * 60.0 - 1.0 <= due - now <= 0.5 * 60.0 + 5.0 and len(worker._holds.submitted) == 1


def test_a_held_checkin_that_brings_the_task_starts_it(tiny_data):
    worker, phone = _holding_worker(tiny_data, ineligible_in_s=600.0)
    now = worker.clock.now()
    worker._answer(phone, WAITING, now, phone.profile.trace.state_at(now))
    (hold_id, _), = worker._holds.submitted
    worker._finished(Claimed(hold_id, wire.CheckinResponse(task=_task("t-held"))))
    job = worker.compute.take(timeout=1.0)
    assert job is not None and job.phone is phone and job.task.task_id == "t-held"
    assert phone.busy and not phone.waiting


def test_checkin_holds_put_each_answer_on_the_main_loops_queue():
    class Client:
        def __init__(self, url: str) -> None:
            self.url = url

        def checkin(self, token, conditions, cached, wait_s=0.0):
            if token == "down":
                raise Retry("refused", 1.0)
            time.sleep(wait_s if token == "held" else 0.0)
            return WAITING

    out: queue.Queue = queue.Queue()
    holds = CheckinHolds("http://127.0.0.1:9", out, client_factory=Client)
    cond = wire.Conditions(True, True, True, 0.9)
    try:
        holds.submit(1, "held", cond, None, 0.2)
        holds.submit(2, "busy", cond, None, 0.2)
        holds.submit(3, "down", cond, None, 0.2)
        got = {c.hold_id: c for c in (out.get(timeout=10) for _ in range(3))}
    finally:
        holds.close()
    assert got[1].held_to_the_end and got[1].response == WAITING
    assert not got[2].held_to_the_end and got[2].response == WAITING
    assert got[3].response is None


def test_a_secure_phone_stays_busy_until_its_training_job_is_back(tiny_data):
    """The protocol starts beside the training job; if the server stops it first (here:
    aborted at once), the phone checks in again only once its job has come back, so it
    never holds its task twice (the server hands a busy phone its task again)."""
    always = _trace([(0.0, True, True, 0.9)])
    secure = _task("t-1")
    secure = wire.Task(**{**secure.__dict__,
                          "plan": wire.Plan(**{**secure.plan.__dict__, "secagg": True,
                                               "clip": 4.0, "uplink": "q8",
                                               "rotation_seed": 7})})
    worker, client = _worker(tiny_data, [always], wire.CheckinResponse(task=secure))
    steps: list[str] = []

    def secagg_step(token: str, task_id: str, wait_s: float = 0.0) -> wire.SecAggStep:
        steps.append(task_id)
        return wire.SecAggStep(1, "aborted", reason="dropped before share_keys")

    client.secagg_step = secagg_step  # type: ignore[attr-defined]
    phone = worker.phones[0]
    try:
        worker._wake(phone, 0.0)
        assert steps == ["t-1"]  # the keys' step went out as the job was queued
        assert worker.stats.counts["secagg_stopped"] == 1
        assert phone.busy and worker.stats.training == 1  # still training
        worker._wake(phone, 10.0)
        assert len(client.checkins) == 1  # no second check-in while it trains
        job = worker.compute.take(timeout=10)
        assert job is not None
        trained = Outcome(job.task, 40.0, "secagg",
                          secure=SecureTask(job.task, [np.zeros(3, np.float32)], 5, 1.0))
        worker.compute.finish(Done(job.owner, job.job_id, trained, 0, True))
        worker._finished(worker.compute.results.get(timeout=10))
        assert not phone.busy and worker.stats.training == 0
        assert steps == ["t-1"]  # its protocol is over: not started again
        assert worker.stats.counts["secagg_stopped"] == 1
    finally:
        worker.compute.close()


def test_round_work_goes_before_idle_phones_wakeups_when_the_loop_is_behind(tiny_data):
    # A loop behind a herd of check-ins: idle phones' wake-ups are overdue, and so are one
    # phone's report and a selected phone's wake-up. The round's work comes first (in its
    # own order), then the idle phones.
    always = _trace([(0.0, True, True, 1.0)])
    worker, _ = _worker(tiny_data, [always] * 3, wire.CheckinResponse(retry_after_s=5.0))
    idle, sender, selected = worker.phones
    for t in (1.0, 2.0, 3.0):
        worker._push(t, idle, "wake")
    worker._push(5.0, sender, "send", Outcome(_task("t"), 5.0, "abort", reason="charging"))
    selected.waiting = True
    worker._push(4.0, selected, "wake")
    order = []
    while (heap := worker._due(10.0)) is not None:
        due, _, phone, action, _ = heapq.heappop(heap)
        order.append((due, worker.phones.index(phone), action))
    assert order == [(4.0, 2, "wake"), (5.0, 1, "send"), (1.0, 0, "wake"), (2.0, 0, "wake"),
                     (3.0, 0, "wake")]
    worker._push(20.0, idle, "wake")
    assert worker._due(10.0) is None and worker._next_due() == 20.0
