"""Secure aggregation on the HTTP round: the four phases of Bonawitz et al. 2017 as round
phases (data), driven by the round machine like selection and reporting.

A secure training round's phases (:func:`secure_round_phases`)::

    selection --> advertise_keys --> share_keys --> masked_input --> unmasking --> commit
                  (keys, while       (sealed        (phones train,  (shares of b /
                   phones train)      shares)        mask, send)     s_SK)

Phones start training when they get their task and send their keys meanwhile (from a
pool thread: :mod:`fedkb.device_runtime.secagg_client`), so the key phases take a
fraction of a second and each phone masks and sends as soon as it has trained: masking
overlaps the others' training instead of starting after the slowest. A phone that stops
in training is a dropout after ShareKeys, which the protocol recovers. Each phase has its
own deadline (masked input: ``round.reporting_deadline_s``, since phones train in it;
the others ``secagg.phase_deadline_s``) and minimum count
``max(t, min_reports)`` (unmasking: t responders; the summands are the masked-input
phase's survivors); it ends at its deadline or once every phone still in the
protocol has answered, and the round is abandoned (``secagg_<phase>``, the protocol's
reason kept in the round's ``stats.secagg.abort``) when fewer remain. t is fixed when
selection ends, from the cohort actually selected (:meth:`SecAggConfig.threshold_for`).

What the server holds (:class:`SecureRound`): the protocol's
:class:`~fedkb.secagg.server.SecAggServer` (public keys, sealed shares until relayed,
commitments, the running *sum* of masked vectors, revealed shares), each phone's scalars
(examples, loss: what an upload's metadata says) and counters. No individual update,
masked or not, is kept: a masked vector is folded into the sum and dropped as it arrives,
and nothing of it is written to the database or the logs. The unmasked sum is decoded
(:func:`fedkb.secagg.update_codec.decode_sum`: field decoding, un-rotation), divided by
the summands' total weight and handed to the round's ordinary aggregator as one update,
so the strategy and the model checks after it are unchanged. With
``strategy.weighting = "examples"`` (the default) and no DP, the mean is example-weighted
as FedAvg's up to a cap: the setup carries ŵ as ``weight_cap`` (4x the last round's
90th-percentile examples claim, at most the plan's budget,
:meth:`~fedkb.server.round_machine.RoundMachine._secure_weight_cap`), each phone scales
its clipped delta by :func:`~fedkb.secagg.update_codec.example_weight` (``min(n, ŵ) /
ŵ``, at most 1, so the field's range holds) and the server divides the sum by the same
weights computed from the examples the survivors reported. Otherwise (``uniform``, DP,
whose sensitivity needs weight 1, or the first round) every summand weighs 1. With
``[privacy]`` the round's DP stage takes the unmasked *sum* instead
(``accumulate_sum``: each phone clipped to the round's C itself) and adds its central
Gaussian noise to it, as for plain rounds, scaled to a *rounded* update's bound Δ
(:attr:`~fedkb.secagg.update_codec.UpdateLayout.sensitivity`): the server is trusted
with the noise. With ``privacy.distributed`` the phones add it instead: :meth:`begin`
sizes each phone's discrete Gaussian share (``z·Δ / sqrt(max(t, min_reports))``, sent
in the setup as ``noise_std``), the modulus gets the noise's margin, and the decoded
sum goes to :class:`~fedkb.server.privacy.distributed.PhonesNoisedSum` with what its
noise reached (:meth:`phones_noise`).

Phones talk to it through ``GET``/``POST /v1/tasks/<id>/secagg``
(:class:`~fedkb.wire.SecAggStep`, :class:`~fedkb.wire.SecAggSubmit`). A refused message
(wrong phase, late, duplicate, forged, wrong length or modulus, ...) leaves the sum as it
was and is counted in the round's ``rejected`` as ``secagg_<code>``.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from fedkb.compression.field import FieldOverflowError
from fedkb.secagg.distributed_dp import noise_scale
from fedkb.secagg.messages import (
    Abort,
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    MessageError,
    Refusal,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from fedkb.secagg.params import RoundParams
from fedkb.secagg.server import SecAggServer, SumResult
from fedkb.secagg.update_codec import BITS_OF, UpdateLayout, decode_sum, example_weight
from fedkb.server.config import RoundConfig, SecAggConfig
from fedkb.server.phases import TRAINING, Phase
from fedkb.server.privacy.distributed import PhonesNoise
from fedkb.wire import SecAggSetup, SecAggStep, SecAggSubmit

if TYPE_CHECKING:
    from fedkb.server.rounds import RoundState
    from fedkb.server.tasks import TaskBook, TaskRecord

ADVERTISE, SHARE, MASKED, UNMASK = ("advertise_keys", "share_keys", "masked_input",
                                    "unmasking")
SECURE_PHASES = (ADVERTISE, SHARE, MASKED, UNMASK)
# the wire's phase names (fedkb.wire.SECAGG_PHASES) and the messages each phase takes
WIRE_PHASE = {ADVERTISE: "advertise_keys", SHARE: "share_keys",
              MASKED: "masked_input_collection", UNMASK: "unmasking"}
MESSAGE_OF = {ADVERTISE: AdvertiseKeys, SHARE: ShareKeys, MASKED: MaskedInput,
              UNMASK: UnmaskResponse}
POLL_S = 0.25  # wall s: a phone with nothing to send asks again after this long
# the protocol's refusals a phone is told apart: too late / already answered (409) and
# everything else (a message the protocol refuses: 422)
LATE_CODES = frozenset({"phase_closed", "duplicate", "not_eligible"})


def secure_round_phases(cfg: RoundConfig, sa: SecAggConfig, goal: int) -> tuple[Phase, ...]:
    """Selection, then the four secure phases (their minimum is set again, from the
    cohort actually selected, when selection ends: :meth:`SecureRound.begin`)."""
    need = cfg.min_reports(goal)
    t = sa.threshold_for(cfg.target(goal))
    sel = max(need, t if sa.threshold > 1 else 2)
    return (Phase("selection", "selecting", cfg.selection_window_s, sel, "too_few_devices"),
            *(Phase(name, TRAINING, cfg.reporting_deadline_s if name == MASKED
                    else sa.phase_deadline_s, t if name == UNMASK else max(need, t),
                    f"secagg_{name}")
              for name in SECURE_PHASES))


def parse_message(d: dict[str, Any], data: bytes | memoryview | None = None) -> Any:
    """A phone's protocol message from its JSON object (type tag first); with ``data``
    the framed masked input's vector, which only a MaskedInput carries; MessageError."""
    kind = d.get("type")
    if data is not None:
        if kind != MaskedInput.TYPE:
            raise MessageError(f"only a masked input comes framed, not {kind!r}")
        return MaskedInput.from_json(d, data=bytes(data))
    for cls in MESSAGE_OF.values():
        if kind == cls.TYPE:
            return cls.from_json(d)
    raise MessageError(f"no phone message of type {kind!r}")


