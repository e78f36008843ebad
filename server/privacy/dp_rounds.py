"""Differential privacy in the round server: the clip each plan carries, each training
round's DP stage, its recorded event, the budget, and what status shows.

:class:`PrivacyRounds` is what the round machine asks when ``[privacy]`` is on:

- ``clip`` — the C the plan carries (this round's ``C_t`` with adaptive clipping; the
  round keeps the clip it was configured with, and ``C_{t+1}`` is persisted when a round
  releases its noisy unclipped fraction, so a restart continues the trajectory);
- :meth:`aggregator` — the round's DP stage (:mod:`.dp_mean`), carrying its
  :class:`~.accounting.RoundEvent`;
- :meth:`allows` — whether another training round fits the budget
  (``target_epsilon``): counted are the rounds recorded, the rounds open, and the one to
  open; if it does not fit, training stops for good (``stopped``, in status);
- :meth:`record` — the round's privacy record for its stats row (event, δ, ε after it),
  written in the commit's transaction: ε can be recomputed from the state directory
  alone (:func:`recorded_events`).

Accounting (``fedavg``): fixed-size cohorts of ``m`` (the report goal) from ``N``, RDP
with replace-one neighbours and ``SampledWithoutReplacementDpEvent(N, m,
GaussianDpEvent(z/2))``: replacing one device's clipped update by another's moves the sum
by up to ``2C`` against noise std ``zC`` (:mod:`.accounting`). ``N`` is
``privacy.population``, or the training devices registered when the first DP round opens;
it and δ are fixed for the run then (stored in the database). The sampling assumption is
the server's: rounds draw from the devices that check in, not uniformly from all ``N``
(DP-FTRL's accounting needs no such assumption).

With ``distributed`` the phones add the noise (:mod:`.distributed`): the stage adds
none, and the round records the multiplier the survivors' noise reached.

With ``noise_cohort`` K the sum gets the noise K devices would need (actual multiplier
``z·m/K``); the run's own ε (``epsilon``) stays what it is, the budget and the reports'
``hypothetical_population`` use the pretended deployment's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from fedkb.server.config import PrivacyConfig
from fedkb.server.db import Database
from fedkb.server.metrics import ServerMetrics
from fedkb.server.privacy.accounting import (
    FIXED,
    HYPOTHETICAL,
    PrivacySpent,
    RoundEvent,
    default_delta,
)
from fedkb.server.privacy.adaptive_clip import AdaptiveClip
from fedkb.server.privacy.distributed import PhonesNoisedSum
from fedkb.server.privacy.dp_mean import ClippedSum, GaussianMean
from fedkb.server.privacy.errors import PrivacyConfigError
from fedkb.server.privacy.ledger import EpsilonLedger
from fedkb.server.privacy.noise import NoiseSource, NormalSource
from fedkb.weights import WeightSpec

# A mechanism whose noise a strategy adds (DP-FTRL's tree) also makes the round's event:
# ``event_source(clip, clients_per_round, population)`` (the dpftrl strategy's
# ``dp_event``); DP-FedAvg's events are the fixed-cohort one made here.
EventSource = Callable[[float, int, int], RoundEvent]


def recorded_events(db: Database) -> list[RoundEvent]:
    """Every training round's DP event, oldest first, from the ``rounds`` rows alone."""
    out = []
    for r in db.query("SELECT stats FROM rounds WHERE kind = 'train' ORDER BY id"):
        rec = (json.loads(r["stats"]) if isinstance(r["stats"], str) else r["stats"]).get(
            "privacy")
        if rec:
            out.append(RoundEvent.from_json(rec["event"]))
    return out


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


