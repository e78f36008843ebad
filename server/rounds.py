"""The round protocol of Bonawitz et al. 2019 ("Towards Federated Learning at Scale: System
Design", Sec. 2): selection, configuration, reporting; commit or abandon.

A round of kind ``train`` (devices of the training population) or ``evaluate`` (held-out
devices) goes through::

    selecting --(target selected, or selection window over)--> training
        selecting --(fewer than min_reports selected)--> abandoned
    selecting | training --(report_goal reports)--> committed
    training --(reporting deadline: >= min_reports)--> committed
    training --(reporting deadline: fewer)--> abandoned
    selecting | training --(server restart)--> abandoned

Selection over-selects (``target = ceil(goal * overselect)``); the round commits as soon
as ``goal`` reports are in, and the stragglers' reports are refused as late and counted.
With ``pipeline`` (the paper's Sec. 2.3 "Pipelining") the next training round starts
selecting as soon as the previous one stops selecting, so selection overlaps training.
Until the previous round closes, the new round is not *configured*: its model does not
exist yet, so its selected devices are told to come back soon ("selected_waiting"); once
the previous round commits (or is abandoned) the new round's base version is fixed, and
each selected device gets its task on its next check-in. Every task of a round trains the
same base version: nothing is stale. A selected device that has not come for its task
when selection closes counts as aborted ("no_show").

Every state change is written to SQLite; :class:`RoundState` is the in-memory view of
one open round (its streaming aggregator, counters, devices). The clock is injected, and
deadlines are checked on every request and by a ticker, so tests move time instantly.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from fedkb.server.aggregate import Aggregator, ScalarMeans
from fedkb.wire import Plan

TRAIN, EVALUATE = "train", "evaluate"
SELECTING, TRAINING, COMMITTED, ABANDONED = "selecting", "training", "committed", "abandoned"
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

    def count(self, what: str, reason: str) -> None:
        d = getattr(self, what)
        d[reason] = d.get(reason, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RoundStats:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TaskRecord:
    """One device's assignment in one round. States: assigned, reported, aborted, late."""

    id: str
    round_id: int
    device_id: str
    kind: str
    model_version: int
    plan: Plan
    assigned_at: float
    state: str = "assigned"
    upload_sha256: str | None = None
    response: dict[str, Any] | None = None

    @staticmethod
    def new_id() -> str:
        return "t-" + secrets.token_hex(12)

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "round_id": self.round_id, "device_id": self.device_id,
                "kind": self.kind, "model_version": self.model_version,
                "plan": json.dumps(self.plan.to_json()), "state": self.state,
                "assigned_at": self.assigned_at}

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> TaskRecord:
        return cls(r["id"], r["round_id"], r["device_id"], r["kind"], r["model_version"],
                   Plan.from_json(r["plan"]), r["assigned_at"], r["state"],
                   r["upload_sha256"], r["response"])


@dataclass
class RoundState:
    """An open round, in memory."""

    id: int
    kind: str
    base_version: int
    goal: int
    target: int
    min_reports: int
    opened_at: float
    selection_deadline: float
    plan: Plan
    aggregator: Aggregator | None
    configured: bool = True  # False: selecting ahead of the round before it (pipelining)
    claim_by: float = 0.0  # the latest time a device selected ahead was asked back for
    claim_deadline: float = 0.0  # when devices selected ahead must have come for their task
    state: str = SELECTING
    selection_closed_at: float | None = None
    deadline: float | None = None
    closed_at: float | None = None
    committed_version: int | None = None
    reason: str | None = None
    stats: RoundStats = field(default_factory=RoundStats)
    scalars: ScalarMeans = field(default_factory=ScalarMeans)
    devices: set[str] = field(default_factory=set)
    task_ids: list[str] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    def wants_devices(self) -> bool:
        return self.state == SELECTING and self.stats.selected < self.target

    def time_left(self, now: float, reporting_deadline_s: float) -> float:
        """Seconds a device selected now has to report (an upper bound while selecting)."""
        if self.deadline is not None:
            return max(0.0, self.deadline - now)
        return max(0.0, self.selection_deadline - now) + reporting_deadline_s

    def close_selection(self, now: float, reporting_deadline_s: float) -> None:
        self.state = TRAINING
        self.selection_closed_at = now
        self.deadline = now + reporting_deadline_s
        self.stats.durations["selection_s"] = round(now - self.opened_at, 6)

    def close(self, state: str, now: float, reason: str | None = None) -> None:
        self.state, self.closed_at, self.reason = state, now, reason
        start = self.selection_closed_at if self.selection_closed_at is not None else now
        if self.selection_closed_at is None:
            self.stats.durations["selection_s"] = round(now - self.opened_at, 6)
        self.stats.durations["reporting_s"] = round(now - start, 6)

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
