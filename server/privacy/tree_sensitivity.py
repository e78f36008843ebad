"""The worst-case squared L2 sensitivity of one binary tree of DP-FTRL, given how often
and how closely together one device may take part.

DP-FTRL (Kairouz et al. 2021, "Practical and Private (Deep) Learning without Sampling
or Shuffling", https://arxiv.org/abs/2103.00039) releases every node of a binary tree
over the rounds' clipped sums, each node with its own Gaussian noise of std ``z·C``.
One device's contribution (norm at most ``C``) to round ``t`` enters every node on the
path from leaf ``t`` to the root. If it takes part ``k`` times, a node that covers ``c``
of those rounds moves by up to ``c·C``; the whole release is one Gaussian mechanism on
the vector of nodes with squared sensitivity ``C²·Σ_nodes c²``. Its zCDP is therefore

    ρ = Σ_nodes c² / (2 z²)          (Bun & Steinke 2016, Prop. 1.6)

and this module computes the worst case of ``Σ_nodes c²`` over all participation
patterns with at most ``max_participations`` rounds, at least ``min_separation`` rounds
strictly between two of them (rounds ``x < y`` need ``y − x − 1 ≥ min_separation``).
This is the dynamic program of Appendix D.2 of the paper, ported from TF Privacy's
``tree_aggregation_accountant._tree_sensitivity_square_sum`` (Apache-2.0) so the server
needs neither TensorFlow nor TF Privacy; ``tests/test_privacy_accounting.py`` checks it
equals TF Privacy's on several settings.

With one participation per tree the sum is the tree depth ``⌊log2 T⌋ + 1``, the case
``dp_accounting.SingleEpochTreeAggregationDpEvent`` covers.

Cost: the program is roughly ``O(k² · s² · log T)`` for ``k`` participations and
separation ``s`` (seconds at T=500, tens of seconds at T=1000 with s=99). Restarting
the tree every ``s + 1`` rounds (one participation per tree) makes it trivial.
"""

from __future__ import annotations

import functools
import math


def _possible(participations: int, min_separation: int, start: int, end: int,
              steps: int) -> bool:
    """Can ``participations`` rounds, ``min_separation`` apart, fit in ``steps`` leaves
    when the first may come no earlier than leaf ``start`` and the last leaves room for
    ``end`` leaves after the tree?"""
    return start + (min_separation + 1) * participations <= steps + end


@functools.cache
def _worst_sum(participations: int, min_separation: int, start: int, end: int,
               size: int) -> float:
    """Worst-case ``Σ_nodes c²`` for exactly ``participations`` rounds in a (sub)tree
    of ``size`` leaves (−inf when they cannot fit)."""
    if not _possible(participations, min_separation, start, end, size):
        return -math.inf
    if participations == 0:
        return 0.0
    if participations == 1 and size == 1:
        return 1.0
    log2 = math.log2(size)
    top = math.floor(log2)
    total = 0.0
    if top == log2:  # a complete subtree: its root holds every participation
        total = float(participations ** 2)
        top -= 1
    best = -math.inf
    left_size = 2 ** top
    for right in range(participations + 1):  # participations in the right subtree
        for gap in range(min_separation + 1):  # where the right subtree may start
            left = _worst_sum(participations - right, min_separation, start, gap,
                              left_size)
            if math.isinf(left):
                continue
            best = max(best, left + _worst_sum(right, min_separation, gap, end,
                                               size - left_size))
    return total + best


def worst_case_sensitivity_squared(steps: int, min_separation: int,
                                   max_participations: int | None = None) -> float:
    """Worst-case ``Σ_nodes c²`` of one tree of ``steps`` rounds (in units of ``C²``).

    Args:
        steps: rounds (leaves) in the tree, ≥ 1.
        min_separation: rounds strictly between two participations of one device, ≥ 0.
        max_participations: most rounds one device takes part in within this tree;
            ``None`` means as many as the separation allows.

    Returns:
        The largest squared sensitivity any admissible participation pattern reaches.
    """
    if steps < 1:
        raise ValueError(f"a tree has at least one round, got {steps}")
    if min_separation < 0:
        raise ValueError(f"min_separation must be >= 0, got {min_separation}")
    most = -(-steps // (min_separation + 1))  # ceil: what the separation allows
    k = most if max_participations is None else min(max_participations, most)
    if k < 1:
        raise ValueError(f"max_participations must be >= 1, got {max_participations}")
    while not _possible(k, min_separation, 0, min_separation, steps):
        k -= 1
    return max(_worst_sum(n, min_separation, 0, min_separation, steps)
               for n in range(1, k + 1))


def tree_depth(steps: int) -> int:
    """Nodes on one leaf-to-root path of a tree over ``steps`` rounds: ``⌊log2 T⌋ + 1``."""
    if steps < 1:
        raise ValueError(f"a tree has at least one round, got {steps}")
    return steps.bit_length()
