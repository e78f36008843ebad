"""Privacy accounting: (ε, δ) for a run, recomputed from its recorded per-round DP events.

Each round that adds Gaussian noise to a clipped sum records one :class:`RoundEvent`
(a JSON-serialisable dict in the round record), so ε can be recomputed from a server's
state directory alone. :func:`epsilon` composes them with Google's ``dp_accounting``.
The guarantee is *device-level*: neighbouring datasets differ in one device's data.

Three mechanisms, never mixed in one run (their neighbouring relations differ):

``fixed`` — DP-FedAvg with a fixed-size cohort of ``m`` of ``N`` devices drawn without
    replacement (McMahan et al. 2018, https://arxiv.org/abs/1710.06963). Fixed ``m``
    only has a bound under *replace-one* neighbours (``N`` is public), so the RDP
    accountant with ``NeighboringRelation.REPLACE_ONE`` and
    ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))`` (Wang, Balle &
    Kasiviswanathan 2019, Thm. 27, https://arxiv.org/abs/1808.00087). Why ``z / 2``:
    replacing one device's clipped update ``u`` (‖u‖ ≤ C) by another ``u'`` moves the
    sum by ``u − u'``, of norm up to ``2C``; the noise std is ``z·C``; the event's
    noise multiplier is std / sensitivity = ``z·C / 2C = z / 2``.
``poisson`` — each device joins a round independently with probability ``q``
    (add/remove-one neighbours, sensitivity ``C``): the PLD accountant (Doroshenko et
    al. 2022) with ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, as DP-SGD does.
``tree`` — DP-FTRL with tree aggregation (Kairouz et al. 2021,
    https://arxiv.org/abs/2103.00039): no sampling assumption. ``dp_accounting`` 0.4.3
    has ``SingleEpochTreeAggregationDpEvent``, but only for "each device at most once
    per tree", which a keyboard fleet cannot promise. We use the zCDP bound of the
    paper's Appendix D instead: a device takes part at most ``k`` times per tree with at
    least ``s`` rounds between two participations; with ``S_j`` the worst-case squared
    sensitivity of tree ``j`` (:mod:`.tree_sensitivity`; ``S = ⌊log2 T⌋ + 1`` for one
    participation) the run is ρ-zCDP with ``ρ = Σ_j S_j / (2 z_j²)`` (trees compose;
    worst case, every tree holds the device). The release is one Gaussian mechanism on
    all nodes, so ρ converts to ε exactly as a Gaussian of multiplier ``1/√(2ρ)``; we
    use the analytic Gaussian curve (:func:`gaussian_epsilon`, Balle & Wang 2018), which
    the tests check equals TF Privacy's ``_gaussian_zcdp_to_epsilon`` (a PLD
    accountant) and is much faster for large ρ. Neighbours are
    dp_accounting's ``REPLACE_SPECIAL`` (a device's data replaced by a record that
    contributes zero), hence sensitivity ``C``, not ``2C``, per leaf.

Sampling is an assumption, not a fact the accountant can check: ``fixed`` and
``poisson`` hold only if the server draws cohorts uniformly (or independently) from all
``N`` devices. A fleet that trains only the devices that are charging, idle and on
Wi-Fi does not; that is the case DP-FTRL's ``tree`` accounting was made for.

``z`` in a :class:`RoundEvent` is always the *actual* noise std on the round's sum
divided by that round's clip ``C`` (the total one, when adaptive clipping splits it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dp_accounting

# dp_accounting (and the SciPy it loads) is imported by the functions that account, not
# here: this module is reached from fedkb.server.strategy, so every `fedkb simulate`,
# `fedkb demo` and `fedkb server` process paid ~1-2 s (10 s on a loaded VM) to import it
# even with no privacy configured (bench/README.md, "The fleet at the compute floor").
from fedkb.server.privacy.errors import PrivacyConfigError
from fedkb.server.privacy.tree_sensitivity import worst_case_sensitivity_squared

FIXED, POISSON, TREE = "fixed", "poisson", "tree"
MECHANISMS = (FIXED, POISSON, TREE)
HYPOTHETICAL = "hypothetical population"
__all__ = [
    "PrivacyConfigError",
    "PrivacySpent",
    "RoundEvent",
    "default_delta",
    "epsilon",
    "gaussian_epsilon",
    "hypothetical_epsilon",
    "noise_for_target",
]
TREE_ACCOUNTANT = "zcdp (exact Gaussian conversion)"


@dataclass(frozen=True)
class RoundEvent:
    """One round's DP event, as recorded; :meth:`to_json` / :meth:`from_json` round-trip.

    ``fixed`` needs ``population`` (N) and ``clients_per_round`` (m); ``poisson`` needs
    ``sampling_rate`` (q); ``tree`` needs ``tree`` (index of the tree since the last
    restart), ``min_separation`` and optionally ``max_participations`` (per tree).
    ``noise_cohort`` (K, with ``clients_per_round``) marks a research run whose noise
    was scaled as if K devices took part (pfl-research's ``noise_cohort_size``).
    """

    mechanism: str
    noise_multiplier: float
    clip: float
    population: int | None = None
    clients_per_round: int | None = None
    sampling_rate: float | None = None
    tree: int | None = None
    min_separation: int | None = None
    max_participations: int | None = None
    noise_cohort: int | None = None
    # distributed DP (fedkb.secagg.distributed_dp): the constant tau the sum of the
    # phones' discrete Gaussians adds to the Gaussian's RDP at every order
    discrete_tau: float | None = None

    def __post_init__(self) -> None:
        z, c = self.noise_multiplier, self.clip
        if self.mechanism not in MECHANISMS:
            raise PrivacyConfigError(f"unknown DP mechanism {self.mechanism!r} "
                                     f"(one of {', '.join(MECHANISMS)})")
        if not (math.isfinite(z) and z >= 0):
            raise PrivacyConfigError(f"noise multiplier must be >= 0, got {z}")
        if not (math.isfinite(c) and c > 0):
            raise PrivacyConfigError(f"clip norm must be > 0, got {c}")
        n, m = self.population, self.clients_per_round
        if m is not None and m < 1:
            raise PrivacyConfigError(f"clients per round must be >= 1, got {m}")
        if self.mechanism == FIXED:
            if n is None or m is None:
                raise PrivacyConfigError("a fixed-cohort event needs population and "
                                         "clients_per_round")
            if m > n:
                raise PrivacyConfigError(f"clients per round ({m}) exceeds the "
                                         f"population ({n})")
        if self.mechanism == POISSON:
            q = self.sampling_rate
            if q is None or not 0 < q <= 1:
                raise PrivacyConfigError(f"sampling rate must be in (0, 1], got {q}")
        if self.mechanism == TREE:
            if self.tree is None or self.tree < 0:
                raise PrivacyConfigError("a tree event needs its tree index (>= 0)")
            s = self.min_separation
            if s is None or s < 0:
                raise PrivacyConfigError(f"min separation must be >= 0, got {s}")
            k = self.max_participations
            if k is not None and k < 1:
                raise PrivacyConfigError(f"max participations must be >= 1, got {k}")
        if self.noise_cohort is not None and (self.noise_cohort < 1 or m is None):
            raise PrivacyConfigError("noise_cohort needs clients_per_round and "
                                     "must be >= 1")
        tau = self.discrete_tau
        if tau is not None and (self.mechanism != FIXED or not (math.isfinite(tau)
                                                                and tau >= 0)):
            raise PrivacyConfigError(f"discrete_tau must be >= 0 and on a fixed-cohort "
                                     f"event (distributed DP-FedAvg), got {tau}")

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundEvent:
        try:
            return cls(**data)
        except TypeError as exc:
            raise PrivacyConfigError(f"not a DP round event: {exc}") from exc


@dataclass(frozen=True)
class PrivacySpent:
    """ε at δ, with how it was computed. ``hypothetical_population`` is set when the ε
    is for the pretended cohort of a ``noise_cohort`` run: then it is *not* the run's
    guarantee."""

    epsilon: float
    delta: float
    mechanism: str
    accountant: str
    neighboring: str
    rounds: int
    rho: float | None = None
    hypothetical_population: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["epsilon"] = None if math.isinf(self.epsilon) else self.epsilon
        return {k: v for k, v in out.items()
                if v is not None or k == "epsilon"}


def default_delta(population: int) -> float:
    """δ = min(1e-5, 1 / (N·ln N)).

    δ must be ≪ 1/N: the mechanism "publish each device's data with probability δ" is
    (0, δ)-DP and leaks N·δ devices in expectation. At δ = 1/(N·ln N) that is 1/ln N
    devices, which is not small for a fleet of a few hundred (0.17 at N = 300); the
    1e-5 cap keeps it below N·1e-5 (0.003 at N = 300).
    """
    if population < 2:
        raise PrivacyConfigError(f"population must be >= 2, got {population}")
    return min(1e-5, 1.0 / (population * math.log(population)))


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise PrivacyConfigError(f"delta must be in (0, 1), got {delta}")


def _mechanism(events: Sequence[RoundEvent]) -> str:
    kinds = {e.mechanism for e in events}
    if len(kinds) != 1:
        raise PrivacyConfigError(f"one run mixes DP mechanisms {sorted(kinds)}; their "
                                 "neighbouring relations differ, no single epsilon")
    return kinds.pop()


def _tree_rho(events: Sequence[RoundEvent]) -> float:
    """ρ-zCDP of the recorded trees: ``Σ_j S_j / (2 z_j²)``."""
    trees: dict[int, list[RoundEvent]] = {}
    for e in events:
        trees.setdefault(e.tree, []).append(e)
    rho = 0.0
    for index, rounds in sorted(trees.items()):
        shapes = {(e.noise_multiplier, e.clip, e.min_separation, e.max_participations)
                  for e in rounds}
        if len(shapes) != 1:
            raise PrivacyConfigError(f"tree {index} changes its noise, clip or "
                                     "participation bound mid-tree")
        z, _, sep, most = shapes.pop()
        if z == 0:
            return math.inf
        rho += worst_case_sensitivity_squared(len(rounds), sep, most) / (2 * z * z)
    return rho


def _composition(events: Sequence[RoundEvent]) -> tuple[
        Callable[[], dp_accounting.PrivacyAccountant], dp_accounting.DpEvent, str, str]:
    """(fresh accountant, one composed event, accountant name, neighbouring relation)."""
    kind = _mechanism(events)
    import dp_accounting
    from dp_accounting import pld, rdp

    rel = dp_accounting.NeighboringRelation
    if kind == TREE:
        raise ValueError("tree events are accounted in zCDP, not composed")
    groups: Counter[tuple[Any, ...]] = Counter()
    for e in events:
        if kind == FIXED:
            groups[(e.noise_multiplier, e.population, e.clients_per_round)] += 1
        else:
            groups[(e.noise_multiplier, e.sampling_rate)] += 1
    parts: list[dp_accounting.DpEvent] = []
    for key, count in sorted(groups.items()):
        z = key[0]
        if z == 0:
            parts.append(dp_accounting.NonPrivateDpEvent())
            continue
        if kind == FIXED:
            one: dp_accounting.DpEvent = dp_accounting.SampledWithoutReplacementDpEvent(
                key[1], key[2], dp_accounting.GaussianDpEvent(z / 2))
        else:
            one = dp_accounting.PoissonSampledDpEvent(key[1], dp_accounting.GaussianDpEvent(z))
        parts.append(dp_accounting.SelfComposedDpEvent(one, count))
    event = dp_accounting.ComposedDpEvent(parts)
    if kind == FIXED:
        return (lambda: rdp.RdpAccountant(neighboring_relation=rel.REPLACE_ONE), event,
                "rdp", "replace_one")
    return pld.PLDAccountant, event, "pld", "add_or_remove_one"


def _log_phi_upper(x: float) -> float:
    """log P(N(0,1) > x), accurate far into the tail (asymptotic series past x = 20)."""
    if x < 20:
        return math.log(0.5 * math.erfc(x / math.sqrt(2)))
    return (-x * x / 2 - math.log(x * math.sqrt(2 * math.pi))
            + math.log1p(-1 / x**2 + 3 / x**4))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact ε at δ of one Gaussian mechanism with sensitivity / std = ``mu``.

    Balle & Wang 2018 (https://arxiv.org/abs/1805.06530), Thm. 8:
    ``δ(ε) = Φ(μ/2 − ε/μ) − e^ε·Φ(−μ/2 − ε/μ)``, decreasing in ε; solved by bisection.
    """
    if mu <= 0:
        return 0.0

    def delta_at(eps: float) -> float:
        a = math.exp(_log_phi_upper(eps / mu - mu / 2))
        b = math.exp(eps + _log_phi_upper(eps / mu + mu / 2))
        return a - b

    if delta_at(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_at(hi) > delta:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_at(mid) > delta else (lo, mid)
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return hi


def _eps(make: Callable[[], dp_accounting.PrivacyAccountant], event: dp_accounting.DpEvent,
         delta: float) -> float:
    import dp_accounting

    if isinstance(event, dp_accounting.NonPrivateDpEvent) or (
            isinstance(event, dp_accounting.ComposedDpEvent)
            and any(isinstance(e, dp_accounting.NonPrivateDpEvent) for e in event.events)):
        return math.inf
    return float(make().compose(event).get_epsilon(delta))


def epsilon(events: Iterable[RoundEvent], delta: float) -> PrivacySpent:
    """The run's (ε, δ) guarantee from its recorded rounds (z = 0 anywhere: ε = inf)."""
    events = list(events)
    _check_delta(delta)
    if not events:
        return PrivacySpent(0.0, delta, "none", "none", "none", 0)
    if _mechanism(events) == TREE:
        rho = _tree_rho(events)
        eps = math.inf if math.isinf(rho) else gaussian_epsilon(math.sqrt(2 * rho), delta)
        return PrivacySpent(eps, delta, TREE, TREE_ACCOUNTANT, "replace_special",
                            len(events), rho)
    make, event, accountant, neighboring = _composition(events)
    tau = discrete_tau(events)
    if any(e.discrete_tau is not None for e in events):
        accountant += DISCRETE_TAU
    return PrivacySpent(_eps(make, event, delta) + tau, delta, events[0].mechanism,
                        accountant, neighboring, len(events))


DISCRETE_TAU = " + discrete tau (Kairouz et al. 2021, Prop. 14)"


def discrete_tau(events: Iterable[RoundEvent]) -> float:
    """The distributed rounds' τ, summed: what their discrete noise adds to ε.

    Kairouz, Liu & Steinke 2021, Prop. 14 (first term): the sum of the phones' discrete
    Gaussians is, at every RDP order α, at most the Gaussian mechanism's RDP plus τ. RDP
    composes by adding curves and the conversion to ε has slope 1 in the curve, so for
    unsampled rounds ε grows by exactly Σ τ. Added after the fixed-cohort accountant's
    amplification by sampling, it assumes the discrete mechanism amplifies like the
    Gaussian up to τ: not proven here. τ is ~1e-9 a round at the lattice stds a DP
    round uses (fedkb.secagg.distributed_dp), far below ε's printed digits.
    """
    return sum(e.discrete_tau or 0.0 for e in events)


def as_if_noise_cohort(event: RoundEvent) -> RoundEvent:
    """The event a deployment with the pretended cohort K would have recorded.

    A ``noise_cohort`` run adds std ``z_h·C·m/K`` to a sum over ``m`` devices, so the
    mean's noise is what ``K`` devices with multiplier ``z_h`` would get; its actual
    multiplier is ``z = z_h·m/K``. The hypothetical deployment keeps the participation
    rate: population ``N·K/m`` (fixed), the same ``q`` (Poisson) or separation (tree).
    """
    if event.noise_cohort is None or event.clients_per_round is None:
        raise PrivacyConfigError("this event has no noise_cohort")
    k, m = event.noise_cohort, event.clients_per_round
    population = None if event.population is None else round(event.population * k / m)
    return RoundEvent(**{**asdict(event), "noise_multiplier": event.noise_multiplier * k / m,
                         "clients_per_round": k, "population": population,
                         "noise_cohort": None})


def hypothetical_epsilon(events: Iterable[RoundEvent], delta: float) -> PrivacySpent:
    """ε of the pretended deployment of a ``noise_cohort`` run, labelled as such."""
    events = list(events)
    pretend = [as_if_noise_cohort(e) for e in events]
    spent = epsilon(pretend, delta)
    first = pretend[0] if pretend else None
    label = {"label": HYPOTHETICAL,
             "noise_cohort": events[0].noise_cohort if events else None,
             "population": first.population if first else None,
             "noise_multiplier": first.noise_multiplier if first else None}
    return PrivacySpent(**{**asdict(spent), "hypothetical_population": label})


def noise_for_target(target_epsilon: float, delta: float,
                     future: Callable[[float], Sequence[RoundEvent]],
                     spent: Sequence[RoundEvent] = (), hypothetical: bool = False,
                     tol: float = 1e-4) -> float:
    """The smallest z with ε(spent + future(z)) ≤ target_epsilon, to within ``tol``.

    ``future(z)`` builds the rounds still to run at multiplier z. With ``hypothetical``
    the budget is the pretended deployment's (:func:`hypothetical_epsilon`), never the
    run's. The bracket is found by doubling and halving, then
    ``dp_accounting.calibrate_dp_mechanism`` (Brent's method) narrows it and guarantees
    the returned z does not exceed the budget.
    """
    _check_delta(delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyConfigError(f"target epsilon must be > 0, got {target_epsilon}")
    view: Callable[[RoundEvent], RoundEvent] = (
        as_if_noise_cohort if hypothetical else (lambda e: e))
    past = [view(e) for e in spent]
    if past:
        already = epsilon(past, delta).epsilon
        if already >= target_epsilon:
            raise PrivacyConfigError(f"target epsilon {target_epsilon} is already spent "
                                     f"(epsilon so far {already:.4g})")

    def rounds(z: float) -> list[RoundEvent]:
        return [*past, *(view(e) for e in future(z))]

    def gap(z: float) -> float:
        return epsilon(rounds(z), delta).epsilon - target_epsilon

    if future(1.0) and future(1.0)[0].mechanism == TREE:
        return _tree_noise_for_target(target_epsilon, delta, rounds, tol)
    lo, hi = 0.5, 1.0
    while gap(hi) > 0:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise PrivacyConfigError(f"no noise multiplier reaches epsilon {target_epsilon}")
    while gap(lo) <= 0:
        if lo < 1e-3:
            return lo  # even this little noise meets the budget
        lo, hi = lo / 2, lo
    import dp_accounting

    make = _composition(rounds(hi))[0]
    return float(dp_accounting.calibrate_dp_mechanism(
        make, lambda z: _composition(rounds(z))[1], target_epsilon, delta,
        dp_accounting.ExplicitBracketInterval(lo, hi), tol=tol))


def _tree_noise_for_target(target_epsilon: float, delta: float,
                           rounds: Callable[[float], list[RoundEvent]], tol: float) -> float:
    """Trees: ρ(z) = ρ_spent + S_future / (2z²); find μ* with ε(μ*) = target, then
    z = √(S_future / (μ*² − 2ρ_spent)). Only μ* needs a search."""
    rho_1 = _tree_rho(rounds(1.0))
    rho_2 = _tree_rho(rounds(2.0))
    s_future = (rho_1 - rho_2) * 2 / (1 - 1 / 4)  # ρ(z) = ρ_spent + S/(2z²)
    rho_spent = rho_1 - s_future / 2
    lo, hi = 0.0, 1.0
    while gaussian_epsilon(hi, delta) < target_epsilon:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-10 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_epsilon(mid, delta) < target_epsilon else (lo, mid)
    room = lo * lo - 2 * rho_spent
    if room <= 0:
        raise PrivacyConfigError(f"target epsilon {target_epsilon} is already spent")
    return math.sqrt(s_future / room) + tol / 2
