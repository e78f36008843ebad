"""DP-FTRL: the server strategy ``dpftrl`` (Kairouz et al. 2021, "Practical and Private
(Deep) Learning without Sampling or Shuffling", https://arxiv.org/abs/2103.00039).

DP-FedAvg noises each round's mean on its own and needs a sampling assumption for its
accounting; real check-ins are not uniform samples (Gboard's reason to move to DP-FTRL,
Xu et al. 2023). DP-FTRL instead releases the *prefix sums* of the rounds' mean clipped
deltas, each with the binary-tree noise of :class:`~.tree.TreeNoise`, and the model is
a function of those sums alone: with ``Δ_s`` the mean clipped delta of round ``s``
(unweighted, over the fixed denominator ``m``: the round's
:class:`~.dp_mean.ClippedSum`, divided here),

    S_t = Σ_{s≤t} Δ_s + tree noise (std ``σ = z·C/m`` per node on the mean, ``z·C`` on
          the sum; ``popcount(t)`` nodes in the prefix of ``t`` rounds)
    v_t = μ·v_{t-1} + S_t                         (FTRL with momentum, the paper's
    θ_t = θ_0 + η·(μ·v_t + S_t) with Nesterov,     Algorithm 1 as TF Privacy's / the
    θ_t = θ_0 + η·v_t without                      federated research ``DPFTRLM``)

with ``θ_0`` the model the tree started from, ``η`` = ``strategy.server_lr`` (constant:
FTRL rescales the whole sum, so a schedule would not mean what it does for SGD) and
``μ`` = ``strategy.momentum`` (``strategy.nesterov``). With ``μ = 0`` and ``z = 0``
this is FedAvg's server SGD: ``θ_t = θ_{t-1} + η·Δ_t``. Every ``restart_every`` rounds
the tree restarts (the paper's tree restart): ``θ_0`` becomes the current model, the
prefix sum, the momentum and the tree start again from zero.

Checkpoints and restarts: the tree's buffer (and the un-noised prefix sum) are secret
and never persisted; :meth:`DPFTRL.state` holds only two public counters (trees started,
rounds in the current one). :meth:`DPFTRL.load_state` -- a server restarted from a
checkpoint, or the round machine rolling back a commit that failed -- restarts the tree
at the model the next round starts from, under a new tree index: honest (the noise
already released is never reused, the accounting sees one more tree, see
:mod:`.accounting`'s ``tree`` events) and simple (the cost is momentum lost once).

Accounting needs a minimum separation between a device's participations
(:attr:`FtrlConfig.min_separation`); the server enforces it with its rest
(``round.rejoin_after_rounds``, :func:`separation_round`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedkb.server.aggregate import AggregateResult, Aggregator, Arrays
from fedkb.server.config import (
    ClientConfig,
    ConfigError,
    PrivacyConfig,
    RoundConfig,
    StrategyConfig,
)
from fedkb.server.privacy.dp_mean import ClippedSum
from fedkb.server.privacy.errors import PrivacyConfigError
from fedkb.server.privacy.noise import NormalSource
from fedkb.server.privacy.tree import TreeNoise
from fedkb.server.strategy import STRATEGIES, FedAvg
from fedkb.weights import WeightSpec

if TYPE_CHECKING:  # dp_accounting costs seconds to import: only when asked for an event
    from fedkb.server.privacy.accounting import RoundEvent


@dataclass(frozen=True)
class FtrlConfig:
    """DP-FTRL's privacy settings.

    Attributes:
        noise_multiplier: ``z``; each tree node's std is ``z·C`` on the sum.
        clip: ``C``, the L2 bound of one device's delta.
        clients_per_round: ``m``, the fixed denominator of the mean: the round's
            ``report_goal`` (fewer reports are still divided by ``m``).
        restart_every: rounds per tree (None: one tree for the whole run).
        min_separation: rounds strictly between two rounds one device trains in (the
            accounting's assumption; the server's rest enforces it).
    """

    noise_multiplier: float
    clip: float
    clients_per_round: int
    restart_every: int | None = None
    min_separation: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise PrivacyConfigError(f"noise multiplier must be >= 0, got "
                                     f"{self.noise_multiplier}")
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise PrivacyConfigError(f"clip norm must be > 0, got {self.clip}")
        if self.clients_per_round < 1:
            raise PrivacyConfigError(f"clients per round must be >= 1, got "
                                     f"{self.clients_per_round}")
        if self.restart_every is not None and self.restart_every < 1:
            raise PrivacyConfigError(f"restart_every must be >= 1, got {self.restart_every}")
        if self.min_separation < 0:
            raise PrivacyConfigError(f"min separation must be >= 0, got {self.min_separation}")

    @property
    def node_std(self) -> float:
        """Per-node noise std on the mean: ``z·C/m``."""
        return self.noise_multiplier * self.clip / self.clients_per_round


def separation_round(rc: RoundConfig, min_separation: int) -> RoundConfig:
    """``rc`` with a rest long enough for ``min_separation``.

    The rest counts model versions (committed rounds, the tree's steps): a device whose
    report on version ``v`` was accepted (it trained in round ``v + 1``) gets no training
    task before version ``v + rejoin_after_rounds`` exists, so its next round is at
    least ``v + 1 + rejoin_after_rounds``: ``rejoin_after_rounds − 1`` rounds strictly
    between. Hence ``rejoin_after_rounds = min_separation + 1`` (raised, never lowered).
    """
    need = min_separation + 1
    return rc if rc.rejoin_after_rounds >= need else rc.replace(rejoin_after_rounds=need)


def enforced_separation(rc: RoundConfig) -> int:
    """The minimum separation the rest of ``rc`` guarantees (0 without a rest: a device
    is never twice in one round)."""
    return max(rc.rejoin_after_rounds - 1, 0)


def check_round(rc: RoundConfig, privacy: FtrlConfig) -> None:
    """Refuse a round protocol that breaks DP-FTRL's assumptions: a denominator that is
    not the report goal, or a rest shorter than the stated separation."""
    if rc.report_goal != privacy.clients_per_round:
        raise ConfigError(f"dpftrl divides by clients_per_round "
                          f"({privacy.clients_per_round}): it must equal round.report_goal "
                          f"({rc.report_goal})")
    if enforced_separation(rc) < privacy.min_separation:
        raise ConfigError(f"dpftrl assumes min separation {privacy.min_separation}; "
                          f"round.rejoin_after_rounds {rc.rejoin_after_rounds} enforces "
                          f"only {enforced_separation(rc)} "
                          f"(set it to {privacy.min_separation + 1})")


class DPFTRL(FedAvg):
    """DP-FTRL with momentum and tree restarts (see the module docstring).

    Args:
        cfg: ``server_lr``, ``momentum``, ``nesterov`` (``decay_rounds`` must be 0).
        client: the phones' plan.
        privacy: the noise, clip, denominator, restarts and separation; required.
        source: where the tree's Gaussian draws come from (default: a fresh
            cryptographically seeded one; tests pass a seeded generator).
    """

    name = "dpftrl"

    def __init__(self, cfg: StrategyConfig, client: ClientConfig | None = None,
                 privacy: FtrlConfig | None = None, source: NormalSource | None = None) -> None:
        super().__init__(cfg, client)
        if privacy is None:
            raise ConfigError("strategy dpftrl needs its privacy settings (noise multiplier, "
                              "clip, clients per round): build it with an FtrlConfig")
        if cfg.decay_rounds:
            raise ConfigError("strategy dpftrl takes a constant server_lr "
                              "(strategy.decay_rounds must be 0)")
        self.privacy = privacy
        self._source = source
        self._tree: TreeNoise | None = None
        self._trees_before = 0  # tree indices used before the current TreeNoise
        self._theta0: Arrays = []
        self._sum: Arrays = []
        self._v: Arrays = []
        self.last_round: dict[str, Any] = {}

    def aggregator(self, specs: Sequence[WeightSpec]) -> Aggregator:
        """The clipped unweighted sum (the server builds the same stage, with the round's
        DP event, through :class:`~.dp_rounds.PrivacyRounds`)."""
        return ClippedSum(specs, self.privacy.clip, self.privacy.clients_per_round)

    def aggregate(self, weights: Sequence[np.ndarray], result: AggregateResult,
                  version: int = 1) -> Arrays:
        """One FTRL step from the round's aggregate: a :class:`~.dp_mean.ClippedSum`
        result (its ``denominator`` measurement m: the value is the sum, divided here),
        or a mean already divided (no ``denominator``)."""
        if result.value is None:
            raise ValueError("no update to apply: the aggregate has no weight")
        m = result.measurements.get("denominator")
        delta = result.value if m is None else [np.asarray(d) / m for d in result.value]
        if self._tree is None:
            self._tree = TreeNoise([np.shape(d) for d in delta], self.privacy.node_std,
                                   self.privacy.restart_every, self._source)
        noise, measured = self._tree.next()
        if measured["tree_step"] == 1:  # a new tree: FTRL restarts at the current model
            self._theta0 = [np.asarray(w, np.float64).copy() for w in weights]
            self._sum = [np.zeros_like(t) for t in self._theta0]
            self._v = [np.zeros_like(t) for t in self._theta0]
        mu, lr = self.cfg.momentum, self.cfg.server_lr
        new: Arrays = []
        for i, w in enumerate(weights):
            self._sum[i] += delta[i]
            noisy = self._sum[i] + noise[i]
            self._v[i] = mu * self._v[i] + noisy
            step = mu * self._v[i] + noisy if self.cfg.nesterov else self._v[i]
            new.append((self._theta0[i] + lr * step).astype(np.asarray(w).dtype))
        self.last_round = {**measured, "tree": self._trees_before + measured["tree"]}
        return new

    def dp_event(self, clip: float, clients_per_round: int, population: int) -> RoundEvent:
        """The event of the next round to open (``PrivacyRounds``' budget check): its tree
        is predicted from the rounds aggregated so far. The event recorded for a round
        is :meth:`round_event`, made once the round has taken its place in a tree."""
        from fedkb.server.privacy.accounting import TREE, RoundEvent

        del population  # tree accounting assumes no sampling
        p = self.privacy
        return RoundEvent(TREE, noise_multiplier=p.noise_multiplier, clip=clip,
                          clients_per_round=clients_per_round, tree=self._next_tree(),
                          min_separation=p.min_separation)

    def _next_tree(self) -> int:
        if self._tree is None or self._tree.step == 0:
            return self._trees_before + (0 if self._tree is None else self._tree.tree)
        every = self.privacy.restart_every
        full = every is not None and self._tree.step >= every
        return self._trees_before + self._tree.tree + (1 if full else 0)

    def round_event(self) -> RoundEvent:
        """The DP event of the round :meth:`aggregate` last made (for the accounting)."""
        from fedkb.server.privacy.accounting import TREE, RoundEvent

        if not self.last_round:
            raise ValueError("no round aggregated yet")
        p = self.privacy
        return RoundEvent(TREE, noise_multiplier=p.noise_multiplier, clip=p.clip,
                          clients_per_round=p.clients_per_round, tree=self.last_round["tree"],
                          min_separation=p.min_separation)

    def state(self) -> Arrays:
        """Public counters only: ``[trees started, rounds in the current tree]``."""
        step = 0 if self._tree is None else self._tree.step
        used = self._trees_before + (0 if self._tree is None or step == 0
                                     else self._tree.tree + 1)
        return [np.array([used, step], np.int64)]

    def load_state(self, arrays: Sequence[np.ndarray]) -> None:
        """Continue after a checkpoint (or a rolled-back commit): the next round starts a
        new tree, with a new index, at the model it is given."""
        if not arrays:
            used = 0
        elif len(arrays) == 1 and np.shape(arrays[0]) == (2,) and int(arrays[0][0]) >= 0:
            used = int(arrays[0][0])
        else:
            raise ValueError("dpftrl state is one array [trees started, rounds in tree]")
        self._tree = None
        self._trees_before = used
        self._theta0, self._sum, self._v = [], [], []
        self.last_round = {}


STRATEGIES[DPFTRL.name] = DPFTRL


def ftrl_strategy(cfg: StrategyConfig, client: ClientConfig, privacy: PrivacyConfig,
                  rounds: RoundConfig) -> DPFTRL:
    """The server's DP-FTRL strategy for ``[privacy] mechanism = "ftrl"``: its noise and
    clip from the table, ``m`` the report goal, the separation its rest enforces
    (:func:`~fedkb.server.config.check_privacy` has refused what DP-FTRL does not do)."""
    ftrl = FtrlConfig(privacy.noise_multiplier, privacy.clip, rounds.report_goal,
                      privacy.restart_every, enforced_separation(rounds))
    check_round(rounds, ftrl)
    return DPFTRL(cfg, client, privacy=ftrl)
