"""The model's weights as plain NumPy: their order, names, shapes and initial values.

The order defined here is *the* order everywhere: the ``set_weights`` inputs and
``get_weights`` outputs of the LiteRT artifact, ``weights.safetensors``, server
checkpoints and device updates. Each weight is a :class:`fedkb.weights.WeightSpec` (the
contract's one spec). This module imports NumPy and the contract only (no TensorFlow).

Initial values are drawn with NumPy from a seed, so they are the same on every machine
and do not depend on TensorFlow's initializers: tied embedding U(-0.1, 0.1), input
kernels Glorot-uniform, recurrent kernels orthogonal per gate, zero biases except a
forget-gate bias of 1 (plain LSTM) or an input-gate bias of -1 (CIFG, so f = 1 - i
starts near 0.73 as well).
"""

from __future__ import annotations

import numpy as np

from fedkb.model.config import ModelConfig
from fedkb.weights import WeightSpec


def num_gates(config: ModelConfig) -> int:
    """4 for a plain LSTM (i, f, c, o); 3 for CIFG (i, c, o; f = 1 - i)."""
    return 3 if config.cell == "cifg" else 4


def weight_specs(config: ModelConfig) -> list[WeightSpec]:
    """The model's weights in their canonical order."""
    V, D, H, G = config.vocab_size, config.embed_dim, config.units, num_gates(config)
    out = D if config.recurrent_projection else H  # what the cell emits and feeds back
    specs = [
        WeightSpec("embedding", (V, D)),
        WeightSpec("rnn_kernel", (D, G * H)),
        WeightSpec("rnn_recurrent_kernel", (out, G * H)),
        WeightSpec("rnn_bias", (G * H,)),
    ]
    if config.recurrent_projection:
        specs.append(WeightSpec("rnn_projection", (H, D)))
    else:
        specs += [WeightSpec("proj_kernel", (H, D)), WeightSpec("proj_bias", (D,))]
    specs.append(WeightSpec("output_bias", (V,)))
    return specs


def num_params(config: ModelConfig) -> int:
    return sum(s.size for s in weight_specs(config))


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def _orthogonal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


def initial_weights(config: ModelConfig, seed: int | None = None) -> list[np.ndarray]:
    """Deterministic initial weights (float32), in :func:`weight_specs` order."""
    rng = np.random.default_rng(config.seed if seed is None else seed)
    H, G = config.units, num_gates(config)
    values: dict[str, np.ndarray] = {}
    for spec in weight_specs(config):
        if spec.name == "embedding":
            w = rng.uniform(-0.1, 0.1, size=spec.shape)
        elif spec.name == "rnn_kernel":
            w = np.concatenate([_glorot(rng, spec.shape[0], H) for _ in range(G)], axis=1)
        elif spec.name == "rnn_recurrent_kernel":
            w = np.concatenate([_orthogonal(rng, spec.shape[0], H) for _ in range(G)], axis=1)
        elif spec.name == "rnn_bias":
            w = np.zeros(spec.shape)
            if config.cell == "cifg":
                w[:H] = -1.0  # input gate; forget = 1 - input
            else:
                w[H : 2 * H] = 1.0  # forget gate
        elif spec.name in ("rnn_projection", "proj_kernel"):
            w = _glorot(rng, *spec.shape)
        else:
            w = np.zeros(spec.shape)
        values[spec.name] = w.astype(np.float32)
    return [values[s.name] for s in weight_specs(config)]