class PrivacyRounds:
    """The server's DP state and decisions (see the module docstring)."""

    def __init__(self, cfg: PrivacyConfig, db: Database, metrics: ServerMetrics,
                 source: NormalSource | None = None,
                 event_source: EventSource | None = None) -> None:
        if not cfg.enabled:
            raise ValueError("PrivacyRounds needs privacy.mechanism")
        if cfg.mechanism != "fedavg" and event_source is None:
            raise PrivacyConfigError(f"privacy.mechanism {cfg.mechanism}: the strategy "
                                     "adds the noise and must supply the DP events "
                                     "(a dp_event method)")
        self.event_source = event_source
        self.cfg, self.db, self.metrics = cfg, db, metrics
        self.source: NormalSource = source or NoiseSource()
        self.ledger = EpsilonLedger()
        self.clip = float(db.get("privacy_clip", cfg.clip)) if cfg.adaptive else cfg.clip
        self.stopped: dict[str, Any] | None = db.get("privacy_stopped", None)
        self._events = recorded_events(db)
        if cfg.target_epsilon is not None and self._events:
            eps = self._budget(self._events).epsilon
            if eps >= cfg.target_epsilon:
                raise PrivacyConfigError(
                    f"privacy.target_epsilon {cfg.target_epsilon} is already spent by this "
                    f"state directory's {len(self._events)} DP rounds (epsilon {eps:.4g})")
        self._gauges()

    # --- the run's fixed N and delta ------------------------------------------------------

    def population(self, registered: int) -> int:
        n = self.db.get("privacy_population", None)
        if n is None:
            n = self.cfg.population if self.cfg.population is not None else registered
            self.db.put("privacy_population", n)
        return int(n)

    @property
    def delta(self) -> float | None:
        d = self.db.get("privacy_delta", None)
        if d is None and self.db.get("privacy_population", None) is not None:
            d = self.cfg.delta if self.cfg.delta is not None else default_delta(
                int(self.db.get("privacy_population")))
            self.db.put("privacy_delta", d)
        return None if d is None else float(d)

    # --- one round ------------------------------------------------------------------------

    def actual_noise(self, m: int) -> float:
        """The total multiplier on a round of ``m``: z, or z·m/K with ``noise_cohort``."""
        k = self.cfg.noise_cohort
        return self.cfg.noise_multiplier * (m / k if k else 1.0)

    def new_event(self, m: int, registered: int) -> RoundEvent:
        n = self.population(registered)
        if m > n:
            raise PrivacyConfigError(f"report goal {m} exceeds the population {n}")
        if self.event_source is not None:
            return self.event_source(self.clip, m, n)
        return RoundEvent(FIXED, self.actual_noise(m), self.clip, population=n,
                          clients_per_round=m, noise_cohort=self.cfg.noise_cohort)

    def aggregator(self, specs: Sequence[WeightSpec], m: int, registered: int
                   ) -> ClippedSum | GaussianMean | PhonesNoisedSum:
        """The DP stage of a training round of report goal ``m`` at this round's clip."""
        event = self.new_event(m, registered)
        inner = ClippedSum(specs, self.clip, m, event)
        if self.cfg.mechanism != "fedavg":
            return inner  # DP-FTRL: the dpftrl strategy adds the tree noise to the sum
        z = event.noise_multiplier
        if self.cfg.distributed:  # the phones add it (the secure round sizes their share)
            return PhonesNoisedSum(inner, z)
        adaptive = None
        if self.cfg.adaptive:
            adaptive = AdaptiveClip(self.clip, z, m, self.cfg.target_quantile,
                                    self.cfg.clip_learning_rate)
            z = adaptive.sum_noise_multiplier
        return GaussianMean(inner, z * self.clip, self.source, adaptive)

    def allows(self, m: int, registered: int, pending: Sequence[RoundEvent]) -> bool:
        """Whether a training round may open now: not stopped, ``m`` devices registered,
        and within ``target_epsilon`` counting the ``pending`` open rounds and it."""
        if self.stopped is not None or registered < m:
            return False
        if self.cfg.target_epsilon is None:
            return True
        after = self._budget([*self._events, *pending, self.new_event(m, registered)])
        if after.epsilon <= self.cfg.target_epsilon:
            return True
        now = self._budget([*self._events, *pending])
        self.stopped = {"reason": "target_epsilon", "target_epsilon": self.cfg.target_epsilon,
                        "epsilon": _finite(now.epsilon),
                        "epsilon_after_next": _finite(after.epsilon),
                        "rounds": len(self._events) + len(pending)}
        self.db.put("privacy_stopped", self.stopped)
        return False

    def record(self, event: RoundEvent, measurements: dict[str, Any]) -> dict[str, Any]:
        """The privacy record of a round that released its aggregate (for its stats), and
        the clip of the rounds configured from now on."""
        self._events.append(event)
        spent = self.spent()
        rec: dict[str, Any] = {"event": event.to_json(), "delta": spent.delta,
                               "epsilon": _finite(spent.epsilon), "clip": event.clip}
        if "noise_std" in measurements:
            rec["noise_std"] = measurements["noise_std"]
        if self.cfg.noise_cohort is not None:
            rec["hypothetical_epsilon"] = _finite(self.hypothetical().epsilon)
        if self.cfg.adaptive and "next_clip" in measurements:
            self.clip = float(measurements["next_clip"])
            self.db.put("privacy_clip", self.clip)
        self._gauges()
        return rec

    # --- what has been spent --------------------------------------------------------------

    def spent(self) -> PrivacySpent:
        return self.ledger.spent(self._events, self.delta or 1e-5)

    def hypothetical(self) -> PrivacySpent:
        return self.ledger.hypothetical(self._events, self.delta or 1e-5)

    def _budget(self, events: Sequence[RoundEvent]) -> PrivacySpent:
        """What the budget is held to: the run's ε, or the pretended deployment's."""
        delta = self.delta or 1e-5
        if self.cfg.noise_cohort is not None:
            return self.ledger.hypothetical(events, delta)
        return self.ledger.spent(events, delta)

    def _gauges(self) -> None:
        self.metrics.privacy_clip.set(self.clip)
        if self._events:
            self.metrics.privacy_epsilon.set(self.spent().epsilon)

    def status(self) -> dict[str, Any]:
        """The ``privacy`` object of ``/v1/status`` (epsilon None: no guarantee, z = 0)."""
        spent = self.spent() if self._events else None
        out: dict[str, Any] = {
            "mechanism": self.cfg.mechanism, "noise_multiplier": self.cfg.noise_multiplier,
            "clip": self.clip, "adaptive": self.cfg.adaptive,
            "noise_placement": "phones" if self.cfg.distributed else "server",
            "epsilon": 0.0 if spent is None else _finite(spent.epsilon),
            "delta": self.delta, "rounds": len(self._events),
            "accountant": None if spent is None else spent.accountant,
            "neighboring": None if spent is None else spent.neighboring,
            "population": self.db.get("privacy_population", None),
            "target_epsilon": self.cfg.target_epsilon, "stopped": self.stopped}
        if self.cfg.noise_cohort is not None:
            hyp = self.hypothetical() if self._events else None
            out["actual_noise_multiplier"] = self._events[-1].noise_multiplier \
                if self._events else None
            out["hypothetical_population"] = {
                "label": HYPOTHETICAL, "noise_cohort": self.cfg.noise_cohort,
                "epsilon": 0.0 if hyp is None else _finite(hyp.epsilon)}
        return out
