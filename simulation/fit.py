"""Fit the demo's presets and recipe to a user's own corpus (`fedkb demo --corpus`).

The demo's recipe (:mod:`fedkb.simulation.demo`) was measured on Shakespeare: 1,419
phones, 20 reports a round, 200 rounds in ~400 s of a 10-minute budget. A corpus of a
few hundred users cannot fill 20 seats round after round through a simulated night (the
rounds are abandoned for too few devices and the run stalls), and a small corpus has
neither 10,000 words worth learning nor enough windows for one epoch of central training
to be a fair reference. Every value here is derived from the data and from the fleet's
own availability traces, and each comes with the reason it was chosen
(:class:`Choice`), which the demo prints and writes into ``report.json``:

- vocabulary: the words seen at least :data:`MIN_WORD_COUNT` times, at most 10,000;
- phones: one per user;
- schedule: the UTC hour to start the simulated clock at, the one whose worst moment
  over the run has the most eligible (charging, Wi-Fi, idle, battery) training phones;
- cohort and rest: the largest report goal (at most the demo's 20) such that, at that
  worst moment, the eligible phones cover two cohorts (pipelining: one trains while the
  next selects) and the phones resting after a report, with a margin of 1.5; the rest
  period shrinks (to one round) before the cohort does. The issue's stalled run (309
  training phones, 20 a round, rest 3, from 22:00 UTC) needed 100 phones where this
  curve has 79-93;
- rounds: what the federated stage's budget buys at the measured seconds per round,
  capped at :data:`MAX_TASKS_PER_USER` tasks per training user;
- the reporting deadline: three times a cohort's training work on the fleet's cores;
- central epochs: as many as give central training the demo's number of steps on
  Shakespeare (one epoch there), at most :data:`MAX_CENTRAL_EPOCHS`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_WORD_COUNT = 3  # a word seen fewer times is not worth a row of the embedding
MAX_VOCAB = 10_000  # the presets' vocabulary (Hard et al. 2018)
MAX_COHORT = 20  # the demo's report goal on Shakespeare
MIN_COHORT = 2
COVER_MARGIN = 1.5  # eligible phones needed per phone the cohorts and the rest take
FED_BUDGET_S = 400.0  # the demo's federated stage on Shakespeare: 397 s (bench/README.md)
# Measured on the demo (bench/README.md): ~2.0 wall s per round of 20 reports, ~0.5 s of
# it the round's fixed cost; the rest grows with the cohort (training, uploads, folds).
ROUND_FIXED_S, ROUND_PER_REPORT_S = 0.5, 0.075
STEP_S = 0.027  # a `small` LiteRT train step on an idle core (bench/README.md)
MAX_TASKS_PER_USER = 12
CENTRAL_STEPS = 1_023  # one epoch of the demo's central training on Shakespeare (B=64)
MAX_CENTRAL_EPOCHS = 10.0


@dataclass(frozen=True)
class Choice:
    """One fitted value and why it was chosen."""

    name: str
    value: Any
    why: str


@dataclass(frozen=True)
class RunFit:
    """The fleet and baseline settings fitted to a prepared dataset."""

    devices: int
    clients_per_round: int
    rejoin_after_rounds: int
    rounds: int
    reporting_deadline_s: float
    start_hour: float
    central_epochs: float
    eligible_min: int  # eligible training phones at the run's worst moment
    choices: tuple[Choice, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["choices"] = [asdict(c) for c in self.choices]
        return d


def fit_vocab(counts: Counter[str], cap: int = MAX_VOCAB) -> Choice:
    """The vocabulary size for token ``counts`` (all users' words, punctuation included)."""
    total = sum(counts.values())
    kept = sum(1 for c in counts.values() if c >= MIN_WORD_COUNT)
    size = max(10, min(cap, kept))
    covered = sum(c for _, c in counts.most_common(size))
    return Choice("vocab_size", size,
                  f"{kept:,} of {len(counts):,} distinct tokens occur at least "
                  f"{MIN_WORD_COUNT} times (cap {cap:,}); the {size:,} most frequent cover "
                  f"{covered / max(total, 1):.1%} of {total:,} tokens")


def corpus_counts(spec: str) -> Counter[str]:
    """Token counts of every user of corpus ``spec`` (one pass of the reader)."""
    from fedkb.datasets.corpus import ReadReport, open_corpus
    from fedkb.datasets.tokenize import tokens

    counts: Counter[str] = Counter()
    for _user, text in open_corpus(spec, ReadReport()):
        counts.update(tokens(text))
    return counts


def eligible_curve(data, devices: int, seed: int, hours: np.ndarray,
                   min_battery: float = 0.2) -> tuple[np.ndarray, int]:
    """Eligible training phones of the fleet at each simulated hour (UTC, day 0 = 0), and
    how many training phones there are: the fleet's own profiles and traces."""
    from fedkb.device_runtime.fleet import FleetConfig, fleet_profiles
    from fedkb.device_runtime.traces import NETWORKS

    # a trace row's flags when charging (bit 0), idle (bit 1) and on Wi-Fi (bits 2-3)
    eligible_flags = 1 | 2 | (NETWORKS.index("wifi") << 2)

    fc = FleetConfig("http://unused", data, devices, seed=seed)
    t = np.asarray(hours, float) * 3600.0
    out = np.zeros(len(t), np.int64)
    n_train = 0
    for p in fleet_profiles(fc, range(devices)):
        if p.role != "train":
            continue
        n_train += 1
        row = np.searchsorted(p.trace.t, t, side="right") - 1
        ok = (p.trace.flags & 0b1111) == eligible_flags
        level = p.trace.battery.astype(np.float64)
        out += (row >= 0) & ok[row.clip(0)] & (level[row.clip(0)] >= min_battery)
    return out, n_train


def round_seconds(cohort: int) -> float:
    return ROUND_FIXED_S + ROUND_PER_REPORT_S * cohort


def rest_for(train_phones: int, cohort: int) -> int:
    """The fleet engine's default rest (a quarter of one pass over the training phones)."""
    return max(0, train_phones // cohort // 4)


def fit_run(ds, devices: int | None = None, seed: int = 0, speedup: float = 60.0,
            batch_size: int = 16, max_steps: int = 50, workers: int = 2,
            budget_s: float = FED_BUDGET_S) -> RunFit:
    """Fit the fleet run and the central baseline to the prepared dataset ``ds``."""
    choices: list[Choice] = []
    train_users, heldout = len(ds.train_users), len(ds.heldout_users)
    n_dev = devices or train_users + heldout
    choices.append(Choice("devices", n_dev, f"one phone per user ({train_users} training, "
                                            f"{heldout} held-out)"))
    # the simulated clock: sample the day every 30 simulated minutes over 2 days
    grid = np.arange(0.0, 48.0, 0.5)
    curve, train_phones = eligible_curve(ds.path, n_dev, seed, grid)

    def worst(start: float, hours: float) -> int:
        sel = (grid >= start) & (grid <= start + hours)
        return int(curve[sel].min())

    cohort = MAX_COHORT
    start, e_min, rest, rounds, window_h = 22.0, 0, 0, 0, 0.0
    while True:
        rounds = _rounds(budget_s, cohort, train_phones)
        window_h = rounds * round_seconds(cohort) * speedup / 3600.0
        starts = np.arange(0.0, 24.0, 0.5)
        mins = [worst(s, min(window_h, 24.0)) for s in starts]
        best = int(np.argmax(mins))
        start, e_min = float(starts[best]), mins[best]
        # eligible phones needed: two pipelined cohorts plus the resting ones, with margin
        room = int(e_min / COVER_MARGIN) - 2 * cohort
        rest = min(rest_for(train_phones, cohort), max(0, room // cohort))
        if room >= cohort or cohort <= MIN_COHORT:  # two cohorts and a rest of >= 1 round
            break
        cohort -= 1
    choices.append(Choice(
        "start_hour", start,
        f"over the run's {window_h:.1f} simulated hours (speedup {speedup:g}) the worst "
        f"moment has {e_min} of {train_phones} training phones eligible, the most of any "
        "start hour"))
    choices.append(Choice(
        "clients_per_round", cohort,
        f"the largest report goal up to {MAX_COHORT} whose two pipelined cohorts and a rest "
        f"of a round fit in {e_min} eligible phones / {COVER_MARGIN} margin"))
    choices.append(Choice(
        "rejoin_after_rounds", rest,
        f"a phone rests {rest} rounds after a report (default {rest_for(train_phones, cohort)}"
        f"), so resting phones never leave fewer eligible than the cohorts need"))
    choices.append(Choice(
        "rounds", rounds,
        f"{budget_s:.0f} s of federated training at ~{round_seconds(cohort):.2f} s per round "
        f"of {cohort}, at most {MAX_TASKS_PER_USER} tasks per training user"))
    steps = _client_steps(ds, batch_size, max_steps)
    work_s = float(np.percentile(steps, 90)) * cohort * STEP_S / max(1, workers)
    deadline = float(max(10.0, math.ceil(3 * work_s)))
    choices.append(Choice(
        "reporting_deadline_s", deadline,
        f"3x a cohort's training work on {workers} workers (p90 {np.percentile(steps, 90):.0f}"
        f" steps a phone, cap {max_steps}), at least the demo's 10 s"))
    per_epoch = max(1, math.ceil(ds.meta["counts"]["train_windows"] / 64))
    epochs = round(min(MAX_CENTRAL_EPOCHS, max(1.0, CENTRAL_STEPS / per_epoch)), 2)
    choices.append(Choice(
        "central_epochs", epochs,
        f"{per_epoch} steps per epoch; the demo's central reference takes ~{CENTRAL_STEPS} "
        f"steps, at most {MAX_CENTRAL_EPOCHS:g} epochs"))
    return RunFit(n_dev, cohort, rest, rounds, deadline, start, epochs, e_min, tuple(choices))


def _rounds(budget_s: float, cohort: int, train_phones: int) -> int:
    by_time = int(budget_s / round_seconds(cohort))
    by_users = max(1, MAX_TASKS_PER_USER * train_phones // cohort)
    return max(1, min(by_time, by_users))


def _client_steps(ds, batch_size: int, max_steps: int) -> np.ndarray:
    """SGD steps of one epoch per training user, capped at ``max_steps``."""
    rows = [ds.entry(u).train[1] for u in ds.train_users]
    return np.minimum(max_steps, np.ceil(np.asarray(rows, float) / batch_size)).clip(min=1)


def lines(fit_choices: list[Choice] | tuple[Choice, ...]) -> list[str]:
    """The chosen values, one line each, for the demo's output."""
    return [f"      {c.name} = {c.value}: {c.why}" for c in fit_choices]
