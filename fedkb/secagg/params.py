"""A secure round's public parameters, fixed by the server before AdvertiseKeys.

Every phone and the server derive the same neighbourhoods from these: in full SecAgg
(Bonawitz et al. 2017) a phone masks with every other selected phone and shares its
secrets among all of them; in SecAgg+ (Bell et al. 2020, ``degree`` set) only with its
neighbours on the round's Harary graph (:mod:`.graph`). A phone always holds a share of
its own secrets too, so a neighbourhood ("holders") has ``degree + 1`` members.

Thresholds: ``threshold`` (t) is the round's minimum count: the round aborts when fewer
than t phones remain at any phase, and in full SecAgg it is the Shamir threshold, so a
coalition of fewer than t (phones, or phones and the server) learns no secret of a phone
outside it. In SecAgg+ the Shamir threshold applies per neighbourhood:
:attr:`RoundParams.share_threshold` keeps the same fraction ``t / n`` of the ``degree + 1``
holders (at least 2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

from fedkb.secagg import graph

_ROUND_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_ID = (1 << 32) - 1


def threshold_count(spec: float | int, n: int) -> int:
    """``--secagg-threshold`` as a count: an int >= 2 is a count, a float in (0, 1] a fraction of n
    (rounded up, at least 2)."""
    if isinstance(spec, bool):
        raise ValueError("threshold must be a number")
    if isinstance(spec, int):
        t = spec
    elif isinstance(spec, float) and 0 < spec <= 1:
        t = max(2, math.ceil(spec * n))
    else:
        raise ValueError(f"threshold {spec!r} is neither a count nor a fraction in (0, 1]")
    if not 2 <= t <= n:
        raise ValueError(f"threshold {t} must be in [2, n={n}]")
    return t


@dataclass(frozen=True)
class RoundParams:
    round_id: str
    clients: tuple[int, ...]  # the selected phones' ids: distinct, in [1, 2^32), sorted
    threshold: int  # t
    dim: int  # vector length
    k: int  # modulus bits: the sum lives in Z_{2^k}
    degree: int | None = None  # SecAgg+ graph degree (even); None = full SecAgg
    graph_seed: bytes = b""  # public, 32 bytes, drawn per round (SecAgg+ only)

    def __post_init__(self) -> None:
        if not _ROUND_ID.match(self.round_id):
            raise ValueError(f"round id {self.round_id!r} must be 1-128 of [A-Za-z0-9._:-]")
        ids = self.clients
        if list(ids) != sorted(set(ids)):
            raise ValueError("client ids must be distinct and sorted")
        if any(not isinstance(u, int) or not 1 <= u <= MAX_ID for u in ids):
            raise ValueError("client ids must be integers in [1, 2^32)")
        n = len(ids)
        if not 2 <= self.threshold <= n:
            raise ValueError(f"threshold {self.threshold} must be in [2, n={n}]")
        if self.dim < 1:
            raise ValueError("dim must be positive")
        if not 1 <= self.k <= 64:
            raise ValueError(f"modulus bits must be in [1, 64], not {self.k}")
        if self.degree is not None:
            if self.degree < 2 or self.degree % 2:
                raise ValueError(f"SecAgg+ degree must be even and >= 2, not {self.degree}")
            if len(self.graph_seed) != 32:
                raise ValueError("SecAgg+ needs a 32-byte public graph seed")

    @property
    def n(self) -> int:
        return len(self.clients)

    @property
    def full(self) -> bool:
        return self.degree is None or self.degree >= self.n - 1

    @cached_property
    def neighbours(self) -> dict[int, frozenset[int]]:
        if self.full:
            every = frozenset(self.clients)
            return {u: every - {u} for u in self.clients}
        assert self.degree is not None
        return graph.harary(self.clients, self.degree, self.graph_seed)

    def peers(self, u: int) -> frozenset[int]:
        """The phones u masks with."""
        return self.neighbours[u]

    def holders(self, u: int) -> tuple[int, ...]:
        """The phones that hold a share of u's secrets (u's peers and u), sorted."""
        return tuple(sorted(self.neighbours[u] | {u}))

    def holds(self, holder: int, owner: int) -> bool:
        """Whether ``holder`` is one of ``owner``'s holders (O(1))."""
        return holder == owner or holder in self.neighbours[owner]

    @cached_property
    def share_threshold(self) -> int:
        if self.full:
            return self.threshold
        assert self.degree is not None
        size = self.degree + 1
        return min(size, max(2, math.ceil(self.threshold * size / self.n)))
