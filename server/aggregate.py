"""Aggregation math: small pure NumPy functions and streaming accumulators that compose.

Modelled on TensorFlow Federated's aggregator factories (``tff.aggregators``): a mean is a
weighted sum divided by the total weight; clipping wraps a mean; each piece is tested on
its own and reports what it measured (:class:`AggregateResult`). Updates are folded one
at a time as they arrive, so the server holds one model-sized accumulator per open round,
never the list of participants' updates (McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", for the weighted mean; Bonawitz et
al. 2019 for streaming).

The precondition of every fold, an update that fits the model's weight specs, is checked
before: :func:`fedkb.weights.check_weights` (called by :mod:`fedkb.server.uploads`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedkb.weights import WeightSpec

Arrays = list[np.ndarray]


# --- pure functions --------------------------------------------------------------------


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of all arrays taken together."""
    return math.sqrt(sum(float(np.dot(a.ravel(), a.ravel())) for a in arrays))


_NORM_CHUNK = 1 << 16  # elements per float64 block in global_norm64's slow path
_SAFE_SQUARES = 1e30  # a float32 sum of squares under this has not overflowed anywhere


def global_norm64(arrays: Sequence[np.ndarray]) -> float:
    """The true global L2 norm even where :func:`global_norm` overflows: finite float32
    values from about 1e19 up square to inf in float32 (a bound check must see them).

    The float32 sum of squares is tried first; only when it is not comfortably finite
    (a hostile update) is it redone in float64, block by block. Casting a whole
    5 MB update to float64 instead costs a fresh 11 MB buffer per upload, which the
    kernel zeroes page by page: that was most of the system time the norm bound added
    to a fleet run (issue 19's hardening; perf showed ``clear_page_erms`` under
    ``_aligned_contig_cast_float_to_double``).
    """
    squares = sum(float(np.dot(a.ravel(), a.ravel())) for a in arrays)
    if squares < _SAFE_SQUARES:
        return math.sqrt(squares)
    total = 0.0
    for a in arrays:
        flat = a.ravel()
        for i in range(0, flat.size, _NORM_CHUNK):
            block = flat[i:i + _NORM_CHUNK].astype(np.float64)
            total += float(np.dot(block, block))
    return math.sqrt(total)


def clip_by_global_norm(arrays: Sequence[np.ndarray], max_norm: float) -> tuple[Arrays, float]:
    """``arrays`` scaled down to norm ``max_norm`` if longer; also returns the original norm."""
    norm = global_norm(arrays)
    if norm <= max_norm or norm == 0.0:
        return list(arrays), norm
    scale = np.float32(max_norm / norm)
    return [a * scale for a in arrays], norm


UPDATE_NORM_FACTOR = 10.0  # the derived update-norm bound, in initial-model norms
MIN_UPDATE_NORM = 1.0  # ... and never under this (a model initialized near zero)


def derived_update_norm(initial_weights: Sequence[np.ndarray]) -> float:
    """The default bound on one device update's global L2 norm (``round.max_update_norm``
    None): :data:`UPDATE_NORM_FACTOR` times the global norm of the model's initial
    weights, at least :data:`MIN_UPDATE_NORM`.

    Why the initial weights and not the plan: the plan's ``lr x max_steps x`` a per-step
    gradient bound is no bound at all for the plans in use (TFF-style plans have
    ``max_steps`` 1,000,000 and lr 1.0), while the initial norm is the scale of the model
    itself (16 for the ``tiny`` preset, 72 for ``small`` at its full vocabulary): an
    update ten times longer than the whole initial model is no few epochs of SGD on one
    phone's data. Honest updates are far below it: in the bench's 20x20 fleet runs (client
    lr 1.0, no step cap) their norms are p50 1.2, max 7.4, against a bound in the
    hundreds. The bound is what makes one update's influence finite;
    ``strategy.clip_norm`` (the demo's 4) is the tighter robustness and privacy clip,
    applied after it.
    """
    return max(UPDATE_NORM_FACTOR * global_norm64(initial_weights), MIN_UPDATE_NORM)


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

Measurements = dict[str, float | int]


@dataclass(frozen=True)
class AggregateResult:
    """What an aggregator produced, and what it measured doing so.

    Like the output of TFF's ``MeasuredProcess.next`` (value and measurements): every stage
    reports its own measurements (the mean: ``count``, ``total_weight``; clipping:
    ``clipped``, ``update_norm_mean``, ``update_norm_max``) and a wrapper merges them with
    those of the stage it wraps. ``value`` is None when nothing with weight came.
    """

    value: Arrays | None
    measurements: Measurements = field(default_factory=dict)


