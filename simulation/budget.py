"""`fedkb demo --budget`: size the demo's rounds and central baseline to a time budget.

The demo's cost is its SGD steps, and a step's cost is the machine's: on the project's
2-core EPYC VM a `small` LiteRT step takes ~20 ms on one thread and the demo ~520 s; on
a 2-core Xeon whose step takes 58.6 ms it took 817 s (issue 22). So the demo measures
its step time once the model is exported (:func:`measure_step_s`), predicts the rest of
the run from it (:func:`predict`) and, if that does not fit the budget, scales the
federated rounds and the central baseline's steps by one factor (both see the same share
of their nominal work, so the comparison stays fair), and says so (:class:`BudgetPlan`).
Once the baselines have run, :func:`replan_rounds` compares their wall time with the
prediction and cuts the federated rounds by the same overrun (a machine busier or slower
than its step time says: the tenth session's demo ran its baselines 1.16x over).

The cost model is linear in the step time s, per stage, fitted to those two measured
demos (bench/README.md, "The fleet at the compute floor"):

- baselines (n-gram + central Adam, one epoch of 1,023 steps): ``BASELINE_FIXED_S``
  for the n-gram, imports and the evaluation, plus the central steps at
  ``CENTRAL_STEP_UNITS`` LiteRT steps' worth each;
- federated: per round ``ROUND_FIXED_S`` (selection, HTTP, the round's tail) plus its
  expected steps (clients x the mean steps of a training user) x s / cores x
  ``ROUND_STEP_FACTOR``, and the held-out evaluation.

Figures of the fit (two points, two parameters per stage, so it passes through both):
federated 396.9 s at s = 20.2 ms and 624 s at s = 58.6 ms for 200 rounds of 20 clients
of 3.82 steps on average and 606 held-out batches, baselines 100.8 s and 175 s. A
prediction between and near those machines is what it is good for.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

# fitted to the two measured demos (module docstring)
ROUND_FIXED_S = 1.386
ROUND_STEP_FACTOR = 0.756
BASELINE_FIXED_S = 61.8
CENTRAL_STEP_UNITS = 1.889  # a central Adam step (batch 64, Keras) in LiteRT `small` steps
SAFETY = 0.92  # plan for this share of the budget: the model is a fit, machines vary
MIN_SCALE = 0.2  # below this the demo would no longer show what it is for


def parse_budget(text: str) -> float:
    """``"10m"``, ``"600s"``, ``"600"`` -> seconds; ``"0"`` or ``"off"`` -> 0 (no budget)."""
    t = text.strip().lower()
    if t in ("0", "off", "none"):
        return 0.0
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h)?", t)
    if not m:
        raise ValueError(f"a budget is like 10m, 600s or off, not {text!r}")
    value = float(m.group(1))
    return value * {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def measure_step_s(artifact: Path, windows, reps: int = 15) -> float:
    """Median wall time of one 1-thread LiteRT ``train`` step on a real batch."""
    from fedkb.device_runtime.trainer import Trainer

    trainer = Trainer(artifact, num_threads=1)
    w0 = trainer.artifact.initial_weights()
    x, y, m = trainer._batch(trainer._check_windows(windows[: trainer.B]))
    times = []
    for i in range(reps + 2):
        trainer.set_weights(w0)
        t0 = time.perf_counter()
        trainer.step(x, y, m, 0.5)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass(frozen=True)
class Workload:
    """What the nominal demo trains: rounds x clients, the mean steps of a training user,
    the central baseline's steps, the held-out evaluation's batches."""

    rounds: int
    clients_per_round: int
    mean_client_steps: float
    central_steps: int
    heldout_batches: int
    cores: int


def predict(w: Workload, step_s: float, rounds: int | None = None,
            central_steps: int | None = None) -> tuple[float, float]:
    """Predicted seconds of (baselines, federated stage) at step time ``step_s``."""
    rounds = w.rounds if rounds is None else rounds
    central = w.central_steps if central_steps is None else central_steps
    per_round = ROUND_FIXED_S + ROUND_STEP_FACTOR * w.clients_per_round * \
        w.mean_client_steps * step_s / w.cores
    evaluation = w.heldout_batches * step_s / 2 / w.cores  # evaluate ~ half a train step
    baselines = BASELINE_FIXED_S + central * CENTRAL_STEP_UNITS * step_s
    return baselines, rounds * per_round + evaluation


@dataclass(frozen=True)
class BudgetPlan:
    """The demo as the budget sizes it, and why."""

    budget_s: float
    step_s: float
    elapsed_s: float
    rounds: int
    central_steps: int
    nominal_s: float  # predicted remaining time of the unscaled demo
    planned_s: float  # predicted remaining time of this plan
    scale: float  # 1.0: nothing scaled

    def describe(self, w: Workload) -> str:
        head = (f"budget {self.budget_s / 60:g} min: this machine's 1-thread `small` step "
                f"takes {1000 * self.step_s:.1f} ms; the rest of the demo as planned "
                f"would take ~{self.nominal_s:.0f} s, {self.elapsed_s:.0f} s are spent")
        if self.scale >= 1.0:
            return head + f"; it fits (~{self.elapsed_s + self.planned_s:.0f} s in all)"
        return (head + f"; to fit, the federated rounds go {w.rounds} -> {self.rounds} and "
                f"the central baseline {w.central_steps} -> {self.central_steps} steps "
                f"({self.scale:.0%} of each, so both see the same share of their data), "
                f"~{self.elapsed_s + self.planned_s:.0f} s in all (--budget off: the "
                f"full demo)")


def plan(budget_s: float, step_s: float, elapsed_s: float, w: Workload) -> BudgetPlan:
    """The largest common scale (<= 1) of rounds and central steps that fits the budget."""
    fixed = BASELINE_FIXED_S + w.heldout_batches * step_s / 2 / w.cores
    nominal = sum(predict(w, step_s))
    room = budget_s * SAFETY - elapsed_s - fixed
    scale = 1.0 if nominal <= budget_s * SAFETY - elapsed_s else \
        max(MIN_SCALE, room / max(nominal - fixed, 1e-9))
    scale = min(1.0, scale)
    rounds = max(1, math.floor(w.rounds * scale))
    central = max(1, math.floor(w.central_steps * scale))
    return BudgetPlan(budget_s, step_s, elapsed_s, rounds, central, nominal,
                      sum(predict(w, step_s, rounds, central)), scale)


def replan_rounds(p: BudgetPlan, w: Workload, elapsed_s: float,
                  baselines_s: float) -> tuple[int, str | None]:
    """The federated rounds that still fit once the baselines ran (``elapsed_s`` since the
    demo started, ``baselines_s`` of it the baselines'), and a line saying why, or
    ``(p.rounds, None)`` when the plan still holds.

    The baselines are the first measured stage: where they ran over their prediction, the
    federated stage, on the same machine under the same load, will too, by the same
    factor. Rounds are only ever cut here (the central baseline already ran its share)."""
    predicted_baselines, predicted_fed = predict(w, p.step_s, p.rounds, p.central_steps)
    slow = max(1.0, baselines_s / max(predicted_baselines, 1e-9))
    evaluation = w.heldout_batches * p.step_s / 2 / w.cores
    per_round = (predicted_fed - evaluation) / max(p.rounds, 1)
    room = p.budget_s * SAFETY - elapsed_s - evaluation * slow
    fits = math.floor(room / (per_round * slow))
    floor_rounds = max(1, math.floor(w.rounds * MIN_SCALE))
    rounds = max(floor_rounds, min(p.rounds, fits))
    if rounds >= p.rounds:
        return p.rounds, None
    return rounds, (f"re-planned: the baselines took {baselines_s:.0f} s against "
                    f"~{predicted_baselines:.0f} s predicted ({slow:.2f}x), so the "
                    f"federated stage will too; {p.rounds} -> {rounds} rounds to stay in "
                    f"the budget")


def demo_workload(data: Path, rounds: int, clients_per_round: int, central_epochs: float,
                  central_batch: int, batch_size: int) -> Workload:
    """The nominal demo's work on the prepared dataset ``data``."""
    import os

    from fedkb.datasets.store import Dataset

    ds = Dataset.open(data)
    shards = [len(ds.shard(u).train) for u in ds.train_users]
    mean_steps = sum(-(-n // batch_size) for n in shards) / max(1, len(shards))
    central = math.ceil(central_epochs * sum(shards) / central_batch)
    heldout = -(-len(ds.all_windows("heldout", "eval")) // batch_size)
    return Workload(rounds, clients_per_round, mean_steps, central, heldout,
                    os.cpu_count() or 1)


def fit_demo(args, data: Path, artifact: Path, elapsed_s: float, rounds: int,
             clients_per_round: int, central_epochs: float
             ) -> tuple[BudgetPlan, Workload]:
    """`fedkb demo`'s plan under ``args.budget`` (printed: its rounds, and the central
    baseline's max steps where scaled), from the run it would do otherwise (``rounds`` of
    ``clients_per_round``, ``central_epochs``: the flags, or the values fitted to the
    user's corpus); ``args.budget_step_ms`` replaces the measured step time (emulating
    another machine). :func:`replan_rounds` revises the rounds after the baselines."""
    import json

    from fedkb.datasets.store import Dataset
    from fedkb.model.central import CentralConfig

    batch = int(json.loads((artifact / "metadata.json").read_text())["batch_size"])
    w = demo_workload(data, rounds, clients_per_round, central_epochs,
                      CentralConfig().batch_size, batch)
    if args.budget_step_ms is not None:
        step_s, how = args.budget_step_ms / 1000, "given by --budget-step-ms"
    else:
        t0 = time.perf_counter()
        step_s = measure_step_s(artifact, Dataset.open(data).all_windows("train", "train"))
        elapsed_s += time.perf_counter() - t0
        how = "measured"
    p = plan(args.budget, step_s, elapsed_s, w)
    print(f"      {p.describe(w)} (step time {how})", flush=True)
    return p, w
