"""Our server strategies as TFF optimizers, so `--engine tff` runs the fleet's recipe.

The fleet's server applies :mod:`fedkb.server.strategy` to the mean client delta Δ. TFF
hands its server optimizer the *negated* mean delta as a gradient, and its stock
optimizers differ from ours: ``build_sgdm`` has no Nesterov momentum (Gboard's, our
FedAvgM default) and ``build_adam`` bias-corrects its moments (Reddi et al. 2021's FedAdam,
ours, does not). So the TFF reference gets one small optimizer that performs exactly the
steps of ``server/strategy.py`` (same formulas, float32):

- fedavg:  x ← x + η Δ
- fedavgm: v ← μ v + Δ;  x ← x + η (μ v + Δ) with Nesterov, else x ← x + η v
- fedadam: m ← β₁ m + (1−β₁) Δ;  v ← β₂ v + (1−β₂) Δ²;  x ← x + η m / (√v + τ)

η per round comes from a list computed by the caller with
:func:`fedkb.server.strategy.scheduled_lr` (constant, or the cosine decay), indexed by the
optimizer's own step counter. Only the TFF child process imports this module.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

LR_KEY = "learning_rate"
SLOTS = {"fedavg": (), "fedavgm": ("v",), "fedadam": ("m", "v")}  # optimizer state per strategy


class ServerStrategyOptimizer(tff.learning.optimizers.Optimizer):
    """``server/strategy.py``'s update rules as a ``tff.learning.optimizers.Optimizer``."""

    def __init__(self, name: str, lrs: Sequence[float], momentum: float = 0.9,
                 nesterov: bool = True, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3) -> None:
        if name not in SLOTS:
            raise ValueError(f"unknown server strategy {name!r}")
        if not lrs:
            raise ValueError("need the server learning rate of at least one round")
        self._name = name
        self._lrs = [float(x) for x in lrs]
        self._mu, self._nesterov = float(momentum), bool(nesterov)
        self._b1, self._b2, self._tau = float(beta1), float(beta2), float(tau)

    def initialize(self, specs: Any) -> collections.OrderedDict:
        state: collections.OrderedDict = collections.OrderedDict(
            [("step", tf.constant(0, tf.int32)), (LR_KEY, tf.constant(self._lrs[0]))])
        for slot in SLOTS[self._name]:
            state[slot] = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs)
        return state

    def next(self, state: Any, weights: Any, gradients: Any) -> tuple[Any, Any]:
        step = state["step"]
        lr = tf.gather(tf.constant(self._lrs, tf.float32),
                       tf.minimum(step, len(self._lrs) - 1))
        flat_w = tf.nest.flatten(weights)
        deltas = [-g for g in tf.nest.flatten(gradients)]  # TFF's gradient is -Δ
        new_state = collections.OrderedDict([("step", step + 1), (LR_KEY, lr)])
        if self._name == "fedavg":
            steps = deltas
        elif self._name == "fedavgm":
            v = [self._mu * a + d for a, d in zip(tf.nest.flatten(state["v"]), deltas,
                                                  strict=True)]
            steps = [self._mu * a + d for a, d in zip(v, deltas, strict=True)] \
                if self._nesterov else v
            new_state["v"] = tf.nest.pack_sequence_as(state["v"], v)
        else:
            m = [self._b1 * a + (1 - self._b1) * d
                 for a, d in zip(tf.nest.flatten(state["m"]), deltas, strict=True)]
            v = [self._b2 * a + (1 - self._b2) * d * d
                 for a, d in zip(tf.nest.flatten(state["v"]), deltas, strict=True)]
            steps = [a / (tf.sqrt(b) + self._tau) for a, b in zip(m, v, strict=True)]
            new_state["m"] = tf.nest.pack_sequence_as(state["m"], m)
            new_state["v"] = tf.nest.pack_sequence_as(state["v"], v)
        new_w = [w + lr * s for w, s in zip(flat_w, steps, strict=True)]
        return new_state, tf.nest.pack_sequence_as(weights, new_w)

    def get_hparams(self, state: Any) -> collections.OrderedDict:
        return collections.OrderedDict([(LR_KEY, state[LR_KEY])])

    def set_hparams(self, state: Any, hparams: Any) -> Any:
        return collections.OrderedDict([*state.items(), *hparams.items()])


class ClippedClientSGD(tff.learning.optimizers.Optimizer):
    """The phones' local step with on-device gradient clipping, for TFF's clients.

    ``w ← w − (η · min(1, C / ‖g‖)) g`` with ‖g‖ the global L2 norm over all weights:
    the LiteRT ``train`` signature's step with ``grad_clip = C``
    (:func:`fedkb.model.objective.clip_scale`), in the same order of operations.
    """

    def __init__(self, learning_rate: float, grad_clip: float) -> None:
        if not grad_clip > 0:
            raise ValueError(f"grad_clip must be positive, got {grad_clip}")
        self._lr, self._clip = float(learning_rate), float(grad_clip)

    def initialize(self, specs: Any) -> collections.OrderedDict:
        return collections.OrderedDict([(LR_KEY, self._lr)])  # a Python float, as build_sgdm's

    def next(self, state: Any, weights: Any, gradients: Any) -> tuple[Any, Any]:
        from fedkb.model.objective import clip_scale, global_norm

        flat_g = [tf.convert_to_tensor(g) for g in tf.nest.flatten(gradients)]
        lr = tf.cast(state[LR_KEY], tf.float32)
        step = lr * clip_scale(global_norm(flat_g), tf.constant(self._clip, tf.float32))
        new_w = [w - step * g for w, g in zip(tf.nest.flatten(weights), flat_g, strict=True)]
        return state, tf.nest.pack_sequence_as(weights, new_w)

    def get_hparams(self, state: Any) -> collections.OrderedDict:
        return collections.OrderedDict([(LR_KEY, state[LR_KEY])])

    def set_hparams(self, state: Any, hparams: Any) -> Any:
        return collections.OrderedDict([*state.items(), *hparams.items()])
