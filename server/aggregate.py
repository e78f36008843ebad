"""Aggregation math: small pure NumPy functions and streaming accumulators that compose.

Modelled on TensorFlow Federated's aggregator factories (``tff.aggregators``): a mean is a
weighted sum divided by the total weight; clipping wraps a mean; each piece is tested on
its own. Updates are folded one at a time as they arrive, so the server holds one
model-sized accumulator per open round, never the list of participants' updates
(McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", for the weighted mean; Bonawitz et al. 2019 for streaming).

The precondition of every fold, an update that fits the model's weight specs, is checked
before: :func:`fedkb.weights.check_weights` (called by :mod:`fedkb.server.uploads`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedkb.weights import WeightSpec

Arrays = list[np.ndarray]


# --- pure functions --------------------------------------------------------------------


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of all arrays taken together."""
    return math.sqrt(sum(float(np.dot(a.ravel(), a.ravel())) for a in arrays))


def clip_by_global_norm(arrays: Sequence[np.ndarray], max_norm: float) -> tuple[Arrays, float]:
    """``arrays`` scaled down to norm ``max_norm`` if longer; also returns the original norm."""
    norm = global_norm(arrays)
    if norm <= max_norm or norm == 0.0:
        return list(arrays), norm
    scale = np.float32(max_norm / norm)
    return [a * scale for a in arrays], norm


def zeros_like_specs(specs: Sequence[WeightSpec], dtype: type = np.float64) -> Arrays:
    return [np.zeros(s.shape, dtype=dtype) for s in specs]


def fold(acc: Arrays, arrays: Sequence[np.ndarray], weight: float) -> None:
    """``acc += weight * arrays`` in place (the streaming weighted sum)."""
    w = np.float32(weight)
    for a, x in zip(acc, arrays, strict=True):
        a += x * w if w != 1 else x


def scale(arrays: Sequence[np.ndarray], factor: float, dtype: type = np.float32) -> Arrays:
    return [(a * factor).astype(dtype) for a in arrays]


def weighted_mean_of_scalars(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Σ wᵢ xᵢ / Σ wᵢ over (value, weight) pairs; None without weight."""
    total = sum(w for _, w in pairs)
    return None if total <= 0 else sum(x * w for x, w in pairs) / total


# --- streaming aggregators (compose like TFF factories) --------------------------------


class Aggregator(Protocol):
    """Accepts updates one at a time; ``result`` is the aggregate (None if nothing came)."""

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None: ...

    def result(self) -> Arrays | None: ...

    @property
    def count(self) -> int: ...

    @property
    def total_weight(self) -> float: ...


class WeightedMean:
    """Σ wᵢ Δᵢ / Σ wᵢ, folded as updates arrive: memory is one float64 model."""

    def __init__(self, specs: Sequence[WeightSpec]) -> None:
        self._specs = list(specs)
        self._sum: Arrays | None = None
        self._weight = 0.0
        self._count = 0

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        if weight < 0:
            raise ValueError("weights must be non-negative")
        if self._sum is None:
            self._sum = zeros_like_specs(self._specs)
        fold(self._sum, arrays, weight)
        self._weight += weight
        self._count += 1

    def result(self) -> Arrays | None:
        if self._sum is None or self._weight <= 0:
            return None
        return scale(self._sum, 1.0 / self._weight)

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return self._weight


class Clipped:
    """Clip each update to ``max_norm`` (global L2) before the inner aggregator sees it."""

    def __init__(self, inner: Aggregator, max_norm: float) -> None:
        self.inner = inner
        self.max_norm = max_norm
        self.clipped = 0

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        out, norm = clip_by_global_norm(arrays, self.max_norm)
        self.clipped += norm > self.max_norm
        self.inner.accumulate(out, weight)

    def result(self) -> Arrays | None:
        return self.inner.result()

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def total_weight(self) -> float:
        return self.inner.total_weight


def mean_factory(specs: Sequence[WeightSpec], clip_norm: float | None = None) -> Aggregator:
    """A weighted mean, wrapped in clipping when ``clip_norm`` is set."""
    agg: Aggregator = WeightedMean(specs)
    return Clipped(agg, clip_norm) if clip_norm is not None else agg


class ScalarMeans:
    """Weighted means of named scalars (losses, recalls) from each report."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}

    def accumulate(self, values: dict[str, float], weight: float) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v * weight
            self._weights[k] = self._weights.get(k, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {k: self._sums[k] / w for k, w in self._weights.items() if w > 0}
