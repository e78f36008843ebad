"""The phases of a round, as data, and the handler of each.

A round steps through the :class:`Phase` entries of its kind (:func:`round_phases`), one
after the other. Each phase has a deadline and a minimum count: when its handler says it
is over (its deadline passed, or nothing more can happen in it), the round moves on to the
next phase if the phase's count reached ``min_count``, commits if it was the last, and is
abandoned (for the phase's ``short`` reason) otherwise. The round machine
(:mod:`fedkb.server.round_machine`) does that stepping for every phase alike; a phase only
brings its entry and a :class:`PhaseHandler`.

Today a round has the two phases of Bonawitz et al. 2019 (Sec. 2.2): *selection*
(devices check in and take seats; counted: tasks handed out) and *reporting* (the
selected devices train and upload; counted: accepted reports). Secure aggregation
(Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning") would add advertise-keys, share-keys, masked-input and unmasking phases after
selection, each with its own deadline and the threshold it needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fedkb.server.config import RoundConfig
from fedkb.server.metrics import ServerMetrics

if TYPE_CHECKING:
    from fedkb.server.rounds import RoundState
    from fedkb.server.selection import Selection

SELECTING, TRAINING = "selecting", "training"  # the round's state during each phase


@dataclass(frozen=True)
class Phase:
    """One step of a round.

    Attributes:
        name: ``selection``, ``reporting``: the round's duration of it is
            ``durations[f"{name}_s"]``, and the Prometheus phase label.
        state: the round's state while in it (``selecting``, ``training``).
        deadline_s: how long it may last, from when it begins.
        min_count: what its handler counts must reach by its end, else the round is
            abandoned.
        short: the abandon reason when it ends below ``min_count``.
    """

    name: str
    state: str
    deadline_s: float
    min_count: int
    short: str


def round_phases(cfg: RoundConfig, goal: int) -> tuple[Phase, ...]:
    """The phases of a training or evaluation round that wants ``goal`` reports."""
    need = cfg.min_reports(goal)
    return (Phase("selection", SELECTING, cfg.selection_window_s, need, "too_few_devices"),
            Phase("reporting", TRAINING, cfg.reporting_deadline_s, need, "deadline"))


class PhaseHandler(Protocol):
    """What one kind of phase does; the round machine steps every phase with these."""

    def over(self, rnd: RoundState, now: float) -> bool:
        """Whether the phase has ended (its deadline passed, or waiting cannot add more)."""
        ...

    def end(self, rnd: RoundState, now: float) -> None:
        """Settle the phase as it ends (before its count is compared with ``min_count``)."""
        ...

    def count(self, rnd: RoundState) -> int:
        """What the phase has reached, against its ``min_count``."""
        ...


class SelectionPhase:
    """Devices take seats until the target is selected (and every seat is claimed, or
    the claim window is over) or the selection window closes.

    A pipelined round that is not configured yet (its model does not exist) keeps
    selecting whatever the time: its seats can only be claimed once the model exists.
    Seats still unclaimed when selection ends count as aborted ("no_show").
    """

    def __init__(self, selection: Selection, metrics: ServerMetrics) -> None:
        self.selection, self.metrics = selection, metrics

    def over(self, rnd: RoundState, now: float) -> bool:
        if not rnd.configured:
            return False
        full = rnd.stats.selected >= rnd.target and (
            now >= rnd.claim_deadline or len(rnd.task_ids) == rnd.stats.selected)
        return full or now >= rnd.phase_deadline

    def end(self, rnd: RoundState, now: float) -> None:
        for _ in range(self.selection.drop_seats(rnd)):  # selected, never came for a task
            rnd.stats.count("aborted", "no_show")
            self.metrics.aborts.labels("no_show").inc()
        rnd.selection_closed_at = now

    def count(self, rnd: RoundState) -> int:
        return len(rnd.task_ids)


class ReportingPhase:
    """Selected devices train and report until the deadline, or until every one of them
    has answered (reported or aborted: waiting longer cannot add reports)."""

    def over(self, rnd: RoundState, now: float) -> bool:
        answered = rnd.stats.reported + sum(rnd.stats.aborted.values())
        return answered >= rnd.stats.selected or now >= rnd.phase_deadline

    def end(self, rnd: RoundState, now: float) -> None:
        """Nothing to settle: the reports are folded as they come."""

    def count(self, rnd: RoundState) -> int:
        return rnd.stats.reported
