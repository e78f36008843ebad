"""Strategies: how a round is configured and how its mean update becomes the next model.

The round machine (:mod:`fedkb.server.round_machine`) knows an algorithm only through the
abstract :class:`Strategy`, like Flower's ``Strategy`` (``configure_fit`` /
``aggregate_fit``):

- ``configure(kind, batch_size)`` -> the :class:`~fedkb.wire.Plan` sent to devices (from
  the strategy's :class:`~fedkb.server.config.ClientConfig`);
- ``aggregator(specs)`` -> a fresh streaming aggregator for one round's updates;
- ``aggregate(weights, result, version)`` -> the new global weights from the round's
  :class:`~fedkb.server.aggregate.AggregateResult` (its mean delta and measurements;
  ``version``: the model version they become, for a learning-rate schedule);
- ``state()`` / ``load_state()`` -> optimizer state, checkpointed with each model.

The server optimizers treat the weighted mean of the device deltas, Δ, as a
pseudo-gradient (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2):

- FedAvg (McMahan et al. 2017): x ← x + η Δ (η = 1: plain FedAvg).
- FedAvgM (Hsu et al. 2019, server momentum; Nesterov as used for Gboard by Hard et al.
  2018): v ← μ v + Δ; x ← x + η (μ v + Δ) with Nesterov, else x ← x + η v.
- FedAdam (Reddi et al. 2021): m ← β₁ m + (1−β₁) Δ; v ← β₂ v + (1−β₂) Δ²;
  x ← x + η m / (√v + τ)  (no bias correction, as in the paper).

With ``decay_rounds`` D > 0 the server learning rate follows a cosine from ``server_lr``
at version 1 down to a tenth of it at version D, and stays there: the last rounds of a run
take small steps, so the final model is not one noisy update away from a better one.

Optimizer state (momentum, moments) is saved with each checkpoint (``state`` /
``load_state``) so a restarted server continues the same trajectory.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import numpy as np

from fedkb.server.aggregate import AggregateResult, Aggregator, Arrays, mean_factory
from fedkb.server.config import ClientConfig, StrategyConfig
from fedkb.weights import WeightSpec
from fedkb.wire import Plan

# --- pure optimizer steps --------------------------------------------------------------


def sgd_step(x: Sequence[np.ndarray], delta: Sequence[np.ndarray], lr: float) -> Arrays:
    return [(w + lr * d).astype(w.dtype) for w, d in zip(x, delta, strict=True)]


def momentum_step(x: Sequence[np.ndarray], delta: Sequence[np.ndarray], v: Sequence[np.ndarray],
                  lr: float, mu: float, nesterov: bool) -> tuple[Arrays, Arrays]:
    """One server-momentum step; returns (new weights, new velocity)."""
    v_new = [mu * vi + d for vi, d in zip(v, delta, strict=True)]
    step = [mu * vi + d for vi, d in zip(v_new, delta, strict=True)] if nesterov else v_new
    return sgd_step(x, step, lr), [vi.astype(np.float32) for vi in v_new]


def adam_step(x: Sequence[np.ndarray], delta: Sequence[np.ndarray], m: Sequence[np.ndarray],
              v: Sequence[np.ndarray], lr: float, b1: float, b2: float, tau: float,
              ) -> tuple[Arrays, Arrays, Arrays]:
    """One FedAdam step; returns (new weights, new first moment, new second moment)."""
    m_new = [b1 * mi + (1 - b1) * d for mi, d in zip(m, delta, strict=True)]
    v_new = [b2 * vi + (1 - b2) * d * d for vi, d in zip(v, delta, strict=True)]
    step = [mi / (np.sqrt(vi) + tau) for mi, vi in zip(m_new, v_new, strict=True)]
    return (sgd_step(x, step, lr), [a.astype(np.float32) for a in m_new],
            [a.astype(np.float32) for a in v_new])


def scheduled_lr(base: float, decay_rounds: int, version: int) -> float:
    """``base``, or with ``decay_rounds`` a cosine from ``base`` (version 1) to ``base / 10``
    (version ``decay_rounds`` and after)."""
    if decay_rounds <= 0:
        return base
    done = min(max(version - 1, 0), max(decay_rounds - 1, 1)) / max(decay_rounds - 1, 1)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * done)))


# --- the interface ---------------------------------------------------------------------


class Strategy(abc.ABC):
    """What the round machine asks of an algorithm, and all it knows of it.

    Built from a :class:`StrategyConfig` (the server optimizer) and a :class:`ClientConfig`
    (what each task asks of a phone; an admin may replace it, :meth:`set_client`).
    A subclass that leaves any abstract method out cannot be instantiated.
    """

    name: str

    def __init__(self, cfg: StrategyConfig, client: ClientConfig | None = None) -> None:
        self.cfg = cfg
        self.client = client or ClientConfig()

    def set_client(self, client: ClientConfig) -> None:
        """Rounds configured from now on ask phones for ``client``."""
        self.client = client

    @abc.abstractmethod
    def configure(self, kind: str, batch_size: int) -> Plan:
        """The plan of a round of ``kind`` (each task gets it with its own batch seed)."""

    @abc.abstractmethod
    def aggregator(self, specs: Sequence[WeightSpec]) -> Aggregator:
        """A fresh streaming aggregator for one training round's updates."""

    @abc.abstractmethod
    def aggregate(self, weights: Sequence[np.ndarray], result: AggregateResult,
                  version: int = 1) -> Arrays:
        """The new global weights (model ``version``) from the round's aggregate."""

    @abc.abstractmethod
    def state(self) -> Arrays:
        """Optimizer state to checkpoint with the model."""

    @abc.abstractmethod
    def load_state(self, arrays: Sequence[np.ndarray]) -> None:
        """Continue from a checkpoint's optimizer state."""


