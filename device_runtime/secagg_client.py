"""A phone's side of a secure round over HTTP: the :class:`fedkb.secagg.client.Phone`
state machine, fed by ``GET /v1/tasks/<id>/secagg`` and answering with ``POST``.

A phone in a secure round (its plan has ``secagg``) steps through the round's phases
while it trains, and instead of uploading its clipped delta it masks it:

    advertise_keys           the setup (cohort, t, k, dim) -> two fresh X25519 public keys
    share_keys               the key roster -> sealed Shamir shares of b and s_SK
    masked_input_collection  its share relay -> the delta encoded on the round's shared
                             grid (fedkb.secagg.update_codec), with distributed DP plus
                             its discrete Gaussian noise, masked: uniform in Z_{2^k}
    unmasking                the survivor set -> shares of b (survivors) / s_SK (dropped)

The keys go out at selection, before the phone has trained (the server's phases are in
that order: :func:`fedkb.server.secure_round.secure_round_phases`), so a phone masks and
sends the moment its training ends, and masking overlaps the other phones' training. A
task starts with no update; at the masked-input phase :meth:`SecureTask.advance` keeps the
relay and answers ``(TRAIN, 0)`` until :meth:`SecureTask.trained` hands it the delta
(the worker does, when the training job comes back). A phone lost in training is a
dropout after ShareKeys: the protocol removes its pairwise masks from its s_SK shares.

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
from fedkb.compression.field import modulus_bits
from fedkb.device_runtime.client import DeviceClient, Refused
from fedkb.plan_codec import ROUNDING_STREAM
from fedkb.secagg.client import Phone
from fedkb.secagg.distributed_dp import noise_rng
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
JSON = "application/json"
TRAIN = "train"  # at the masked input, with no update yet: ask again once trained


@dataclass
class SecureTask:
    """One task's secure-aggregation state on the phone (its delta once trained)."""

    task: wire.Task
    # the clipped delta, kept until it is masked (then dropped); None: not trained yet
    update: list[np.ndarray] | None = None
    num_examples: int = 0
    loss: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    phone: Phone | None = None
    k: int = 0
    sigmas: float = 4.0
    weight_cap: int = 0  # > 0: scale the clipped delta by example_weight(examples, cap)
    noise_std: float = 0.0  # > 0: distributed DP, this phone's discrete Gaussian std
    noise_scale: int = 1  # distributed DP: codes x this, the noise on the finer lattice
    refusal: str = ""  # why the phone stopped, if it did
    sent: dict[str, int] = field(default_factory=dict)  # bytes per phase
    relay: ShareRelay | None = None  # the masked-input phase's relay, kept while training
    masked: bool = False  # its masked input is sent (a dropout after it is recovered)
    ended: bool = False  # the worker is done with it (late answers are dropped)
    training: bool = False  # its training job has not come back yet (the phone is busy)
    parked: bool = False  # the worker waits for its training before stepping it again
    # (phase, body, content type) of a POST to retry: sent again byte for byte
    unsent: tuple[str, bytes, str] | None = None

    def trained(self, update: list[np.ndarray], num_examples: int, loss: float | None,
                timings: dict[str, float]) -> None:
        """The training job's result. ``update`` is set last: a pool thread that sees it
        sees the rest (another thread may be in :meth:`advance`)."""
        self.num_examples, self.loss = num_examples, loss
        self.timings.update(timings)
        self.update = list(update)

    def advance(self, client: DeviceClient, token: str,
                wait_s: float = 0.0) -> tuple[str, float]:
        """One exchange: ``(WAIT, seconds)`` (ask again then), ``(DONE, 0)`` or
        ``(STOPPED, 0)`` (the round aborted, dropped this phone, or the phone refused).

        With ``wait_s`` the server may hold the request until the phase changes: a
        "waiting" answer after a hold of the whole ``wait_s`` means ask again at once
        (``(WAIT, 0)``); one that came at once (no thread to spare) keeps its retry."""
        if self.unsent is not None:  # the last POST got no answer: the same again
            return self._post(client, token, *self.unsent, again=True)
        if self.relay is not None:  # trained since the relay came: mask and send it
            if self.update is None:
                return TRAIN, 0.0
            relay, self.relay = self.relay, None
            try:
                sub = self._masked(relay)
            except (MessageError, ValueError) as exc:
                sub = Refusal("bad_message", str(exc))
            return self._send(client, token, "masked_input_collection", sub)
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
        if step.phase == "masked_input_collection" and self.update is None \
                and self.phone is not None and step.message is not None:
            try:  # not trained yet: keep the relay, mask once the delta is here
                self.relay = ShareRelay.from_json(step.message)
            except (MessageError, ValueError) as exc:
                self.refusal = f"bad_message: {exc}"
                return STOPPED, 0.0
            return (TRAIN, 0.0) if self.update is None else self.advance(client, token)
        try:
            sub = self._answer(step)
        except (MessageError, ValueError) as exc:
            sub = Refusal("bad_message", str(exc))
        return self._send(client, token, step.phase, sub)

    def _send(self, client: DeviceClient, token: str, phase: str,
              sub: wire.SecAggSubmit | bytes | Refusal) -> tuple[str, float]:
        """POST ``sub``: a JSON message, or (bytes) a framed masked input."""
        if isinstance(sub, Refusal):
            self.refusal = f"{sub.code}: {sub.reason}"
            return STOPPED, 0.0
        if isinstance(sub, bytes):
            return self._post(client, token, phase, sub, wire.SECAGG_CONTENT_TYPE)
        return self._post(client, token, phase, json.dumps(sub.to_json()).encode("utf-8"),
                          JSON)

    def _post(self, client: DeviceClient, token: str, phase: str, body: bytes,
              content_type: str, again: bool = False) -> tuple[str, float]:
        # kept until the server has it (Retry: sent again)
        self.unsent = (phase, body, content_type)
        try:
            client.secagg_submit(token, self.task.task_id, body, content_type)
        except Refused as r:
            # a resend refused as a repeat or as late: the lost answer's POST may have got
            # through (the phase can have moved on since). The next GET says which.
            if not (again and r.code == "secagg_phase_closed"):
                raise
        self.unsent = None
        self.sent[phase] = len(body)
        if phase == "masked_input_collection":
            self.masked = True  # (after a refused resend: maybe; a silent phone is safe)
        return WAIT, 0.0

    def _answer(self, step: wire.SecAggStep) -> wire.SecAggSubmit | bytes | Refusal:
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
        assert self.update is not None
        return UpdateLayout(tuple(tuple(a.shape) for a in self.update), BITS_OF[plan.uplink],
                            plan.clip, plan.rotation_seed, sigmas, noise_std=self.noise_std,
                            noise_scale=self.noise_scale)

    def _start(self, setup: wire.SecAggSetup) -> Phone:
        plan = self.task.plan
        if plan.clip is None or plan.rotation_seed is None or plan.uplink not in BITS_OF:
            raise ValueError("a secure plan needs a clip, a rotation seed and q8/q4/q2")
        # the length is checked once the delta is here (_masked): keys go out before training
        if setup.k < modulus_bits(BITS_OF[plan.uplink], len(setup.clients)):
            raise ValueError(f"modulus 2^{setup.k} is too small for {len(setup.clients)} "
                             "summands: the sum would wrap")
        params = RoundParams(setup.round_id, tuple(setup.clients), setup.threshold,
                             setup.dim, setup.k, setup.degree, bytes.fromhex(setup.graph_seed))
        self.k = setup.k
        self.sigmas = setup.range_sigmas
        self.weight_cap = setup.weight_cap
        self.noise_std = setup.noise_std
        self.noise_scale = setup.noise_scale
        self.phone = Phone(setup.uid, params)
        return self.phone

    def _masked(self, relay: ShareRelay) -> bytes | Refusal:
        """The masked input, framed (FKBS: the packed vector as raw bytes after a JSON
        header, :func:`fedkb.wire.frame_secagg`)."""
        assert self.phone is not None
        plan = self.task.plan
        rng = np.random.default_rng([plan.seed, ROUNDING_STREAM])
        scale = (example_weight(self.num_examples, self.weight_cap) if self.weight_cap
                 else 1.0)
        layout = self._layout(self.sigmas)
        if layout.dim != self.phone.params.dim:
            return Refusal("bad_setup", f"the round masks {self.phone.params.dim} entries, "
                           f"this update has {layout.dim}")
        n = len(self.phone.params.clients)
        if layout.modulus_bits(n) > self.k:
            return Refusal("bad_setup", f"modulus 2^{self.k} is too small for the noised sum "
                           f"of {n} phones")
        enc = encode_codes(self.update, layout, rng, scale)
        # distributed DP: the noise comes from a generator the server knows nothing of
        noise = layout.noise(noise_rng()) if layout.noise_std > 0 else None
        out = self.phone.masked_input(relay, as_residues(enc.codes, self.k, noise,
                                                         layout.noise_scale))
        if isinstance(out, Refusal):
            return out
        self.update = []  # masked (the body is kept until sent): the plaintext is not kept
        # distributed DP: the clip bit and the grid-clipped count say something about the
        # update the noise does not cover, and with a fixed clip nothing reads them
        private = layout.noise_std > 0
        sub = wire.SecAggSubmit(out.header(), self.num_examples, self.loss,
                                None if private else enc.unclipped,
                                None if private else enc.clipped_values,
                                {k: round(v, 4) for k, v in self.timings.items()})
        return wire.frame_secagg(sub, out.data)
