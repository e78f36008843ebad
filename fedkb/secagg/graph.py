"""SecAgg+ neighbour graphs (Bell et al. 2020, "Secure single-server aggregation with
(poly)logarithmic overhead", sec. 3): each phone masks with, and shares its secrets
among, only its k neighbours, so its cost grows with k ~ O(log n), not n.

The graph is the Harary graph H(k, n) on a random relabelling of the phones: the phones
are put on a ring in a pseudo-random order and each is joined to the k/2 nearest on
either side. It is k-regular and k-connected (removing fewer than k phones never cuts
it), and the relabelling makes a phone's neighbours unpredictable before the round seed
is drawn. The order comes from a public round seed through SHA-256 in counter mode, so
the server and every phone compute the same graph without sending it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def default_degree(n: int) -> int:
    """An even k ~ 3 log2 n (Bell et al. take k = O(log n)), at most n - 1."""
    if n < 2:
        raise ValueError("a graph needs at least two phones")
    k = math.ceil(3 * math.log2(n))
    k += k % 2
    return min(k, n - 1)


def _binom_cdf_below(m: int, p_alive: float, need: int) -> float:
    """P[Binomial(m, p_alive) < need]."""
    return sum(math.comb(m, j) * p_alive**j * (1 - p_alive) ** (m - j) for j in range(need))


def degree_for(n: int, dropout: float, threshold_fraction: float,
               failure: float = 1e-3) -> int:
    """The smallest even degree whose neighbourhoods keep a share threshold's worth of
    holders when a ``dropout`` fraction of phones vanish at random.

    A SecAgg+ round aborts if any phone's ``degree + 1`` holders fall below
    ``ceil(threshold_fraction * (degree + 1))`` (:attr:`.params.RoundParams.share_threshold`).
    The union bound over the n neighbourhoods, ``n * P[Bin(k+1, 1-dropout) < need]``, is
    kept below ``failure``. The default ``~3 log2 n`` is enough for 10% dropout at a
    half threshold but not for 30% at n = 500 (measured in bench/README.md).
    Returns ``n - 1`` (full SecAgg) when no smaller degree is enough.
    """
    if not 0 <= dropout < 1 or not 0 < threshold_fraction <= 1:
        raise ValueError("dropout must be in [0, 1) and the threshold fraction in (0, 1]")
    for k in range(2, n - 1, 2):
        need = max(2, math.ceil(threshold_fraction * (k + 1)))
        if n * _binom_cdf_below(k + 1, 1 - dropout, need) <= failure:
            return k
    return n - 1


def _uniform_below(seed: bytes, counter: int, bound: int) -> tuple[int, int]:
    """An unbiased integer in [0, bound) by rejection from SHA-256 blocks."""
    limit = (1 << 256) - ((1 << 256) % bound)
    while True:
        block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
        v = int.from_bytes(block, "big")
        if v < limit:
            return v % bound, counter


def permutation(ids: Sequence[int], seed: bytes) -> list[int]:
    """A Fisher-Yates shuffle of ``ids`` driven by ``seed`` (deterministic, public)."""
    out = sorted(ids)
    counter = 0
    for i in range(len(out) - 1, 0, -1):
        j, counter = _uniform_below(seed, counter, i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def harary(ids: Sequence[int], k: int, seed: bytes) -> dict[int, frozenset[int]]:
    """Each id's neighbours on a randomly relabelled Harary graph H(k, n), k even.

    ``k >= n - 1`` gives the complete graph (full SecAgg).
    """
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("duplicate ids")
    if n < 2:
        raise ValueError("a graph needs at least two phones")
    if k < 2 or k % 2:
        raise ValueError(f"degree must be even and at least 2, not {k}")
    if k >= n - 1:
        return {u: frozenset(v for v in ids if v != u) for u in ids}
    ring = permutation(ids, seed)
    half = k // 2
    nbrs: dict[int, set[int]] = {u: set() for u in ids}
    for i, u in enumerate(ring):
        for d in range(1, half + 1):
            v = ring[(i + d) % n]
            nbrs[u].add(v)
            nbrs[v].add(u)
    return {u: frozenset(s) for u, s in nbrs.items()}


def is_connected(graph: dict[int, frozenset[int]], removed: frozenset[int] = frozenset()) -> bool:
    """Whether the graph minus ``removed`` is connected (breadth-first search)."""
    alive = [u for u in graph if u not in removed]
    if not alive:
        return True
    seen = {alive[0]}
    frontier = [alive[0]]
    while frontier:
        u = frontier.pop()
        for v in graph[u]:
            if v not in removed and v not in seen:
                seen.add(v)
                frontier.append(v)
    return len(seen) == len(alive)
