"""A phone's side of a secure round over HTTP: the :class:`fedkb.secagg.client.Phone`
state machine, fed by ``GET /v1/tasks/<id>/secagg`` and answering with ``POST``.

After training, a phone in a secure round (its plan has ``secagg``) keeps its clipped
delta in memory and, instead of uploading it, steps through the round's phases:

    advertise_keys           the setup (cohort, t, k, dim) -> two fresh X25519 public keys
    share_keys               the key roster -> sealed Shamir shares of b and s_SK
    masked_input_collection  its share relay -> the delta encoded on the round's shared
                             grid (fedkb.secagg.update_codec), masked: uniform in Z_{2^k}
    unmasking                the survivor set -> shares of b (survivors) / s_SK (dropped)

:meth:`SecureTask.advance` makes one such exchange (or learns it must wait) and says what
to do next; the worker (:mod:`fedkb.device_runtime.worker`) calls it from its event loop,
checking the phone's conditions between calls, so a phone that unplugs mid-protocol
stops answering (and aborts its task): a dropout the protocol survives. A phone that
refuses a server message (a roster without its keys, a forged or misaddressed
ciphertext, a survivor set it cannot accept) stops too. Only NumPy, ``cryptography`` and
the contract layer: no TensorFlow.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from fedkb import wire
from fedkb.device_runtime.client import DeviceClient
from fedkb.plan_codec import ROUNDING_STREAM
from fedkb.secagg.client import Phone
from fedkb.secagg.messages import KeyRoster, MessageError, Refusal, ShareRelay, UnmaskRequest
from fedkb.secagg.params import RoundParams
from fedkb.secagg.update_codec import (
    BITS_OF,
    UpdateLayout,
    as_residues,
    encode_codes,
    example_weight,
)

WAIT, DONE, STOPPED = "wait", "done", "stopped"


@dataclass
class SecureTask:
    """One trained task's secure-aggregation state on the phone."""

    task: wire.Task
    update: list[np.ndarray]  # the delta, kept until it is masked (then dropped)
    num_examples: int
    loss: float | None
    timings: dict[str, float] = field(default_factory=dict)
    phone: Phone | None = None
    k: int = 0
    sigmas: float = 4.0
    weight_cap: int = 0  # > 0: scale the clipped delta by example_weight(examples, cap)
    refusal: str = ""  # why the phone stopped, if it did
    sent: dict[str, int] = field(default_factory=dict)  # bytes per phase

    def advance(self, client: DeviceClient, token: str,
                wait_s: float = 0.0) -> tuple[str, float]:
        """One exchange: ``(WAIT, seconds)`` (ask again then), ``(DONE, 0)`` or
        ``(STOPPED, 0)`` (the round aborted, dropped this phone, or the phone refused).

        With ``wait_s`` the server may hold the request until the phase changes: a
        "waiting" answer after a hold of the whole ``wait_s`` means ask again at once
        (``(WAIT, 0)``); one that came at once (no thread to spare) keeps its retry."""
        t0 = time.monotonic()
        step = client.secagg_step(token, self.task.task_id, wait_s=wait_s)
        if step.phase == "done":
            return DONE, 0.0
        if step.phase == "aborted":
            self.refusal = self.refusal or f"server: {step.reason}"
            return STOPPED, 0.0
        if step.phase == "waiting":
            if wait_s > 0 and time.monotonic() - t0 >= 0.9 * wait_s:
                return WAIT, 0.0
            return WAIT, float(step.retry_after_s or 1.0)
        try:
            sub = self._answer(step)
        except (MessageError, ValueError) as exc:
            sub = Refusal("bad_message", str(exc))
        if isinstance(sub, Refusal):
            self.refusal = f"{sub.code}: {sub.reason}"
            return STOPPED, 0.0
        body = sub.to_json()
        client.secagg_submit(token, self.task.task_id, body)
        self.sent[step.phase] = len(json.dumps(body))
        return WAIT, 0.0

    def _answer(self, step: wire.SecAggStep) -> wire.SecAggSubmit | Refusal:
        if step.phase == "advertise_keys":
            if step.setup is None or self.phone is not None:
                return Refusal("bad_setup", "advertise_keys without a setup, or twice")
            return wire.SecAggSubmit(self._start(step.setup).advertise().to_dict())
        if self.phone is None or step.message is None:
            return Refusal("bad_step", f"{step.phase} before the keys were advertised")
        if step.phase == "share_keys":
            out = self.phone.share_keys(KeyRoster.from_json(step.message))
            return out if isinstance(out, Refusal) else wire.SecAggSubmit(out.to_dict())
        if step.phase == "masked_input_collection":
            return self._masked(ShareRelay.from_json(step.message))
        out = self.phone.unmask(UnmaskRequest.from_json(step.message))
        return out if isinstance(out, Refusal) else wire.SecAggSubmit(out.to_dict())

    def _layout(self, sigmas: float) -> UpdateLayout:
        plan = self.task.plan
        assert plan.clip is not None and plan.rotation_seed is not None
        return UpdateLayout(tuple(tuple(a.shape) for a in self.update), BITS_OF[plan.uplink],
                            plan.clip, plan.rotation_seed, sigmas)

    def _start(self, setup: wire.SecAggSetup) -> Phone:
        plan = self.task.plan
        if plan.clip is None or plan.rotation_seed is None or plan.uplink not in BITS_OF:
            raise ValueError("a secure plan needs a clip, a rotation seed and q8/q4/q2")
        layout = self._layout(setup.range_sigmas)
        if setup.dim != layout.dim:
            raise ValueError(f"the round masks {setup.dim} entries, this update has "
                             f"{layout.dim}")
        if setup.k < layout.modulus_bits(len(setup.clients)):
            raise ValueError(f"modulus 2^{setup.k} is too small for {len(setup.clients)} "
                             "summands: the sum would wrap")
        params = RoundParams(setup.round_id, tuple(setup.clients), setup.threshold,
                             setup.dim, setup.k, setup.degree, bytes.fromhex(setup.graph_seed))
        self.k = setup.k
        self.sigmas = setup.range_sigmas
        self.weight_cap = setup.weight_cap
        self.phone = Phone(setup.uid, params)
        return self.phone

    def _masked(self, relay: ShareRelay) -> wire.SecAggSubmit | Refusal:
        assert self.phone is not None
        plan = self.task.plan
        rng = np.random.default_rng([plan.seed, ROUNDING_STREAM])
        scale = (example_weight(self.num_examples, self.weight_cap) if self.weight_cap
                 else 1.0)
        enc = encode_codes(self.update, self._layout(self.sigmas), rng, scale)
        out = self.phone.masked_input(relay, as_residues(enc.codes, self.k))
        if isinstance(out, Refusal):
            return out
        self.update = []  # masked and sent: the plaintext is not kept
        return wire.SecAggSubmit(out.to_dict(), self.num_examples, self.loss, enc.unclipped,
                                 enc.clipped_values,
                                 {k: round(v, 4) for k, v in self.timings.items()})