class SecureRound:
    """One secure round's protocol state on the server."""

    def __init__(self, cfg: SecAggConfig, round_id: int, shapes: tuple[tuple[int, ...], ...],
                 uplink: str, clip: float, rotation_seed: int, min_reports: int = 1,
                 weight_cap: int = 0, dp_multiplier: float = 0.0) -> None:
        self.cfg, self.min_reports = cfg, min_reports
        self.weight_cap = weight_cap  # > 0: example-weighted (the phones scale, see _fold_sum)
        # > 0: distributed DP, the target z of the sum's noise, which the phones add (begin)
        self.dp_multiplier = dp_multiplier
        self.rid = f"r{round_id}"
        self.layout = UpdateLayout(shapes, BITS_OF[uplink], clip, rotation_seed,
                                   cfg.range_sigmas)
        self.uids: dict[str, int] = {}  # task id -> the phone's protocol id
        self.params: RoundParams | None = None
        self.server: SecAggServer | None = None
        self.roster: KeyRoster | None = None
        self.relays: dict[int, ShareRelay] = {}
        self.request: UnmaskRequest | None = None
        self.result: SumResult | None = None
        self.abort: Abort | None = None
        self.responders: set[int] = set()
        # phones that said they left after their masked input (unplugged): still summands,
        # but unmasking does not wait for them (their self-masks come from the others' shares)
        self.left: set[int] = set()
        self.last_answer_at: float | None = None  # server clock of the newest accepted message
        self.scalars: dict[int, tuple[int, float | None]] = {}  # uid -> (examples, loss)
        self.unclipped: dict[int, bool | None] = {}  # uid -> the phone's clip bit
        self.refused: Counter[str] = Counter()
        self.clipped_values = 0
        self.cpu_s: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0

    # -- phases ---------------------------------------------------------------------

    def begin(self, rnd: RoundState) -> None:
        """Selection is over: number the cohort and fix the round's public parameters."""
        n = len(rnd.task_ids)
        t = self.cfg.threshold_for(n)
        self.uids = {tid: i + 1 for i, tid in enumerate(rnd.task_ids)}
        if n < 2 or t > n or 2 * t <= n:
            self.abort = Abort(ADVERTISE, f"{n} phones selected: no threshold t with "
                               f"n/2 < t <= n (t={t})")
            return
        # up to the masked inputs a phase needs the reports the round needs (its survivors
        # bound the summands); unmasking needs t responders only: the sum is U3's
        rnd.phases = tuple(p if p.name not in SECURE_PHASES else
                           Phase(p.name, p.state, p.deadline_s,
                                 t if p.name == UNMASK else max(t, self.min_reports), p.short)
                           for p in rnd.phases)
        if self.dp_multiplier > 0:
            self._size_phone_noise(t)
        degree = self.cfg.neighbours
        if degree is not None and degree >= n - 1:
            degree = None  # every other phone: full SecAgg
        self.params = RoundParams(self.rid, tuple(range(1, n + 1)), t, self.layout.dim,
                                  self.layout.modulus_bits(n), degree,
                                  secrets.token_bytes(32) if degree is not None else b"")
        self.server = SecAggServer(self.params)

    def _size_phone_noise(self, t: int) -> None:
        """Distributed DP: each phone's share of the target noise ``z·Δ`` on the sum, for
        the fewest summands the round commits with (``max(t, min_reports)``): any
        commit's sum carries at least the target (fedkb.secagg.distributed_dp)."""
        floor = max(t, self.min_reports)
        std = self.dp_multiplier * self.layout.sensitivity / floor ** 0.5
        lay = dataclasses.replace(self.layout, noise_std=std, noise_scale=1)
        low = min((float(x.min()) for x in lay.lattice if x.size), default=0.0)
        self.layout = dataclasses.replace(lay, noise_scale=noise_scale(low))

    def phones_noise(self, n_summands: int) -> PhonesNoise:
        """What the noise in a sum of ``n_summands`` masked inputs is (public numbers)."""
        lay = self.layout
        return PhonesNoise(lay.noise_std * n_summands ** 0.5, lay.sensitivity,
                           lay.tau(n_summands), n_summands)

    def set_clip(self, clip: float) -> None:
        """A pipelined round configured with this round's C_t (adaptive clipping, which
        distributed DP does not take: its noise is sized from a fixed clip)."""
        if clip != self.layout.clip:
            assert self.dp_multiplier == 0, "distributed DP runs at a fixed clip"
            self.layout = dataclasses.replace(self.layout, clip=clip)

    def _timed(self, what: str, fn: Any) -> Any:
        t0 = time.thread_time()
        try:
            return fn()
        finally:
            self.cpu_s[what] += time.thread_time() - t0

    def answered(self, name: str) -> set[int]:
        s = self.server
        if s is None:
            return set()
        return {ADVERTISE: s.u1, SHARE: s.u2, MASKED: s.u3, UNMASK: self.responders}[name]

    def expected(self, name: str) -> set[int]:
        """The phones that may still answer phase ``name`` (before aborted tasks)."""
        s = self.server
        if s is None:
            return set()
        return {ADVERTISE: set(s.params.clients), SHARE: s.u1, MASKED: set(self.relays),
                UNMASK: s.u3}[name]

    def close(self, name: str, rnd: RoundState) -> None:
        """End phase ``name``: the protocol's close, and the next phase's messages."""
        s = self.server
        if s is None or self.abort is not None:
            return
        closer = {ADVERTISE: s.close_advertise, SHARE: s.close_shares,
                  MASKED: s.close_masked, UNMASK: s.close_unmask}[name]
        out = self._timed(name, closer)
        if isinstance(out, Abort):
            self.abort = out
        elif name == ADVERTISE:
            self.roster = out
        elif name == SHARE:
            self.relays = out
        elif name == MASKED:
            self.request = out
            self.relays = {}
        else:
            self.result = out
            self._timed("decode", lambda: self._fold_sum(out, rnd))

    def _fold_sum(self, result: SumResult, rnd: RoundState) -> None:
        """The unmasked sum as the mean update, into the round's aggregator."""
        assert self.params is not None
        n = result.n_summands
        try:
            total = decode_sum(result.total, n, self.params.k, self.layout,
                               len(self.params.clients))
        except (FieldOverflowError, ValueError) as exc:
            self.abort = Abort(UNMASK, f"the unmasked sum is not an honest sum: {exc}")
            return
        if rnd.aggregator is None:
            return
        bits = [self.unclipped.get(u) for u in result.survivors]
        if hasattr(rnd.aggregator, "accumulate_noised_sum"):  # distributed DP: phones' noise
            rnd.aggregator.accumulate_noised_sum(total, self.phones_noise(n), bits)
            return
        if hasattr(rnd.aggregator, "accumulate_sum"):  # DP: noise on the unmasked sum
            rnd.aggregator.accumulate_sum(total, n, bits, self.layout.sensitivity)
            return
        # example-weighted: each phone sent example_weight(examples) x its clipped delta,
        # so the sum over the survivors' total of those weights is FedAvg's weighted mean
        examples = [self.scalars.get(u, (0, None))[0] for u in result.survivors]
        denom = (sum(example_weight(e, self.weight_cap) for e in examples)
                 if self.weight_cap else float(n))
        mean = [(a / np.float32(denom)).astype(np.float32) for a in total]
        rnd.aggregator.accumulate(mean, float(max(sum(examples), 1)))

    # -- a phone's requests ---------------------------------------------------------

    def step(self, task: TaskRecord, rnd: RoundState) -> SecAggStep:
        """What the round's current phase wants of ``task``'s phone."""
        uid = self.uids.get(task.id)
        name = rnd.phase.name
        if self.abort is not None:
            return SecAggStep(rnd.id, "aborted", reason=self.abort.reason)
        if name == "selection" or self.server is None or self.params is None:
            return SecAggStep(rnd.id, "waiting", retry_after_s=POLL_S)
        if uid is None:
            return SecAggStep(rnd.id, "aborted", reason="not in this round's cohort")
        if uid in self.answered(name):
            return SecAggStep(rnd.id, "waiting", retry_after_s=POLL_S)
        if uid not in self.expected(name):
            return SecAggStep(rnd.id, "aborted", reason=f"dropped before {name}")
        msg: Any = None
        setup = None
        if name == ADVERTISE:
            p = self.params
            setup = SecAggSetup(p.round_id, uid, list(p.clients), p.threshold, p.dim, p.k,
                                p.degree, p.graph_seed.hex(), self.layout.sigmas,
                                self.weight_cap, self.layout.noise_std,
                                self.layout.noise_scale)
        elif name == SHARE:
            msg = self.roster
        elif name == MASKED:
            msg = self.relays[uid]
        else:
            msg = self.request
        body = None if msg is None else msg.to_dict()
        out = SecAggStep(rnd.id, WIRE_PHASE[name], setup, body)
        self.bytes_down += len(out.dumps())
        return out

    def submit(self, task: TaskRecord, rnd: RoundState, sub: SecAggSubmit, msg: Any,
               size: int, now: float | None = None) -> Refusal | None:
        """Take a phone's message for the current phase (None) or refuse it; ``now``
        (the server's clock) is when it came, for unmasking's quiet rule."""
        s = self.server
        uid = self.uids.get(task.id)
        name = rnd.phase.name
        if self.abort is not None or s is None:
            return self._refuse("phase_closed", "the secure round has no open phase")
        if uid is None or getattr(msg, "sender", None) != uid:
            return self._refuse("wrong_sender", f"the message's sender is not task "
                                f"{task.id}'s phone ({uid})")
        expected = MESSAGE_OF.get(name)
        if expected is None or not isinstance(msg, expected):
            return self._refuse("phase_closed", f"a {type(msg).__name__} message while the "
                                f"round is at {name}")
        receive = {ADVERTISE: s.receive_advertise, SHARE: s.receive_shares,
                   MASKED: s.receive_masked, UNMASK: s.receive_unmask}[name]
        refusal = self._timed(name, lambda: receive(msg))
        if refusal is not None:
            self.refused[refusal.code] += 1
            return refusal
        self.bytes_up += size
        if now is not None:
            self.last_answer_at = now
        if name == MASKED:
            self.scalars[uid] = (int(sub.num_examples or 0), sub.loss)
            self.unclipped[uid] = sub.unclipped
            self.clipped_values += int(sub.clipped_values or 0)
        elif name == UNMASK:
            self.responders.add(uid)
        return None

    def leave(self, task_id: str) -> bool:
        """The phone of ``task_id`` leaves after its masked input (its task is reported,
        so it cannot abort it): unmasking stops waiting for it. False: not such a phone
        (no masked input in, already answered unmasking, or the protocol is over)."""
        uid = self.uids.get(task_id)
        if (uid is None or self.abort is not None or self.result is not None
                or uid not in self.answered(MASKED) or uid in self.responders):
            return False
        self.left.add(uid)
        return True

    def _refuse(self, code: str, reason: str) -> Refusal:
        self.refused[code] += 1
        return Refusal(code, reason)

    # -- what the round's stats say -------------------------------------------------

    def summary(self) -> dict[str, Any]:
        s, p = self.server, self.params
        out: dict[str, Any] = {
            "n": len(self.uids), "threshold": None if p is None else p.threshold,
            "neighbours": None if p is None else p.degree,
            "modulus_bits": None if p is None else p.k, "dim": self.layout.dim,
            "survivors": {name: len(self.answered(name)) for name in SECURE_PHASES},
            "dropouts": {} if s is None else s.dropouts(),
            "recovered": {}, "refused": dict(self.refused),
            "left_after_masked_input": len(self.left),
            "abort": None if self.abort is None else {"phase": self.abort.phase,
                                                      "reason": self.abort.reason},
            "clipped_values": self.clipped_values,
            # distributed DP: each phone's discrete Gaussian std (float units) and lattice
            "phone_noise": ({"std": self.layout.noise_std, "scale": self.layout.noise_scale}
                            if self.layout.noise_std > 0 else None),
            "server_cpu_s": {k: round(v, 6) for k, v in self.cpu_s.items()},
            "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}
        if self.result is not None and self.abort is None and s is not None:
            d = self.result.dropouts
            # survived: shares of s_SK removed the pairwise masks of phones that dropped
            # after sharing; shares of b the self-masks of those that dropped after input
            out["recovered"] = {"after_shares": d.get("after_shares", 0),
                                "after_masked_input": d.get("after_masked_input", 0)}
        return out


class SecurePhase:
    """The round machine's handler of one secure phase (:class:`~.phases.PhaseHandler`)."""

    def __init__(self, name: str, tasks: TaskBook) -> None:
        self.name, self.tasks = name, tasks

    def begin(self, rnd: RoundState, now: float) -> None:
        if self.name == ADVERTISE and rnd.secure is not None:
            rnd.secure.begin(rnd)

    def _gone(self, rnd: RoundState, sec: SecureRound) -> set[int]:
        """Phones whose task was aborted (unplugged, ...) or that left after their masked
        input: they answer nothing more."""
        out = set(sec.left)
        for tid, uid in sec.uids.items():
            task = self.tasks.get(tid)
            if task is None or task.state == "aborted":
                out.add(uid)
        return out

    def over(self, rnd: RoundState, now: float) -> bool:
        sec = rnd.secure
        if sec is None or sec.abort is not None or now >= rnd.phase_deadline:
            return True
        waiting = sec.expected(self.name) - sec.answered(self.name) - self._gone(rnd, sec)
        if not waiting:
            return True
        # unmasking: t answers are enough; the silent rest unplugged after their masked
        # input without saying so (a phone that can says it left: SecureRound.leave), so
        # do not wait out the deadline
        quiet = sec.cfg.unmask_quiet_s
        return (self.name == UNMASK and quiet > 0 and sec.params is not None
                and len(sec.answered(UNMASK)) >= sec.params.threshold
                and sec.last_answer_at is not None and now - sec.last_answer_at >= quiet)

    def end(self, rnd: RoundState, now: float) -> None:
        if rnd.secure is not None:
            rnd.secure.close(self.name, rnd)
            if self.name == MASKED:  # the summands: counted as the round's reports
                sec = rnd.secure
                for uid in sec.answered(MASKED):
                    examples, loss = sec.scalars.get(uid, (0, None))
                    rnd.stats.reported += 1
                    rnd.claim(examples)
                    if loss is not None:
                        rnd.scalars.accumulate({"loss": loss}, float(max(examples, 1)))
            rnd.stats.secagg = rnd.secure.summary()

    def count(self, rnd: RoundState) -> int:
        sec = rnd.secure
        if sec is None or sec.abort is not None:
            return 0
        return len(sec.answered(self.name))
