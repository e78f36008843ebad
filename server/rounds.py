"""The in-memory record of a round and what it counts (Bonawitz et al. 2019, "Towards
Federated Learning at Scale: System Design", Sec. 2).

A round of kind ``train`` (devices of the training population) or ``evaluate`` (held-out
devices) steps through its :class:`~fedkb.server.phases.Phase` entries; the state diagram
and every transition are in :mod:`fedkb.server.round_machine`. Every state change is
written to SQLite; :class:`RoundState` is the in-memory view of one open round (its
phases, streaming aggregator, counters, devices) and :class:`RoundStats` what it counted:
failures are data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fedkb.server.aggregate import Aggregator, ScalarMeans
from fedkb.server.phases import SELECTING, TRAINING, Phase
from fedkb.wire import Plan

TRAIN, EVALUATE = "train", "evaluate"
COMMITTED, ABANDONED = "committed", "abandoned"
OPEN_STATES = (SELECTING, TRAINING)
POPULATION_OF = {TRAIN: "train", EVALUATE: "heldout"}
KIND_OF = {"train": TRAIN, "heldout": EVALUATE}


@dataclass
class RoundStats:
    """What happened in a round: failures are data, counted by reason."""

    selected: int = 0
    reported: int = 0
    late: int = 0
    aborted: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    num_examples: int = 0
    clipped: int = 0  # = measurements["clipped"], kept for readers of earlier rounds
    measurements: dict[str, float | int] = field(default_factory=dict)  # the aggregator's
    durations: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # a DP round's event, delta and the run's epsilon after it (fedkb.server.privacy)
    privacy: dict[str, Any] | None = None
    # bytes on the wire: each accepted upload's Content-Length, and the sum of what the
    # reporting phones downloaded for their tasks (their ``download_bytes`` timing)
    upload_bytes: list[int] = field(default_factory=list)
    download_bytes: int = 0
    # the 90th percentile (the higher of two claims) of the examples its accepted reports
    # claimed (RoundState.claim): the next secure round's weight cap comes from it
    # (RoundMachine._secure_weight_cap). One number: no claim is kept
    examples_p90: int = 0
    # a secure round's protocol counts (fedkb.server.secure_round.SecureRound.summary)
    secagg: dict[str, Any] | None = None

    def count(self, what: str, reason: str) -> None:
        d = getattr(self, what)
        d[reason] = d.get(reason, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RoundStats:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def percentile_higher(values: list[int], q: float) -> int:
    """The q-th percentile of ``values``, the higher of two neighbours (NumPy's
    ``method="higher"``): one of the values, at least the plain interpolated one."""
    ordered = sorted(values)
    return ordered[math.ceil(q / 100 * (len(ordered) - 1) - 1e-9)] if ordered else 0


MAX_DOWNLOAD_CLAIM = 1 << 40  # a phone's download_bytes timing beyond this is not counted


def count_bytes(stats: RoundStats, upload_bytes: int, timings: dict[str, float]) -> None:
    """Count one accepted report's bytes: its upload's length on the wire and the
    download the phone reports (a claim; absurd values are ignored)."""
    stats.upload_bytes.append(int(upload_bytes))
    down = timings.get("download_bytes", 0.0)
    if 0 <= down < MAX_DOWNLOAD_CLAIM:
        stats.download_bytes += int(down)


@dataclass
class RoundState:
    """An open round, in memory: where it is in its phases, and what it has counted.

    ``phase_deadline`` is the current phase's; ``deadline`` is the round's last one (the
    reporting deadline), known once its last phase has begun.
    """

    id: int
    kind: str
    base_version: int
    goal: int
    target: int
    opened_at: float
    plan: Plan
    aggregator: Aggregator | None
    phases: tuple[Phase, ...]
    configured: bool = True  # False: selecting ahead of the round before it (pipelining)
    claim_by: float = 0.0  # the latest time a device selected ahead was asked back for
    claim_deadline: float = 0.0  # when devices selected ahead must have come for their task
    state: str = SELECTING
    phase_index: int = 0
    phase_started_at: float = 0.0
    phase_deadline: float = 0.0
    selection_closed_at: float | None = None
    deadline: float | None = None
    closed_at: float | None = None
    committed_version: int | None = None
    reason: str | None = None
    stats: RoundStats = field(default_factory=RoundStats)
    # the median training loss tells a diverged model from one blown-up device
    scalars: ScalarMeans = field(default_factory=lambda: ScalarMeans(medians=("loss",)))
    devices: set[str] = field(default_factory=set)
    task_ids: list[str] = field(default_factory=list)
    # each accepted report's examples claim, in memory only (stats keeps their p90)
    example_claims: list[int] = field(default_factory=list)

    def claim(self, examples: int) -> None:
        """Count an accepted report's examples (num_examples, examples_p90)."""
        self.stats.num_examples += int(examples)
        self.example_claims.append(int(examples))
        self.stats.examples_p90 = percentile_higher(self.example_claims, 90)
    secure: Any = None  # a secure round's protocol state (fedkb.server.secure_round)

    def __post_init__(self) -> None:
        self.enter(0, self.opened_at)

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def phase(self) -> Phase:
        """The phase the round is in (the last one it reached, once closed)."""
        return self.phases[self.phase_index]

    @property
    def min_reports(self) -> int:
        """Reports needed to commit at the deadline (the last phase's minimum)."""
        return self.phases[-1].min_count

    def wants_devices(self) -> bool:
        return self.state == SELECTING and self.stats.selected < self.target

    def enter(self, index: int, now: float) -> None:
        """Begin phase ``index``: its deadline runs from ``now``."""
        self.phase_index, phase = index, self.phases[index]
        self.state, self.phase_started_at = phase.state, now
        self.phase_deadline = now + phase.deadline_s
        if index == len(self.phases) - 1:
            self.deadline = self.phase_deadline

    def end_phase(self, now: float) -> None:
        """Record how long the current phase took (it ends at ``now``)."""
        self.stats.durations[f"{self.phase.name}_s"] = round(now - self.phase_started_at, 6)

    def time_left(self, now: float) -> float:
        """Seconds a device given a task now has to report: what is left of this phase and
        the whole of the ones after it (an upper bound before the last phase)."""
        later = sum(p.deadline_s for p in self.phases[self.phase_index + 1:])
        return max(0.0, self.phase_deadline - now) + later

    def close(self, state: str, now: float, reason: str | None = None) -> None:
        """Committed or abandoned at ``now``: phases never reached took no time."""
        if f"{self.phase.name}_s" not in self.stats.durations:
            self.end_phase(now)
        for p in self.phases[self.phase_index + 1:]:
            self.stats.durations[f"{p.name}_s"] = 0.0
        self.state, self.closed_at, self.reason = state, now, reason

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state,
                "base_version": self.base_version, "goal": self.goal, "target": self.target,
                "min_reports": self.min_reports, "opened_at": self.opened_at,
                "selection_closed_at": self.selection_closed_at, "deadline": self.deadline,
                "closed_at": self.closed_at, "committed_version": self.committed_version,
                "reason": self.reason, "stats": json.dumps(self.stats.to_json())}


def round_json(row: dict[str, Any]) -> dict[str, Any]:
    """The public JSON of a round (``GET /v1/rounds/<id>``), from a row dict."""
    stats = row["stats"]
    if isinstance(stats, str):
        stats = json.loads(stats)
    out = {k: row[k] for k in ("id", "kind", "state", "base_version", "committed_version",
                               "goal", "target", "min_reports", "opened_at",
                               "selection_closed_at", "deadline", "closed_at", "reason")}
    out.update(RoundStats.from_json(stats).to_json())
    return out
