"""Distributed DP-FedAvg's stage: the phones noised the secure sum, the server adds none.

With ``privacy.distributed`` every phone of a secure round adds discrete Gaussian noise
to its field-encoded update (:mod:`fedkb.secagg.distributed_dp`), so the sum the
server unmasks is already noised: the server is not trusted with the noise and never
holds a noise-free sum. This stage sits where :class:`~.dp_mean.GaussianMean` would:

- before the sum: its ``event`` is the round's *target* (multiplier z of the report
  goal, as DP-FedAvg's), which the budget counts for an open round;
- :meth:`accumulate_noised_sum`: the secure round hands over the decoded sum with what
  its noise was (:class:`PhonesNoise`): the total std the survivors' noise reached, the
  sensitivity Δ of a rounded update, and Kairouz et al.'s τ for that many summands;
- the recorded event then carries the multiplier *reached*, ``std / Δ`` rounded down
  (never below the target: each phone added ``1 / n_floor`` of the target variance and
  the round commits only with at least n_floor summands), ``clip = Δ`` and τ
  (:func:`fedkb.server.privacy.accounting.discrete_tau`);
- :meth:`result`: the sum over the fixed denominator m, as DP-FedAvg's mean.

It refuses an ordinary update (:meth:`accumulate`): a server that sees individual
updates should add its own noise, and this stage would add none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkb.secagg.distributed_dp import multiplier_floor
from fedkb.server.aggregate import AggregateResult, Measurements
from fedkb.server.privacy.accounting import RoundEvent
from fedkb.server.privacy.dp_mean import ClippedSum
from fedkb.server.privacy.errors import PrivacyConfigError


@dataclass(frozen=True)
class PhonesNoise:
    """What the noise in a secure round's unmasked sum is (public numbers)."""

    std: float  # per coordinate of the summed update, float units: sqrt(n) x each phone's
    sensitivity: float  # Δ: one phone's rounded update's largest norm
    tau: float  # Prop. 14's τ for the summands' lattice stds
    summands: int


class PhonesNoisedSum:
    """Distributed DP-FedAvg's mean of a sum the phones noised (module docstring)."""

    def __init__(self, inner: ClippedSum, target_multiplier: float) -> None:
        self.inner, self.target_multiplier = inner, target_multiplier
        self.noise: PhonesNoise | None = None

    @property
    def event(self) -> RoundEvent | None:
        ev = self.inner.event
        if ev is None or self.noise is None:
            return ev
        n = self.noise
        z = max(self.target_multiplier, multiplier_floor(n.std / n.sensitivity))
        return dataclasses.replace(ev, noise_multiplier=z, clip=n.sensitivity,
                                   discrete_tau=n.tau)

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        raise PrivacyConfigError("distributed DP takes only a secure round's noised sum")

    accumulate_report = accumulate

    def accumulate_noised_sum(self, total: Sequence[np.ndarray], noise: PhonesNoise,
                              unclipped: Sequence[bool | None]) -> None:
        if self.noise is not None:
            raise PrivacyConfigError("a round has one secure sum")
        reached = noise.std / noise.sensitivity
        if reached < self.target_multiplier * (1 - 1e-9):
            raise PrivacyConfigError(f"the phones' noise reached multiplier {reached:.4g}, "
                                     f"below the round's {self.target_multiplier:.4g}")
        self.inner.accumulate_sum(total, noise.summands, unclipped)
        self.noise = noise

    def result(self) -> AggregateResult:
        inner = self.inner.result()
        m = self.inner.denominator
        measured: Measurements = {**inner.measurements, "noise_placement": "phones"}
        if self.noise is not None:
            measured.update(noise_std=self.noise.std, mean_noise_std=self.noise.std / m,
                            sensitivity=self.noise.sensitivity, discrete_tau=self.noise.tau)
        if inner.value is None:
            return AggregateResult(None, measured)
        return AggregateResult([(a / m).astype(np.float32) for a in inner.value], measured)

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def total_weight(self) -> float:
        return self.inner.total_weight
