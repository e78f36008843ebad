"""The binary-tree noise of DP-FTRL: noise for every prefix sum of the rounds' updates.

DP-FTRL (Kairouz et al. 2021, "Practical and Private (Deep) Learning without Sampling
or Shuffling", https://arxiv.org/abs/2103.00039) never noises one round alone: it
releases the prefix sums ``Σ_{s≤t} x_s`` through the tree mechanism of Dwork et al.
2010 and Chan, Shi & Song 2011. Every node of a binary tree over the rounds holds an
independent N(0, σ²) vector; the prefix sum of the first ``t`` rounds takes the nodes of
``t``'s binary decomposition, so its noise has variance ``popcount(t)·σ²`` (at most
``⌊log2 t⌋ + 1`` nodes) instead of ``t·σ²``.

:class:`TreeNoise` keeps only the left children still needed (one vector per level,
``O(log T)`` memory), creates one node per round (the node for round ``t`` sits at the
level of ``t``'s trailing zeros, the order TF Privacy's ``tree_aggregation.TreeAggregator``
draws them in), and restarts a fresh tree every ``restart_every`` rounds (the paper's
"tree restart"; the caller then restarts its prefix sum at the current model).
The accounting for it is in :mod:`.accounting` (``tree`` events) and
:mod:`.tree_sensitivity`.

The buffer is secret: whoever reads it can subtract the noise. It is not persisted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedkb.server.privacy.errors import PrivacyConfigError
from fedkb.server.privacy.noise import NoiseSource, NormalSource


def nodes_in_prefix(t: int) -> int:
    """Tree nodes summed into the noise of the prefix of ``t`` rounds: popcount(t)."""
    if t < 1:
        raise ValueError(f"a prefix has at least one round, got {t}")
    return t.bit_count()


class TreeNoise:
    """Noise for the prefix sums of a stream of arrays shaped ``shapes``.

    Args:
        shapes: the shapes of one update's arrays.
        std: per-node noise std ``σ = z·C`` (``z`` the noise multiplier, ``C`` the clip).
        restart_every: rounds per tree; ``None`` keeps one tree for the whole run.
        source: where the Gaussian draws come from (default: a fresh
            cryptographically seeded :class:`~.noise.NoiseSource`).
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], std: float,
                 restart_every: int | None = None,
                 source: NormalSource | None = None) -> None:
        if not (np.isfinite(std) and std >= 0):
            raise PrivacyConfigError(f"noise std must be >= 0, got {std}")
        if restart_every is not None and restart_every < 1:
            raise PrivacyConfigError(f"restart_every must be >= 1, got {restart_every}")
        self._shapes = [tuple(s) for s in shapes]
        self._std = float(std)
        self._restart_every = restart_every
        self._source = source if source is not None else NoiseSource()
        self._levels: dict[int, list[np.ndarray]] = {}
        self._step = 0  # rounds in the current tree
        self._tree = 0

    @property
    def step(self) -> int:
        """Rounds taken so far in the current tree."""
        return self._step

    @property
    def tree(self) -> int:
        """Index of the current tree (restarts so far)."""
        return self._tree

    def next(self) -> tuple[list[np.ndarray], dict[str, Any]]:
        """The noise for the prefix sum through the next round, and its measurements.

        Adds this round's node, drops the children it covers, and returns the sum of the
        remaining buffer: ``popcount(t)`` nodes for the ``t``-th round of the tree.
        The per-round (residual) noise DP-FTRL adds to round ``t`` alone is this minus
        the previous call's value.
        """
        if self._restart_every is not None and self._step == self._restart_every:
            self._levels.clear()
            self._step = 0
            self._tree += 1
        self._step += 1
        t = self._step
        level = (t & -t).bit_length() - 1  # trailing zeros of t
        for lower in [k for k in self._levels if k < level]:
            del self._levels[lower]
        self._levels[level] = [self._source.normal(self._std, s) for s in self._shapes]
        total = [np.zeros(s) for s in self._shapes]
        for node in self._levels.values():
            for acc, part in zip(total, node, strict=True):
                acc += part
        nodes = len(self._levels)
        assert nodes == nodes_in_prefix(t)
        return total, {"tree": self._tree, "tree_step": t, "nodes": nodes,
                       "prefix_noise_std": self._std * nodes ** 0.5}

    def __repr__(self) -> str:
        return (f"TreeNoise(std={self._std}, restart_every={self._restart_every}, "
                f"tree={self._tree}, step={self._step})")

    def __reduce__(self) -> Any:
        raise TypeError("a TreeNoise is not serialisable: its buffer reveals the noise")
