"""DP aggregation stages: the clipped unweighted sum, and DP-FedAvg's noised mean over a
fixed denominator. They compose like :mod:`fedkb.server.aggregate`'s stages (the same
``accumulate`` / ``result`` / ``count`` interface, measurements in the result).

DP-FedAvg (McMahan et al. 2018, https://arxiv.org/abs/1710.06963), the estimator
``f_c`` of its Algorithm 1 with every device weighted 1:

    mean = (Σ_i clip_C(Δ_i) + N(0, z²C²·I)) / m

- **Unweighted.** One device moves the sum by at most ``C`` (``2C`` when it is replaced
  by another), whatever it trained on. Weighting by ``num_examples`` would let a device
  that claims many examples move the mean by more than the noise covers: the weight is
  the device's own, unprivatised input, so a weighted mean has no sensitivity bound
  (Flower shipped this bug, flwr PR #7934). What it costs: devices with long shards
  count as much as those with short ones (measured in ``bench/README.md``).
- **Fixed denominator.** ``m`` is the round's report goal, not the number that came:
  dividing by the count would make the count itself a private output.
- **Clipped on the phone** (:func:`fedkb.clipping.clip_update`, the plan carries C).
  Where the server sees updates it checks the bound again: an update over ``C`` (beyond
  float rounding) is clipped here and counted (``over_clip``).

:class:`ClippedSum` is the part every DP mechanism shares: the sum of clipped updates
(float64) and the devices' unclipped bits. The noise is placed per mechanism:
:class:`GaussianMean` adds DP-FedAvg's per-round Gaussian; DP-FTRL's strategy takes the
clipped sum as it is and adds its tree noise itself (``ClippedSum.result().value`` is the
sum, ``measurements["denominator"]`` the m to divide by).

Only public values are measured: the noise std, the denominator, the number of reports,
the updates the server had to clip, and with adaptive clipping the *noisy* unclipped
fraction. Update norms and the raw count of unclipped updates are private and never
reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fedkb.clipping import clip_update
from fedkb.server.aggregate import AggregateResult, Arrays, Measurements, fold, zeros_like_specs
from fedkb.server.privacy.accounting import RoundEvent
from fedkb.server.privacy.adaptive_clip import (
    AdaptiveClip,
    next_clip,
    noisy_unclipped_fraction,
)
from fedkb.server.privacy.noise import NormalSource, add_gaussian
from fedkb.weights import WeightSpec

OVER_CLIP_TOLERANCE = 1e-5  # relative: a phone's float32 clip lands within this of C


class ClippedSum:
    """Σ_i clip_C(Δ_i), every update weight 1; the unclipped bits kept for adaptive
    clipping (their raw count is private: it leaves only noised, via
    :class:`GaussianMean`).

    ``event`` is the round's DP event (what the accountant records), fixed when the round
    was configured; ``denominator`` its report goal m.
    """

    def __init__(self, specs: Sequence[WeightSpec], clip: float, denominator: int,
                 event: RoundEvent | None = None) -> None:
        if denominator < 1:
            raise ValueError("the denominator (the round's report goal) must be >= 1")
        self._specs = list(specs)
        self.clip, self.denominator, self.event = clip, denominator, event
        self._sum: Arrays | None = None
        self._count = 0
        self._unclipped = 0
        self.over_clip = 0
        self.rounded_sensitivity: float | None = None

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        """Fold one update with weight 1 (``weight``, the device's claim, is ignored)."""
        self.accumulate_report(arrays, None)

    def accumulate_report(self, arrays: Sequence[np.ndarray], unclipped: bool | None) -> None:
        """Fold one update and the phone's bit ``b = 1[||Δ|| <= C]`` (None: the server
        derives it from the norm it sees; a phone that clipped shows a norm of C)."""
        clipped, _, norm = clip_update(arrays, self.clip)
        over = norm > self.clip * (1 + OVER_CLIP_TOLERANCE)
        self.over_clip += over
        if over:
            bit = False
        elif unclipped is None:
            bit = norm < self.clip * (1 - OVER_CLIP_TOLERANCE)
        else:
            bit = unclipped
        if self._sum is None:
            self._sum = zeros_like_specs(self._specs)
        fold(self._sum, clipped, 1.0)
        self._count += 1
        self._unclipped += bool(bit)

    def accumulate_sum(self, total: Sequence[np.ndarray], count: int,
                       unclipped: Sequence[bool | None],
                       sensitivity: float | None = None) -> None:
        """Fold the sum of ``count`` updates each phone clipped to C itself (a secure
        round: the server only ever sees the sum, :mod:`fedkb.server.secure_round`), with
        the phones' bits (None: unknown, counted as clipped). ``sensitivity``, a rounded
        update's bound, is only measured here: DP-FTRL's tree noise is calibrated to C."""
        if sensitivity is not None:
            self.rounded_sensitivity = sensitivity
        if self._sum is None:
            self._sum = zeros_like_specs(self._specs)
        fold(self._sum, total, 1.0)
        self._count += int(count)
        self._unclipped += sum(1 for b in unclipped if b)

    def unclipped_bits(self) -> list[float]:
        """The devices' bits (private: only for the noised fraction)."""
        return [1.0] * self._unclipped + [0.0] * (self._count - self._unclipped)

    def measurements(self) -> Measurements:
        out: Measurements = {"count": self._count, "denominator": self.denominator,
                             "clip": self.clip, "over_clip": self.over_clip}
        if self.rounded_sensitivity is not None:
            out["sensitivity"] = self.rounded_sensitivity
        return out

    def result(self) -> AggregateResult:
        """The clipped sum (float64, not divided) and the public measurements."""
        return AggregateResult(None if self._sum is None else list(self._sum),
                               self.measurements())

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return float(self._count)


class GaussianMean:
    """DP-FedAvg's noised mean: ``(Σ clip_C(Δ_i) + N(0, σ²I)) / m`` around a
    :class:`ClippedSum`.

    ``noise_std`` σ is ``z·C_t`` (``z_Δ·C_t`` with adaptive clipping: this round's clip).
    With ``adaptive`` the result also carries the noisy unclipped fraction ``b̃``
    (count noise σ_b) and the next round's clip ``C_{t+1} = C_t·exp(−η(b̃ − γ))``.
    The noise is drawn once; later calls of :meth:`result` return the same value.
    """

    def __init__(self, inner: ClippedSum, noise_std: float, source: NormalSource,
                 adaptive: AdaptiveClip | None = None) -> None:
        self.inner, self.noise_std, self.source, self.adaptive = inner, noise_std, source, adaptive
        self._result: AggregateResult | None = None
        self.sensitivity: float | None = None  # a secure sum's rounded-update bound (> C)

    @property
    def event(self) -> RoundEvent | None:
        ev = self.inner.event
        if ev is None or self.sensitivity is None:
            return ev
        return dataclasses.replace(ev, clip=self.sensitivity)

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        self.inner.accumulate(arrays, weight)

    def accumulate_report(self, arrays: Sequence[np.ndarray], unclipped: bool | None) -> None:
        self.inner.accumulate_report(arrays, unclipped)

    def accumulate_sum(self, total: Sequence[np.ndarray], count: int,
                       unclipped: Sequence[bool | None],
                       sensitivity: float | None = None) -> None:
        """A secure round's unmasked sum. Its summands are *rounded* clipped updates,
        whose norm may exceed C by the rounding (``sensitivity`` Δ, from the round's
        :class:`~fedkb.secagg.update_codec.UpdateLayout`): the noise is then scaled to
        ``z·Δ`` and the event records Δ as its clip, so z keeps its meaning."""
        self.inner.accumulate_sum(total, count, unclipped)
        if sensitivity is not None and sensitivity > self.inner.clip:
            self.noise_std *= sensitivity / self.inner.clip
            self.sensitivity = sensitivity

    def result(self) -> AggregateResult:
        if self._result is not None:
            return self._result
        inner = self.inner.result()
        m = self.inner.denominator
        measured: Measurements = {**inner.measurements, "noise_std": self.noise_std,
                                  "mean_noise_std": self.noise_std / m}
        if self.sensitivity is not None:
            measured["sensitivity"] = self.sensitivity
        if inner.value is None:  # nothing came: nothing released, no noise drawn
            return AggregateResult(None, measured)
        noised, _ = add_gaussian(inner.value, self.noise_std, self.source)
        value = [(a / m).astype(np.float32) for a in noised]
        if self.adaptive is not None:
            a = self.adaptive
            frac = noisy_unclipped_fraction(self.inner.unclipped_bits(), m, a.sigma_b,
                                            self.source)
            measured["noisy_unclipped_fraction"] = frac
            measured["next_clip"] = next_clip(self.inner.clip, frac, a.target_quantile,
                                              a.learning_rate, a.geometric)
        self._result = AggregateResult(value, measured)
        return self._result

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def total_weight(self) -> float:
        return self.inner.total_weight
