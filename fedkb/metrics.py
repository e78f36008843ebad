"""The keyboard metric in NumPy, and the report schema every training engine prints.

Top-k recall (ARCHITECTURE.md, "Contracts"): over target positions whose target is an
in-vocabulary word (id >= 4: not PAD, BOS, EOS or OOV), the share where the target is
among the model's top k suggestions; special tokens are never suggested. A target is a
top-k hit when fewer than k other words score strictly higher (the same rule as the
LiteRT ``evaluate`` signature). This module is the reference the LiteRT metric and the
baselines agree with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedkb.artifact import NUM_SPECIAL  # PAD, BOS, EOS, OOV


@dataclass
class RecallCounts:
    """Additive sums; combine shards or devices with ``+``."""

    iv_count: int = 0
    top1_hits: int = 0
    top3_hits: int = 0

    def __add__(self, other: RecallCounts) -> RecallCounts:
        return RecallCounts(self.iv_count + other.iv_count, self.top1_hits + other.top1_hits,
                            self.top3_hits + other.top3_hits)

    @property
    def top1_recall(self) -> float:
        return self.top1_hits / self.iv_count if self.iv_count else 0.0

    @property
    def top3_recall(self) -> float:
        return self.top3_hits / self.iv_count if self.iv_count else 0.0


def recall_from_scores(scores: np.ndarray, targets: np.ndarray) -> RecallCounts:
    """Counts for rows of ``scores`` (n, V) against ``targets`` (n,); PAD/special rows skipped."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    keep = targets >= NUM_SPECIAL
    scores, targets = scores[keep], targets[keep]
    if len(targets) == 0:
        return RecallCounts()
    s = scores.copy()
    s[:, :NUM_SPECIAL] = -np.inf
    target_score = s[np.arange(len(targets)), targets]
    higher = (s > target_score[:, None]).sum(axis=1)
    return RecallCounts(len(targets), int((higher < 1).sum()), int((higher < 3).sum()))


@dataclass
class EngineReport:
    """What `fedkb simulate --engine ...` prints (``--json``): one schema for every engine.

    ``heldout`` is measured on users that never trained. ``rounds`` lists per-round
    figures for federated engines (empty for the baselines). ``communication`` is the
    bytes a fleet run measured on the wire (uplink per update, downlink per task).
    """

    engine: str
    data: str
    heldout: dict[str, Any]
    wall_s: float
    config: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    # differential privacy (fleet engine with --dp): mechanism, noise_multiplier, clip,
    # epsilon (None: no guarantee, z = 0), delta, rounds, ...; None without DP
    privacy: dict[str, Any] | None = None
    # bytes on the wire (the fleet engine: fedkb.simulation.communication); None elsewhere
    communication: dict[str, Any] | None = None
    # secure aggregation (fleet engine with --secagg: fedkb.simulation.secure_report)
    secure_aggregation: dict[str, Any] | None = None

    @staticmethod
    def heldout_figures(counts: RecallCounts, users: int, loss: float | None = None
                        ) -> dict[str, Any]:
        return {"users": users, "iv_targets": counts.iv_count,
                "top1_recall": round(counts.top1_recall, 5),
                "top3_recall": round(counts.top3_recall, 5),
                "loss": None if loss is None else round(loss, 5)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
