"""ε of a run's recorded DP events, fast enough to recompute at every commit.

:func:`fedkb.server.privacy.accounting.epsilon` composes the events in ``dp_accounting``
afresh on every call; for fixed-size cohorts most of its time goes to the RDP curve of
one ``SampledWithoutReplacementDpEvent`` (about 0.6 s on this project's VM), the same
for every round with the same (z, N, m). :class:`EpsilonLedger` computes that curve once
per distinct event and composes by adding curves, which is exactly what the RDP
accountant does for ``SelfComposedDpEvent`` (RDP composes additively, Mironov 2017), then
converts with ``dp_accounting``'s own ``compute_epsilon``; the test suite checks the two
agree. Other mechanisms (Poisson's PLD, DP-FTRL's zCDP) go to ``accounting`` unchanged.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import dp_accounting
import numpy as np
from dp_accounting import rdp
from dp_accounting.rdp import rdp_privacy_accountant

from fedkb.server.privacy.accounting import (
    DISCRETE_TAU,
    FIXED,
    PrivacySpent,
    RoundEvent,
    as_if_noise_cohort,
    discrete_tau,
    epsilon,
)


class EpsilonLedger:
    """``accounting.epsilon`` with the per-event RDP curves of fixed cohorts cached."""

    def __init__(self) -> None:
        self._curves: dict[tuple[float, int, int], tuple[Sequence[float], np.ndarray]] = {}

    def _curve(self, z: float, n: int, m: int) -> tuple[Sequence[float], np.ndarray]:
        key = (z, n, m)
        if key not in self._curves:
            acc = rdp.RdpAccountant(
                neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
            acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(
                n, m, dp_accounting.GaussianDpEvent(z / 2)))
            self._curves[key] = (list(acc._orders), np.asarray(acc._rdp, dtype=np.float64))
        return self._curves[key]

    def spent(self, events: Iterable[RoundEvent], delta: float) -> PrivacySpent:
        """The run's (ε, δ) from its events, equal to :func:`accounting.epsilon`."""
        events = list(events)
        if not events or {e.mechanism for e in events} != {FIXED}:
            return epsilon(events, delta)
        groups = Counter((e.noise_multiplier, e.population, e.clients_per_round)
                         for e in events)
        if any(z == 0 for z, _, _ in groups):
            eps = math.inf
        else:
            orders: Sequence[float] = ()
            total: np.ndarray | float = 0.0
            for (z, n, m), count in groups.items():
                assert n is not None and m is not None  # RoundEvent checks fixed events
                orders, curve = self._curve(z, n, m)
                total = total + count * curve
            eps = float(rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])
        tau = discrete_tau(events)
        label = DISCRETE_TAU if any(e.discrete_tau is not None for e in events) else ""
        return PrivacySpent(eps + tau, delta, FIXED, "rdp" + label, "replace_one",
                            len(events))

    def hypothetical(self, events: Sequence[RoundEvent], delta: float) -> PrivacySpent:
        """ε of the pretended deployment of a ``noise_cohort`` run (never the run's own
        guarantee; see :func:`accounting.hypothetical_epsilon`)."""
        return self.spent([as_if_noise_cohort(e) for e in events], delta)
