"""Clipping one update to an L2 norm: the phone's half of user-level DP (contract layer:
NumPy only, so a phone and the server run the same code).

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", https://arxiv.org/abs/1710.06963) bounds each device's influence on a round's
sum by clipping its delta to norm C. Under secure aggregation the server never sees a
single update, so the clip must happen on the phone; the plan carries C
(:attr:`fedkb.wire.Plan.clip`) and the phone reports the bit
``b = 1[||delta|| <= C]`` that adaptive clipping (Andrew et al. 2021) counts.

The scale is TF Privacy's ``tf.clip_by_global_norm``: ``C / max(||delta||, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def global_norm(arrays: Sequence[np.ndarray]) -> float:
    """The L2 norm of all arrays together: each array's squares summed in its own dtype
    (BLAS, no copy), again in float64 if that overflowed (float32 from about 1e19)."""
    total = 0.0
    for a in arrays:
        flat = a.ravel()
        sq = float(np.dot(flat, flat))
        if not math.isfinite(sq):
            sq = float(np.dot(flat.astype(np.float64), flat))
        total += sq
    return math.sqrt(total)


def clip_update(arrays: Sequence[np.ndarray], clip: float
                ) -> tuple[list[np.ndarray], bool, float]:
    """``arrays`` scaled to norm ``clip`` if longer: (clipped arrays, unclipped bit b,
    the norm before clipping). Arrays keep their dtype; the inputs are untouched."""
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive number, got {clip}")
    norm = global_norm(arrays)
    if norm <= clip:
        return list(arrays), True, norm
    factor = clip / norm
    return [(a * a.dtype.type(factor)).astype(a.dtype, copy=False) for a in arrays], False, norm
