"""How a device cuts its shard into training batches: one rule, shared by every engine.

Each epoch visits the windows in a fresh permutation drawn from
``np.random.default_rng(seed)`` and cuts it into batches of B rows; the last batch of an
epoch may be short (the trainer pads it with masked rows). Training stops after
``max_steps`` batches if given. The LiteRT trainer, the TensorFlow Federated reference
and the fidelity test all take their batches from :func:`batch_plan`, so "the same
batches in the same order" holds by construction.
"""

from __future__ import annotations

import math

import numpy as np


def batch_plan(n: int, batch_size: int, epochs: int = 1, max_steps: int | None = None,
               seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """``[(epoch, row_indices), ...]`` for ``n`` windows, in training order."""
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if max_steps is not None and max_steps < 0:
        raise ValueError("max_steps must be >= 0")
    rng = np.random.default_rng(seed)
    planned = math.ceil(n / batch_size) * epochs
    limit = planned if max_steps is None else min(planned, max_steps)
    plan: list[tuple[int, np.ndarray]] = []
    for epoch in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            if len(plan) >= limit:
                return plan
            plan.append((epoch, order[i : i + batch_size]))
    return plan