class Aggregator(Protocol):
    """Accepts updates one at a time; ``result`` is the aggregate and its measurements."""

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None: ...

    def result(self) -> AggregateResult: ...

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

    def result(self) -> AggregateResult:
        measured: Measurements = {"count": self._count, "total_weight": self._weight}
        if self._sum is None or self._weight <= 0:
            return AggregateResult(None, measured)
        return AggregateResult(scale(self._sum, 1.0 / self._weight), measured)

    @property
    def count(self) -> int:
        return self._count

    @property
    def total_weight(self) -> float:
        return self._weight


class _Wrapper(abc.ABC):
    """A stage in front of an inner aggregator: it passes on (a transform of) each update
    and adds its own measurements to the inner result's."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner

    @abc.abstractmethod
    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None: ...

    @abc.abstractmethod
    def measurements(self) -> Measurements:
        """This stage's own measurements so far."""

    def result(self) -> AggregateResult:
        inner = self.inner.result()
        return AggregateResult(inner.value, {**inner.measurements, **self.measurements()})

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def total_weight(self) -> float:
        return self.inner.total_weight


class _Norms:
    """Running mean and max of the updates' global L2 norms."""

    def __init__(self) -> None:
        self.n, self.total, self.max = 0, 0.0, 0.0

    def add(self, norm: float) -> None:
        self.n, self.total, self.max = self.n + 1, self.total + norm, max(self.max, norm)

    def measurements(self) -> Measurements:
        return {"update_norm_mean": self.total / self.n if self.n else 0.0,
                "update_norm_max": self.max}


class UpdateNorms(_Wrapper):
    """Measure each update's global L2 norm (before any clipping); pass it on unchanged.

    The norms are what a clip norm is chosen from (Andrew et al. 2021, "Differentially
    Private Learning with Adaptive Clipping", clip at a quantile of them).
    """

    def __init__(self, inner: Aggregator) -> None:
        super().__init__(inner)
        self._norms = _Norms()

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        self._norms.add(global_norm(arrays))
        self.inner.accumulate(arrays, weight)

    def measurements(self) -> Measurements:
        return self._norms.measurements()


class Clipped(_Wrapper):
    """Clip each update to ``max_norm`` (global L2) before the inner aggregator sees it.

    Measures how many updates it clipped and the norms they had before clipping.
    """

    def __init__(self, inner: Aggregator, max_norm: float) -> None:
        super().__init__(inner)
        self.max_norm = max_norm
        self._clipped = 0
        self._norms = _Norms()

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        out, norm = clip_by_global_norm(arrays, self.max_norm)
        self._clipped += norm > self.max_norm
        self._norms.add(norm)
        self.inner.accumulate(out, weight)

    def measurements(self) -> Measurements:
        return {"clipped": self._clipped, **self._norms.measurements()}


class Uniform(_Wrapper):
    """Every update weight 1 (``strategy.weighting = "uniform"``): the mean a secure or DP
    round computes, where the server cannot weight what it never sees, for plain rounds
    to be compared with them."""

    def accumulate(self, arrays: Sequence[np.ndarray], weight: float) -> None:
        self.inner.accumulate(arrays, 1.0)

    def measurements(self) -> Measurements:
        return {}


def mean_factory(specs: Sequence[WeightSpec], clip_norm: float | None = None,
                 uniform: bool = False) -> Aggregator:
    """A weighted mean (by examples; ``uniform``: every update weight 1), wrapped in
    clipping when ``clip_norm`` is set (else in a stage that only measures the norms, so
    every round reports them)."""
    agg: Aggregator = Uniform(WeightedMean(specs)) if uniform else WeightedMean(specs)
    return Clipped(agg, clip_norm) if clip_norm is not None else UpdateNorms(agg)


class ScalarMeans:
    """Weighted means of named scalars (losses, recalls) from each report, and the
    medians of those named in ``medians`` (a round has tens of reports: they are kept).

    A mean is what the round's figure is; a median is what the typical device saw. One
    device whose local training blew up moves the mean training loss by orders of
    magnitude and leaves the median where it was, so "the model diverged" is read off
    the median (:func:`fedkb.simulation.fleet_run.diverged`).
    """

    def __init__(self, medians: tuple[str, ...] = ()) -> None:
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self._kept: dict[str, list[float]] = {k: [] for k in medians}

    def accumulate(self, values: dict[str, float], weight: float) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + v * weight
            self._weights[k] = self._weights.get(k, 0.0) + weight
            if k in self._kept:
                self._kept[k].append(v)

    def result(self) -> dict[str, float]:
        """The weighted means, and ``<name>_median`` for each kept name that came."""
        out = {k: self._sums[k] / w for k, w in self._weights.items() if w > 0}
        out.update({f"{k}_median": float(np.median(v)) for k, v in self._kept.items() if v})
        return out
