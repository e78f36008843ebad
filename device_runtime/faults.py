"""Phones that misbehave on purpose: `fedkb fleet --faults nan=0.05,huge=0.02,...`.

A :class:`FaultSpec` gives, per kind of fault, the chance that a task goes wrong that way
(at most one fault per task). A :class:`FaultInjector` applies it to the finished
:class:`~fedkb.device_runtime.phone.Outcome` of a task, after the phone trained honestly
and before it sends anything: the faulty phone is still an ordinary HTTP client (same
token, same task, a well-formed request), so the server must refuse it by its own checks
(:mod:`fedkb.server.uploads`), not because the request looks odd.

Kinds (the server's refusal code each one must meet, :data:`EXPECTED_REFUSAL`):

- ``nan``: one value of the update is NaN (``non_finite``).
- ``huge``: one value is 1e30, finite in float32 (``update_too_large``: the norm bound).
- ``shape``: the last array loses its last element (``bad_shape``).
- ``replay``: the bytes of an earlier upload of another task, resent as this task's
  (``invalid_message``: its metadata names the other task).
- ``examples``: ``num_examples`` one more than the plan's step budget allows
  (``too_many_examples``).
- ``unplug``: the phone is unplugged mid-task and aborts (``not_charging``), at a point
  drawn uniformly over the task's simulated time.
- ``boost``: model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated
  Learning"): the update times gamma = (clients per round) / (attackers per round), which
  is 1 / rate for this rate (or ``gamma=G``). It is a valid update, so it is accepted:
  what bounds it is the server's norm bound and ``strategy.clip_norm``.

Which fault a task gets is a pure function of (fleet seed, phone, round, task kind, the
phone's how-manieth task of that round): the same tasks get the same faults whatever the
machine's load.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from fedkb import wire
from fedkb.codec import CodecError, decode_arrays, encode_arrays
from fedkb.device_runtime.phone import Outcome

UPDATE_FAULTS = ("nan", "huge", "shape", "replay", "examples", "boost")
FAULT_KINDS = (*UPDATE_FAULTS, "unplug")
# the server's answer each refused fault must get (boost is accepted: clipped, not refused)
EXPECTED_REFUSAL = {"nan": "non_finite", "huge": "update_too_large", "shape": "bad_shape",
                    "replay": "invalid_message", "examples": "too_many_examples"}
UNPLUG_REASON = "not_charging"
HUGE = 1e30
NO_BUDGET_EXAMPLES = 2**62  # a claim for a plan without a step cap


class FaultError(ValueError):
    """A ``--faults`` text that cannot be read (unknown kind, rate outside [0, 1])."""


@dataclass(frozen=True)
class FaultSpec:
    """Per-task chances of each fault (``rates``: (kind, rate) pairs) and the boost factor
    (``gamma``; None: 1 / the boost rate)."""

    rates: tuple[tuple[str, float], ...] = ()
    gamma: float | None = None

    def __post_init__(self) -> None:
        seen = set()
        for kind, rate in self.rates:
            if kind not in FAULT_KINDS:
                raise FaultError(f"unknown fault {kind!r} (known: {', '.join(FAULT_KINDS)})")
            if kind in seen:
                raise FaultError(f"fault {kind!r} given twice")
            if not 0.0 <= rate <= 1.0:  # NaN fails this too
                raise FaultError(f"fault rate {kind}={rate} is outside [0, 1]")
            seen.add(kind)
        if sum(r for _, r in self.rates) > 1.0 + 1e-9:
            raise FaultError("fault rates add up to more than 1 (one fault per task at most)")
        if self.gamma is not None and not 0.0 < self.gamma < 1e6:
            raise FaultError(f"gamma={self.gamma} must be positive (and below 1e6)")

    def rate(self, kind: str) -> float:
        return dict(self.rates).get(kind, 0.0)

    @property
    def boost_gamma(self) -> float:
        if self.gamma is not None:
            return self.gamma
        rate = self.rate("boost")
        return 1.0 / rate if rate > 0 else 1.0

    def text(self) -> str:
        """The ``--faults`` text of this spec (parse_faults reads it back)."""
        parts = [f"{k}={r:g}" for k, r in self.rates]
        return ",".join(parts + ([f"gamma={self.gamma:g}"] if self.gamma is not None else []))

    def choose(self, seed: int, phone: str, round_id: int, kind: str, nth: int = 0
               ) -> str | None:
        """The fault of one task (None: it behaves), from a hash of who and when (``nth``:
        the phone's how-manieth task in that round, 0 first: a refused phone may be given
        another task in the same round, which draws again)."""
        u = _uniform(seed, phone, round_id, kind, nth, "fault")
        for name, rate in self.rates:
            if u < rate:
                return name
            u -= rate
        return None


def parse_faults(text: str) -> FaultSpec:
    """``"nan=0.05,huge=0.02,boost=0.05,gamma=20"`` -> a :class:`FaultSpec` (strict)."""
    rates: list[tuple[str, float]] = []
    gamma = None
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise FaultError(f"{item!r}: write KIND=RATE (e.g. nan=0.05)")
        try:
            number = float(value)
        except ValueError:
            raise FaultError(f"{item!r}: {value.strip()!r} is not a number") from None
        if name == "gamma":
            gamma = number
        else:
            rates.append((name, number))
    return FaultSpec(tuple(rates), gamma)


def _uniform(seed: int, *key: object) -> float:
    h = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def examples_budget(plan: wire.Plan) -> int:
    """The most examples the plan lets a phone claim (the server's rule, restated)."""
    if plan.kind != "train" or plan.max_steps <= 0:
        return NO_BUDGET_EXAMPLES
    return plan.batch_size * plan.max_steps * plan.epochs


@dataclass
class FaultInjector:
    """Applies a :class:`FaultSpec` to one worker's finished tasks; counts what it did
    (``fault_<kind>``) into the worker's counters."""

    spec: FaultSpec
    seed: int = 0
    _last_upload: dict[str, bytes] = field(default_factory=dict)  # by task id, one kept
    _tasks: Counter = field(default_factory=Counter)  # tasks so far per (phone, round)

    def apply(self, phone: str, outcome: Outcome, counts: Counter) -> Outcome:
        task = outcome.task
        honest = outcome.kind == "upload"
        nth = self._tasks[phone, task.round_id]
        self._tasks[phone, task.round_id] += 1
        fault = self.spec.choose(self.seed, phone, task.round_id, task.plan.kind, nth)
        earlier = next(iter(self._last_upload.items()), None)
        if honest and task.plan.kind == "train":
            self._last_upload = {task.task_id: outcome.body}
        if fault is None or not honest:
            return outcome
        if fault == "unplug":
            return self._unplug(phone, outcome, counts)
        if task.plan.kind != "train":
            return outcome  # the update faults need an update
        if fault == "replay":
            if earlier is None or earlier[0] == task.task_id:
                return outcome  # nothing earlier to replay yet
            return self._mark(replace(outcome, body=earlier[1]), fault, counts)
        try:
            meta, payload = wire.split_upload(outcome.body)
            arrays = [np.array(a) for a in decode_arrays(payload)]
        except (wire.WireError, CodecError):
            return outcome
        if fault == "examples":
            meta = replace(meta, num_examples=examples_budget(task.plan) + 1)
        elif fault == "boost":
            arrays = [(a * self.spec.boost_gamma).astype(a.dtype) for a in arrays]
        elif fault == "shape":
            arrays[-1] = arrays[-1].reshape(-1)[:-1]
        else:
            arrays[0].reshape(-1)[0] = np.nan if fault == "nan" else HUGE
        body = wire.frame_upload(meta, encode_arrays(arrays))
        return self._mark(replace(outcome, body=body), fault, counts)

    def _unplug(self, phone: str, outcome: Outcome, counts: Counter) -> Outcome:
        t = outcome.timings
        took = sum(t.get(k, 0.0) for k in ("download_s", "compute_s", "upload_s"))
        at = outcome.due - took * (1.0 - _uniform(self.seed, phone, outcome.task.round_id,
                                                  "unplug_at"))
        out = Outcome(outcome.task, at, "abort", reason=UNPLUG_REASON, timings=dict(t))
        return self._mark(out, "unplug", counts)

    @staticmethod
    def _mark(outcome: Outcome, fault: str, counts: Counter) -> Outcome:
        outcome.fault = fault
        counts[f"fault_{fault}"] += 1
        return outcome


def record_answer(outcome: Outcome, code: str, counts: Counter) -> None:
    """Count the server's answer to a faulty task: ``fault_<kind>:<code>`` (``accepted``,
    ``aborted``, or the refusal's error code)."""
    fault = getattr(outcome, "fault", "")
    if fault:
        counts[f"fault_{fault}:{code}"] += 1


def injector(spec: FaultSpec | None, seed: int) -> FaultInjector | None:
    """A worker's injector for ``spec`` (None when no fault has a rate above 0)."""
    if spec is None or not any(r > 0 for _, r in spec.rates):
        return None
    return FaultInjector(spec, seed)
