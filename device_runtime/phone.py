"""One emulated phone running one task: download, train or evaluate, then upload or abort.

The phone's timeline is in simulated seconds (see :mod:`fedkb.device_runtime.clock`):

    t_task (check-in answered with a task)
      + download: bytes not already cached / download bandwidth
    t_train
      + compute: sum over steps of (measured LiteRT step time x the tier's compute factor)
      + encode: the update encoded as the plan asks (measured, x the same factor)
    t_done
      + upload: bytes / upload bandwidth
    t_report

The phone watches its conditions the whole time, as a real job scheduler does (Bonawitz
et al. 2019, §3): the first simulated instant at which it stops being eligible (not
charging, off Wi‑Fi, not idle) ends the task, and it reports an abort with that reason (the
server's words: ``not_charging``, ``metered_network``, ``not_idle``; or ``offline``) instead
of a result. Because the abort point is read off the trace in simulated time, a busy machine
changes how long the emulation takes, never which tasks are interrupted.

:func:`run_task` does the real work (LiteRT only) and returns an :class:`Outcome`: what to
send, and the simulated time at which the phone sends it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkb import wire
from fedkb.clipping import clip_update
from fedkb.device_runtime.profile import DeviceProfile
from fedkb.device_runtime.secagg_client import SecureTask
from fedkb.plan_codec import encode_delta


@dataclass(slots=True)
class Phone:
    """A phone's mutable state; everything else is in its (frozen) profile."""

    profile: DeviceProfile
    device_id: str | None = None  # issued by the server at registration (None: not yet)
    token: str | None = None
    cached_version: int | None = None
    has_artifact: bool = False
    busy: bool = False
    waiting: bool = False  # selected for a round whose model is not there yet
    retired: bool = False
    backoff_s: float = 1.0  # wall seconds, doubles on consecutive failures


@dataclass
class Outcome:
    """What a finished task sends, and when (simulated seconds)."""

    task: wire.Task
    due: float
    kind: str  # "upload" or "abort"
    body: bytes = b""  # the encoded upload (identical on every retry)
    reason: str = ""  # abort reason
    timings: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    fault: str = ""  # the fault injected into it, if any (fedkb.device_runtime.faults)
    # kind "secagg": the trained task's secure-aggregation state (its delta until masked;
    # fedkb.device_runtime.secagg_client.SecureTask), stepped by the worker
    secure: Any = None


@dataclass(frozen=True)
class ModelFiles:
    """What a worker holds for one model version: a trainer and the global weights."""

    trainer: object  # fedkb.device_runtime.trainer.Trainer
    weights: list[np.ndarray]
    weights_bytes: int
    artifact_bytes: int


def run_task(phone: Phone, task: wire.Task, t_task: float, model: ModelFiles,
             windows: np.ndarray) -> Outcome:
    """Run ``task`` for ``phone`` (real LiteRT compute) and decide what it reports."""
    prof = phone.profile
    trace = prof.trace
    fail_at = trace.next_ineligible(t_task)
    fail_at = math.inf if fail_at is None else fail_at

    down = 0
    if phone.cached_version != task.model_version:
        down += model.weights_bytes
    if not phone.has_artifact:
        down += model.artifact_bytes
    t_train = t_task + prof.download_s(down)
    timings = {"download_s": prof.download_s(down), "download_bytes": float(down)}

    def abort(reason_at: float) -> Outcome:
        reason = trace.state_at(reason_at).why_not() or "ineligible"
        return Outcome(task, reason_at, "abort", reason=reason, timings=timings)

    if fail_at <= t_train:
        return abort(fail_at)
    phone.has_artifact = True
    phone.cached_version = task.model_version
    if len(windows) == 0:
        return Outcome(task, t_train, "abort", reason="no_data", timings=timings)

    plan = task.plan
    factor = prof.tier.compute_factor
    trainer = model.trainer
    if plan.kind == "train":
        session = trainer.start_training(model.weights, windows, epochs=plan.epochs,
                                         max_steps=plan.max_steps or None, lr=plan.lr,
                                         seed=plan.seed, grad_clip=plan.grad_clip)
        compute = 0.0
        wall = time.perf_counter()
        for _ in session:
            now = time.perf_counter()
            compute += (now - wall) * factor
            wall = now
            if t_train + compute >= fail_at:
                return abort(fail_at)
        result = session.result()
        update: list[np.ndarray] | None = result.delta
        unclipped = None
        if plan.clip is not None:  # DP: clip on the phone, report whether it was within
            update, unclipped, _ = clip_update(result.delta, plan.clip)
        meta = wire.UploadMetadata(task.task_id, task.round_id, result.num_examples,
                                   result.mean_loss, {}, {}, unclipped)
        timings["steps"] = float(result.steps)
    else:
        wall = time.perf_counter()
        ev = trainer.evaluate(model.weights, windows)
        compute = (time.perf_counter() - wall) * factor
        if t_train + compute >= fail_at:
            return abort(fail_at)
        meta = wire.UploadMetadata(task.task_id, task.round_id, ev.iv_count, ev.mean_loss,
                                   {"loss": ev.mean_loss, "top1_recall": ev.top1_recall,
                                    "top3_recall": ev.top3_recall}, {})
        update = None
    timings["compute_s"] = compute
    if update is not None and plan.secagg:  # no upload: the secure phases take the delta
        secure = SecureTask(task, list(update), meta.num_examples, meta.loss, timings)
        return Outcome(task, t_train + compute, "secagg", timings=timings, secure=secure)
    payload = b""
    if update is not None:  # encoded as the plan asks (fedkb.plan_codec)
        payload, encode_s = encode_delta(update, plan)
        timings["encode_s"] = encode_s * factor
        compute += timings["encode_s"]  # the phone's time, not in compute_s (training)
    upload_bytes = len(payload) + 1024  # + the framed JSON header (under 1 kB)
    upload_s = prof.upload_s(upload_bytes)
    timings["upload_s"] = upload_s
    timings["upload_bytes"] = float(upload_bytes)
    t_report = t_train + compute + upload_s
    if t_report >= fail_at:
        return abort(fail_at)
    meta = wire.UploadMetadata(meta.task_id, meta.round_id, meta.num_examples, meta.loss,
                               meta.metrics, {k: round(v, 4) for k, v in timings.items()},
                               meta.unclipped)
    return Outcome(task, t_report, "upload", body=wire.frame_upload(meta, payload),
                   timings=timings)