class FedAvg(Strategy):
    """Server SGD on the mean delta: plain FedAvg with ``server_lr`` 1."""

    name = "fedavg"

    def configure(self, kind: str, batch_size: int) -> Plan:
        c = self.client
        return Plan(kind=kind, lr=c.lr, batch_size=batch_size,  # type: ignore[arg-type]
                    epochs=c.epochs, max_steps=c.max_steps, grad_clip=c.grad_clip)

    def aggregator(self, specs: Sequence[WeightSpec]) -> Aggregator:
        return mean_factory(specs, self.cfg.clip_norm, self.cfg.weighting == "uniform")

    def lr(self, version: int) -> float:
        """The server learning rate of the step that makes ``version``."""
        return scheduled_lr(self.cfg.server_lr, self.cfg.decay_rounds, version)

    def aggregate(self, weights: Sequence[np.ndarray], result: AggregateResult,
                  version: int = 1) -> Arrays:
        return sgd_step(weights, _mean_delta(result), self.lr(version))

    def state(self) -> Arrays:
        return []

    def load_state(self, arrays: Sequence[np.ndarray]) -> None:
        if arrays:
            raise ValueError("fedavg keeps no optimizer state")


def _mean_delta(result: AggregateResult) -> Arrays:
    if result.value is None:
        raise ValueError("no update to apply: the aggregate has no weight")
    return result.value


class FedAvgM(FedAvg):
    name = "fedavgm"

    def __init__(self, cfg: StrategyConfig, client: ClientConfig | None = None) -> None:
        super().__init__(cfg, client)
        self._v: Arrays = []

    def aggregate(self, weights: Sequence[np.ndarray], result: AggregateResult,
                  version: int = 1) -> Arrays:
        mean_delta = _mean_delta(result)
        v = self._v or [np.zeros_like(d, dtype=np.float32) for d in mean_delta]
        new, self._v = momentum_step(weights, mean_delta, v, self.lr(version),
                                     self.cfg.momentum, self.cfg.nesterov)
        return new

    def state(self) -> Arrays:
        return list(self._v)

    def load_state(self, arrays: Sequence[np.ndarray]) -> None:
        self._v = [np.asarray(a, np.float32) for a in arrays]


class FedAdam(FedAvg):
    name = "fedadam"

    def __init__(self, cfg: StrategyConfig, client: ClientConfig | None = None) -> None:
        super().__init__(cfg, client)
        self._m: Arrays = []
        self._v: Arrays = []

    def aggregate(self, weights: Sequence[np.ndarray], result: AggregateResult,
                  version: int = 1) -> Arrays:
        mean_delta = _mean_delta(result)
        zeros = [np.zeros_like(d, dtype=np.float32) for d in mean_delta]
        c = self.cfg
        new, self._m, self._v = adam_step(weights, mean_delta, self._m or zeros,
                                          self._v or zeros, self.lr(version), c.beta1, c.beta2,
                                          c.tau)
        return new

    def state(self) -> Arrays:
        return [*self._m, *self._v]

    def load_state(self, arrays: Sequence[np.ndarray]) -> None:
        if len(arrays) % 2:
            raise ValueError("fedadam state is two lists of equal length")
        half = len(arrays) // 2
        self._m = [np.asarray(a, np.float32) for a in arrays[:half]]
        self._v = [np.asarray(a, np.float32) for a in arrays[half:]]


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (FedAvg, FedAvgM, FedAdam)}
"""The one registry of strategy names (``StrategyConfig.name`` is checked against it)."""


def make_strategy(cfg: StrategyConfig, client: ClientConfig | None = None) -> Strategy:
    return STRATEGIES[cfg.name](cfg, client)

# DP-FTRL lives with the privacy code and adds itself to STRATEGIES on import (a plain
# `import` so that importing it first, which imports this module, is no cycle).
import fedkb.server.privacy.ftrl  # noqa: E402, F401
