"""A worker: many emulated phones in one process, driven by an event heap.

Phones are not threads (a fleet has thousands): each is a small :class:`Phone` with a
wake-up time in the heap (deliveries and selected phones' wake-ups in a heap of their own,
served first when both are due: a loop behind a herd of check-ins still sends its reports
on time). The main loop
pops phones that are due and does what a phone's
job scheduler would: sleep while not eligible (charging, Wi‑Fi, idle, battery not low),
register once, check in, honour "come back in N s", hand a task to the training thread,
and deliver the task's result or abort when its simulated time comes. Failed deliveries
are retried with jittered exponential backoff and the same bytes, so nothing is lost or
sent twice. With ``hold_s``, a phone selected ahead of its round's model keeps one
check-in open (a small thread pool does the waiting) and claims its task the moment the
server has it, instead of asking again every ``claim_poll_s``.

One training thread per worker runs LiteRT work, keeping one interpreter per model
artifact: memory grows with workers, not with phones. It takes jobs from the worker's
:mod:`~fedkb.device_runtime.compute`: its own queue, or one queue shared by every worker
of a fleet (so no core idles while another has a round's work). One thread, not two: two
interpreters per worker compete for the same cores and make a run slower.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import queue
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fedkb import wire
from fedkb.datasets.store import Dataset
from fedkb.device_runtime.client import DeviceClient, Refused, Retry, Unauthorized
from fedkb.device_runtime.clock import SimClock
from fedkb.device_runtime.compute import Compute, Done, Job, LocalCompute
from fedkb.device_runtime.faults import FaultInjector, record_answer
from fedkb.device_runtime.holds import CheckinHolds, Claimed
from fedkb.device_runtime.model_cache import ModelCache
from fedkb.device_runtime.phone import Outcome, Phone, run_task
from fedkb.device_runtime.profile import DeviceProfile
from fedkb.device_runtime.secagg_client import TRAIN, SecureTask
from fedkb.device_runtime.secure_steps import SecureSteps, Stepped
from fedkb.device_runtime.traces import State

MAX_BACKOFF_S = 30.0  # wall seconds
# A phone's job also waits for "battery not low" (Android's JobInfo.Builder
# setRequiresBatteryNotLow): the level the server asks for by default (round.min_battery).
# Without it, a phone charging from a low level checks in every few minutes for hours
# only to be refused.
BATTERY_NOT_LOW = 0.2  # a fraction, like every battery level
# The server's answer to a report that came after its round stopped taking reports.
LATE_CODES = frozenset({"late_report"})


@dataclass
class WorkerStats:
    """Counters a worker reports (summed over workers by the fleet)."""

    counts: Counter = field(default_factory=Counter)
    aborted: Counter = field(default_factory=Counter)  # by reason
    failed: Counter = field(default_factory=Counter)  # by server error code
    completed_by_tier: Counter = field(default_factory=Counter)
    eligible: int = 0
    training: int = 0
    phones: int = 0
    # The emulator's ground truth, never sent to the server: per accepted training report,
    # [round_id, user, batch_seed]. It lets a run be replayed elsewhere (TFF) client for
    # client.
    accepted: list[list] = field(default_factory=list)

    def snapshot(self, accepted: bool = False) -> dict[str, Any]:
        """Counters and gauges; with ``accepted``, the accepted-report log too."""
        return {"counts": dict(self.counts), "aborted": dict(self.aborted),
                "failed": dict(self.failed), "completed_by_tier": dict(self.completed_by_tier),
                "eligible": self.eligible, "training": self.training, "phones": self.phones,
                **({"accepted": list(self.accepted)} if accepted else {})}


class Worker:
    """Runs ``profiles`` against the server at ``server_url`` until :meth:`stop`."""

    def __init__(self, server_url: str, data_dir: str, profiles: list[DeviceProfile],
                 clock: SimClock, seed: int = 0, compute: Compute | None = None,
                 owner: int = 0, hold_s: float = 0.0, faults: FaultInjector | None = None):
        self.server_url = server_url
        self.client = DeviceClient(server_url)
        self.dataset = Dataset.open(data_dir)
        self.clock = clock
        self.phones = [Phone(p) for p in profiles]
        self.stats = WorkerStats(phones=len(self.phones))
        # idle phones' wake-ups, and apart from them the round's own work (deliveries, and
        # the wake-ups of phones selected for a round): when the loop falls behind (a
        # herd of check-ins), due round work goes first, so a report does not miss its
        # deadline waiting behind idle phones
        self._heap: list[tuple[float, int, Phone, str, Outcome | None]] = []
        self._urgent: list[tuple[float, int, Phone, str, Outcome | None]] = []
        self._seq = itertools.count()
        # Tasks wait for a training thread here (see fedkb.device_runtime.compute); the
        # phones whose jobs are out, by job id.
        self.compute: Compute = compute or LocalCompute()
        self.owner = owner
        self._pending: dict[int, Phone] = {}
        self._job_ids = itertools.count()
        # held check-ins (phones selected ahead of their round's model), by hold id
        self.hold_s = hold_s
        self._held: dict[int, Phone] = {}
        self._holds: CheckinHolds | None = None  # started on the first hold
        # with hold_s, a secure round's exchanges run on held requests off this loop
        self._secure: dict[int, tuple[Phone, Outcome]] = {}  # by step id
        self._steps: SecureSteps | None = None  # started on the first secure exchange
        # secure tasks whose protocol runs beside their training job, by the job's id
        self._chains: dict[int, Outcome] = {}
        self._rng = random.Random(seed)
        self.faults = faults  # phones that misbehave on purpose (None: all honest)

    # -- scheduling -------------------------------------------------------------------

    def _push(self, due: float, phone: Phone, action: str, outcome: Outcome | None = None):
        urgent = action == "send" or phone.waiting
        heapq.heappush(self._urgent if urgent else self._heap,
                       (due, next(self._seq), phone, action, outcome))

    def _due(self, now: float) -> list | None:
        """The heap whose head is due now, the round's work first (None: nothing is)."""
        for heap in (self._urgent, self._heap):
            if heap and heap[0][0] <= now:
                return heap
        return None

    def _next_due(self) -> float | None:
        heads = [h[0][0] for h in (self._urgent, self._heap) if h]
        return min(heads) if heads else None

    def _backoff(self, phone: Phone, hint_s: float = 0.0) -> float:
        """Simulated delay before trying again (jittered, doubling, in wall terms)."""
        wall = max(hint_s, phone.backoff_s) * self._rng.uniform(0.5, 1.5)
        phone.backoff_s = min(MAX_BACKOFF_S, phone.backoff_s * 2)
        return wall * self.clock.speedup

    def stop(self) -> None:
        self.clock.stop()

    def run(self) -> WorkerStats:
        """The main loop; returns when the clock is stopped."""
        cache = ModelCache(self.server_url)
        trainer_thread = threading.Thread(target=self._train_loop, args=(cache,),
                                          name="fedkb-train", daemon=True)
        trainer_thread.start()
        now = self.clock.now()
        for i, phone in enumerate(self.phones):  # spread the first wake-ups a little
            self._push(now + i * 0.01 * self.clock.speedup / max(1, len(self.phones)),
                       phone, "wake")
        try:
            while not self.clock.stopped:
                self._drain_done()
                now = self.clock.now()
                heap = self._due(now)
                if heap is not None:
                    _, _, phone, action, outcome = heapq.heappop(heap)
                    if action == "wake":
                        self._wake(phone, now)
                    else:
                        self._deliver(phone, outcome, now)
                    continue
                nxt = self._next_due()
                wait = 0.2 if nxt is None else self.clock.wall_for(nxt - now)
                with contextlib.suppress(queue.Empty):
                    self._finished(self.compute.results.get(timeout=min(0.2, max(0.0, wait))))
        finally:
            if self._holds is not None:
                self._holds.close()
            if self._steps is not None:
                self._steps.close()
            trainer_thread.join(timeout=30)  # it sees the stopped clock within 0.2 s
            cache.close()
            self.client.close()
            self.compute.close()
        return self.stats

    def _drain_done(self) -> None:
        while True:
            try:
                self._finished(self.compute.results.get_nowait())
            except queue.Empty:
                return

    def _finished(self, done: Done | Claimed | Stepped) -> None:
        """A training thread is done with a phone's task: schedule its report (or a held
        check-in or a secure exchange came back)."""
        if isinstance(done, Claimed):
            self._claimed(done)
            return
        if isinstance(done, Stepped):
            self._stepped(done)
            return
        phone = self._pending.pop(done.job_id, None)
        if phone is None:
            return
        # the job may have run on a copy of the phone (another worker process)
        phone.cached_version, phone.has_artifact = done.cached_version, done.has_artifact
        outcome = done.outcome
        chain = self._chains.pop(done.job_id, None)
        if chain is not None:
            chain.secure.training = False
            if chain.secure.ended:  # its protocol ended first: the phone is free only now
                if outcome is not None:
                    self.stats.counts["bytes_down"] += int(
                        outcome.timings.get("download_bytes", 0))
                self._free(phone, self.clock.now())
                return
            if outcome is not None and outcome.kind == "secagg":
                self._trained(phone, chain, outcome)
                return
            chain.secure.ended = True  # it will not train: its abort (or nothing) ends it
        if outcome is None:  # the task could not even start (download failed, etc.)
            self._free(phone, self.clock.now(), backoff=False)
        else:
            self.stats.counts["bytes_down"] += int(outcome.timings.get("download_bytes", 0))
            if self.faults is not None:
                outcome = self.faults.apply(phone.profile.name, outcome, self.stats.counts)
            self._push(outcome.due, phone, "send", outcome)

    # -- a phone wakes up -------------------------------------------------------------

    def _wake(self, phone: Phone, now: float) -> None:
        if phone.busy or phone.retired:
            return
        trace = phone.profile.trace
        state = trace.state_at(now)
        if not state.eligible or state.battery < BATTERY_NOT_LOW:
            if phone.waiting:  # selected for a round: give the seat back, as a dropped
                self._withdraw(phone, state)  # connection would tell the server
            # asleep until its job's constraints hold (the level changes with the trace row)
            nxt = trace.next_eligible(now) if not state.eligible else trace.next_change(now)
            if nxt is None:
                phone.retired = True
            else:
                self._push(nxt, phone, "wake")
            return
        try:
            if phone.device_id is None:
                reg = self.client.register(phone.profile.role, phone.profile.name)
                phone.device_id, phone.token = reg.device_id, reg.token
                self.stats.counts["registered"] += 1
            resp = self.client.checkin(phone.token or "", state.conditions(),
                                       phone.cached_version)
            self.stats.counts["checkins"] += 1
        except Unauthorized:
            phone.device_id = phone.token = None
            self.stats.counts["reregistered"] += 1
            self._push(now + self._backoff(phone), phone, "wake")
            return
        except Retry as r:
            self.stats.counts["server_unreachable"] += 1
            self._push(now + self._backoff(phone, r.after_s), phone, "wake")
            return
        except Refused as r:
            self.stats.failed[f"checkin_{r.code}"] += 1
            self._push(now + self._backoff(phone), phone, "wake")
            return
        phone.backoff_s = 1.0
        self._answer(phone, resp, now, state)

    def _answer(self, phone: Phone, resp: wire.CheckinResponse, now: float,
                state: State | None) -> None:
        """Act on a check-in's answer: start the task, hold the check-in open, or sleep.

        ``state`` is the phone's state at the check-in; None for the answer of a held
        check-in, which is not held again (the server had no thread, or the wait ended).
        """
        phone.waiting = resp.task is None and resp.reason == "selected_waiting"
        if phone.waiting and state is not None and self.hold_s > 0:
            self._hold(phone, state, now)
            return
        if resp.task is None:
            delay = float(resp.retry_after_s or 1.0) * self.clock.speedup
            self._push(now + delay, phone, "wake")
            return
        phone.busy = True
        self.stats.counts["tasks_received"] += 1
        self.stats.training += 1
        entry = self.dataset.entry(phone.profile.user)
        size = entry.train[1] if resp.task.plan.kind == "train" else entry.eval[1]
        job_id = next(self._job_ids)
        self._pending[job_id] = phone
        self.compute.submit(Job(self.owner, job_id, phone, resp.task, now, time.monotonic(),
                                size))
        if resp.task.plan.secagg and resp.task.plan.kind == "train":
            # the keys go out while it trains (fedkb.device_runtime.secagg_client)
            # (a phone does one task at a time: it is busy until both are over)
            chain = Outcome(resp.task, now, "secagg",
                            secure=SecureTask(resp.task, training=True))
            self._chains[job_id] = chain
            self._secure_step(phone, chain, now)

    def _hold(self, phone: Phone, state: State, now: float) -> None:
        """Check in again on a pool thread, asking the server to hold it open.

        At most ``hold_s``, and never past the simulated moment the phone stops being
        eligible: it then wakes, sees it, and gives its seat back like any phone selected
        ahead (a phone held longer would come back with a task it must abort at once).
        """
        until = phone.profile.trace.next_ineligible(now)
        wait = self.hold_s
        if until is not None:
            wait = min(wait, self.clock.wall_for(until - now))
            if wait < 0.05:  # about to become ineligible: ask again at that moment instead
                self._push(until, phone, "wake")
                return
        if self._holds is None:
            self._holds = CheckinHolds(self.server_url, self.compute.results)
        hold_id = next(self._job_ids)
        self._held[hold_id] = phone
        self._holds.submit(hold_id, phone.token or "", state.conditions(), phone.cached_version,
                           round(wait, 3))
        self.stats.counts["checkins"] += 1
        self.stats.counts["held_checkins"] += 1

    def _claimed(self, claimed: Claimed) -> None:
        phone = self._held.pop(claimed.hold_id, None)
        if phone is None or phone.busy or phone.retired:
            return
        now = self.clock.now()
        resp = claimed.response
        if resp is None:  # the held check-in failed: try again later
            self._push(now + self._backoff(phone), phone, "wake")
        elif resp.task is None and resp.reason == "selected_waiting" \
                and claimed.held_to_the_end:
            phone.waiting = True  # held as long as asked: look at its conditions again now
            self._push(now, phone, "wake")
        else:  # its task; or no thread was free to hold it (it asks again when told)
            self._answer(phone, resp, now, None)

    def _withdraw(self, phone: Phone, state: State) -> None:
        """Check in once with the conditions that ended the wait (the server frees the seat)."""
        phone.waiting = False
        try:
            self.client.checkin(phone.token or "", state.conditions(), phone.cached_version)
            self.stats.counts["withdrawn"] += 1
        except (Retry, Refused):
            pass  # the server counts it as a no-show instead

    # -- a finished task is delivered -------------------------------------------------

    def _secure_step(self, phone: Phone, outcome: Outcome, now: float) -> None:
        """One exchange of a secure round (fedkb.device_runtime.secagg_client); between
        exchanges the phone's conditions are read off its trace: one that stops being
        eligible mid-protocol aborts its task and answers nothing more (a dropout)."""
        c = self.stats.counts
        secure = outcome.secure
        if secure.ended:  # its training's abort ended the task meanwhile
            return
        state = phone.profile.trace.state_at(now)
        if not state.eligible and secure.masked:  # its masked input is in: a dropout after
            c["secagg_unplugged"] += 1  # it, which says so if it can (best effort: else
            try:  # unmasking waits out secagg.unmask_quiet_s for it)
                left = self.client.abort(phone.token or "", outcome.task.task_id,
                                         state.why_not() or "offline")
                c["secagg_left"] += left.status == "left"
            except (Retry, Refused):
                pass
            self._secure_end(phone, outcome)
            return
        if not state.eligible:
            secure.ended = True
            outcome = Outcome(outcome.task, now, "abort", reason=state.why_not() or "offline",
                              timings=outcome.timings, secure=secure)
            c["secagg_unplugged"] += 1
            self._deliver(phone, outcome, now)
            return
        if self.hold_s > 0:  # on a pool thread, held by the server until there is news
            self._step_off_loop(phone, outcome, now)
            return
        try:
            what, wait_s = outcome.secure.advance(self.client, phone.token or "")
        except (Retry, Refused) as exc:
            self._secure_result(phone, outcome, now, "", 0.0, exc)
            return
        self._secure_result(phone, outcome, now, what, wait_s)

    def _step_off_loop(self, phone: Phone, outcome: Outcome, now: float) -> None:
        """The exchange on a :class:`SecureSteps` thread, held at most ``hold_s`` and never
        past the simulated moment the phone stops being eligible (it looks then)."""
        assert outcome.secure is not None
        wait = self.hold_s
        until = phone.profile.trace.next_ineligible(now)
        if until is not None:
            wait = min(wait, self.clock.wall_for(until - now))
        if self._steps is None:
            self._steps = SecureSteps(self.server_url, self.compute.results)
        step_id = next(self._job_ids)
        self._secure[step_id] = (phone, outcome)
        self._steps.submit(step_id, outcome.secure, phone.token or "",
                           round(max(wait, 0.0), 3))
        self.stats.counts["secagg_held_steps"] += 1

    def _stepped(self, done: Stepped) -> None:
        phone, outcome = self._secure.pop(done.step_id, (None, None))
        if phone is None or outcome is None or outcome.secure.ended:
            return
        self._secure_result(phone, outcome, self.clock.now(), done.what, done.wait_s,
                            done.error)

    def _secure_result(self, phone: Phone, outcome: Outcome, now: float, what: str,
                       wait_s: float, error: Retry | Refused | None = None) -> None:
        """Act on one secure exchange's result: ask again, or the phone is done."""
        assert outcome.secure is not None
        c = self.stats.counts
        if isinstance(error, Retry):
            c["delivery_retries"] += 1
            self._push(now + self._backoff(phone, error.after_s), phone, "send", outcome)
            return
        if isinstance(error, Refused):
            what, wait_s = "stopped", 0.0
            outcome.secure.refusal = f"{error.code}: {error.message}"
            if error.code not in LATE_CODES | {"secagg_phase_closed"}:
                self.stats.failed[f"secagg_{error.code}"] += 1
        if what == TRAIN:  # at its masked input before its training came back
            if outcome.secure.update is None:
                outcome.secure.parked = True  # _trained sends it on
            else:
                self._push(now, phone, "send", outcome)
            return
        if what == "wait":  # the wait is wall seconds; the heap runs in simulated ones
            # (0 after a hold: ask again at once; a floor only for the polling exchanges)
            floor = 0.0 if self.hold_s > 0 else 0.2
            self._push(now + max(wait_s, floor) * self.clock.speedup, phone, "send", outcome)
            return
        if what == "done":
            c["completed"] += 1
            c["secagg_completed"] += 1
            self.stats.accepted.append([outcome.task.round_id, phone.profile.user,
                                        outcome.task.plan.seed])
            self.stats.completed_by_tier[phone.profile.tier.name] += 1
            c["bytes_up"] += sum(outcome.secure.sent.values())
        else:
            c["secagg_stopped"] += 1
        self._secure_end(phone, outcome)

    def _trained(self, phone: Phone, chain: Outcome, trained: Outcome) -> None:
        """A secure task's training came back: its protocol masks the delta next."""
        self.stats.counts["bytes_down"] += int(trained.timings.get("download_bytes", 0))
        t = trained.secure
        chain.timings.update(trained.timings)
        chain.secure.trained(t.update, t.num_examples, t.loss, trained.timings)
        if chain.secure.parked:  # it waits at the masked input: go on once trained
            chain.secure.parked = False
            self._push(trained.due, phone, "send", chain)

    def _secure_end(self, phone: Phone, outcome: Outcome) -> None:
        outcome.secure.ended = True
        if not outcome.secure.training:  # else its training job's return frees it
            self._free(phone, self.clock.now())

    def _free(self, phone: Phone, now: float, backoff: bool = True) -> None:
        """The phone's task is over: it may check in again."""
        if backoff:
            phone.backoff_s = 1.0
        phone.busy = False
        self.stats.training -= 1
        self._push(now, phone, "wake")

    def _deliver(self, phone: Phone, outcome: Outcome, now: float) -> None:
        if outcome.kind == "secagg":
            self._secure_step(phone, outcome, now)
            return
        outcome.attempts += 1
        try:
            if outcome.kind == "upload":
                self.client.upload(phone.token or "", outcome.task.task_id, outcome.body)
                self.stats.counts["completed"] += 1
                if outcome.task.plan.kind == "train":
                    self.stats.accepted.append([outcome.task.round_id, phone.profile.user,
                                                outcome.task.plan.seed])
                self.stats.completed_by_tier[phone.profile.tier.name] += 1
                self.stats.counts["bytes_up"] += len(outcome.body)
                record_answer(outcome, "accepted", self.stats.counts)
            else:
                self.client.abort(phone.token or "", outcome.task.task_id, outcome.reason)
                self.stats.aborted[outcome.reason] += 1
                record_answer(outcome, "aborted", self.stats.counts)
        except Retry as r:
            self.stats.counts["delivery_retries"] += 1
            self._push(now + self._backoff(phone, r.after_s), phone, "send", outcome)
            return
        except Refused as r:
            record_answer(outcome, r.code, self.stats.counts)
            if r.code in LATE_CODES:
                self.stats.counts["late"] += 1
            else:
                self.stats.failed[r.code] += 1
            if isinstance(r, Unauthorized):
                phone.device_id = phone.token = None
        if outcome.secure is not None and outcome.secure.training:
            outcome.secure.ended = True  # a secure task's abort: its job's return frees it
            return
        self._free(phone, now)

    # -- the training thread ----------------------------------------------------------

    def _train_loop(self, cache: ModelCache) -> None:
        while not self.clock.stopped:  # once stopped, queued jobs are dropped
            job = self.compute.take(timeout=0.2)
            if job is None or self.clock.stopped:
                continue
            phone, task, t_task = job.phone, job.task, job.t_task
            if time.monotonic() - job.received > task.deadline_s:
                # The training threads fell behind (the machine's limit, not the phone's):
                # like a phone whose job ran too late, give the task back.
                self.stats.counts["expired_before_start"] += 1
                self.compute.finish(Done(job.owner, job.job_id,
                                         Outcome(task, t_task, "abort", reason="deadline"),
                                         phone.cached_version, phone.has_artifact))
                continue
            try:
                model = cache.get(task)
                busy = time.perf_counter()
                shard = self.dataset.shard(phone.profile.user)
                windows = shard.train if task.plan.kind == "train" else shard.eval
                outcome = run_task(phone, task, t_task, model, windows)
                c = self.stats.counts
                c["train_busy_s"] += time.perf_counter() - busy  # shard, steps, delta, encode
                c["train_steps"] += int(outcome.timings.get("steps", 0))
                if outcome.kind == "upload":
                    for k in ("download_s", "compute_s", "upload_s"):
                        c[f"sim_{k}"] += outcome.timings.get(k, 0.0)
            except (Retry, Refused):
                self.stats.counts["download_failed"] += 1
                outcome = None
            except Exception as exc:  # a device bug must not kill the fleet: count it
                self.stats.failed[f"device_error_{type(exc).__name__}"] += 1
                outcome = None
            self.compute.finish(Done(job.owner, job.job_id, outcome, phone.cached_version,
                                     phone.has_artifact))

    def refresh_gauges(self) -> None:
        """Recount how many phones are eligible right now (for the progress display)."""
        now = self.clock.now()
        self.stats.eligible = sum(1 for p in self.phones
                                  if p.profile.trace.state_at(now).eligible)
