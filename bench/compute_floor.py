"""The compute floor of a federated run: what its SGD steps alone cost on this machine.

A phone's training step is the real work of a fleet run; everything else (server,
HTTP, serialisation, orchestration) is overhead. The floor of a run is

    floor = sum over the clients each round aggregated of their SGD steps
            x the machine's 1-thread LiteRT step time / cores

(the steps of a client follow from its shard and batch seed,
:func:`fedkb.device_runtime.batching.batch_plan`, so both engines' reports give them).
The held-out evaluation at the end is reported apart, as its own floor (its batches x
the 1-thread ``evaluate`` time / cores). On a shared machine wall-time ratios mean
little, so each time is measured both as wall and as CPU seconds (the step's own
thread time; the engine's whole process tree, user + system, from
``RUSAGE_CHILDREN``): a CPU ratio of 1.0 is a run that spent nothing but its steps.

Used by ``bench/bench_vs_tff.py`` (its ``floor`` lines); on its own it prints the
machine's step times:

    uv run --frozen --no-sync python bench/compute_floor.py --data DIR [--preset small]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepTimes:
    """Median 1-thread times of one ``train`` and one ``evaluate`` call, wall and CPU."""

    train_wall_s: float
    train_cpu_s: float
    eval_wall_s: float
    eval_cpu_s: float
    cores: int

    def describe(self) -> str:
        return (f"1-thread LiteRT step {1000 * self.train_wall_s:.1f} ms wall / "
                f"{1000 * self.train_cpu_s:.1f} ms CPU, evaluate batch "
                f"{1000 * self.eval_wall_s:.1f} ms wall / {1000 * self.eval_cpu_s:.1f} ms CPU, "
                f"{self.cores} cores")


def measure_step_times(artifact: Path, data: Path, reps: int = 40) -> StepTimes:
    """The machine's 1-thread ``train`` and ``evaluate`` times on a real batch (median)."""
    from fedkb.datasets.store import Dataset
    from fedkb.device_runtime.trainer import Trainer

    ds = Dataset.open(data)
    trainer = Trainer(artifact, num_threads=1)
    w0 = trainer.artifact.initial_weights()
    rows = trainer._check_windows(ds.all_windows("train", "train")[: trainer.B])
    x, y, m = trainer._batch(rows)
    trainer.set_weights(w0)
    evaluate = trainer._runners["evaluate"]

    def timed(fn) -> tuple[float, float]:
        walls, cpus = [], []
        for _ in range(reps):
            trainer.set_weights(w0)  # every step from the same weights (no drift, no blow-up)
            w, c = time.perf_counter(), time.thread_time()
            fn()
            cpus.append(time.thread_time() - c)
            walls.append(time.perf_counter() - w)
        return statistics.median(walls), statistics.median(cpus)

    for _ in range(3):  # warm-up
        trainer.step(x, y, m, 1.0)
    tw, tc = timed(lambda: trainer.step(x, y, m, 1.0))
    ew, ec = timed(lambda: evaluate(x=x, y=y, mask=m))
    return StepTimes(tw, tc, ew, ec, os.cpu_count() or 1)


def trained_steps(report: dict[str, Any], data: Path, batch_size: int) -> int:
    """SGD steps of every client the report's rounds aggregated (their participants)."""
    from fedkb.datasets.store import Dataset
    from fedkb.device_runtime.batching import batch_plan

    ds = Dataset.open(data)
    cfg = report.get("config", {})
    epochs, max_steps = int(cfg.get("epochs") or 1), cfg.get("max_steps")
    steps = 0
    for row in report["rounds"]:
        for user, seed in row.get("participants") or []:
            steps += len(batch_plan(len(ds.shard(user).train), batch_size, epochs,
                                    max_steps, int(seed)))
    return steps


def client_steps(report: dict[str, Any], data: Path, batch_size: int) -> list[list[int]]:
    """Per aggregated round, the SGD steps of each of its clients."""
    from fedkb.datasets.store import Dataset
    from fedkb.device_runtime.batching import batch_plan

    ds = Dataset.open(data)
    cfg = report.get("config", {})
    epochs, max_steps = int(cfg.get("epochs") or 1), cfg.get("max_steps")
    return [[len(batch_plan(len(ds.shard(user).train), batch_size, epochs, max_steps,
                            int(seed))) for user, seed in row.get("participants") or []]
            for row in report["rounds"]]


def makespan(jobs: list[int], cores: int) -> int:
    """Longest-processing-time-first schedule of ``jobs`` on ``cores``: its makespan (LPT
    is within 4/3 of the optimum; for 20 jobs on 2 cores it is nearly always optimal)."""
    loads = [0] * max(1, cores)
    for j in sorted(jobs, reverse=True):
        loads[loads.index(min(loads))] += j
    return max(loads)


def synchronous_floor_steps(report: dict[str, Any], data: Path, batch_size: int,
                            cores: int) -> int:
    """Step-times on the critical path of synchronous rounds: round r+1 trains the model
    round r makes, so each round costs at least its clients' best schedule on the cores
    (its slowest client alone, where one client outweighs the rest)."""
    return sum(makespan(jobs, cores) for jobs in client_steps(report, data, batch_size))


def heldout_batches(data: Path, batch_size: int) -> int:
    """Batches of the final held-out evaluation."""
    from fedkb.datasets.store import Dataset

    return -(-len(Dataset.open(data).all_windows("heldout", "eval")) // batch_size)


def children_cpu_s() -> float:
    """User + system seconds of this process's waited-for children (and theirs) so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def floor_line(name: str, report: dict[str, Any], wall_s: float, cpu_s: float,
               times: StepTimes, data: Path, batch_size: int) -> dict[str, float]:
    """One engine run against its floor: the figures, printed and returned."""
    steps = trained_steps(report, data, batch_size)
    train_cpu = steps * times.train_cpu_s
    train_wall = steps * times.train_wall_s / times.cores
    batches = heldout_batches(data, batch_size)
    eval_cpu = batches * times.eval_cpu_s
    eval_wall = batches * times.eval_wall_s / times.cores
    sync_wall = synchronous_floor_steps(report, data, batch_size, times.cores) * \
        times.train_wall_s
    out = {"steps": steps, "floor_wall_s": train_wall, "floor_cpu_s": train_cpu,
           "sync_floor_wall_s": sync_wall,
           "wall_over_sync_floor": wall_s / sync_wall if sync_wall else float("nan"),
           "eval_floor_wall_s": eval_wall, "eval_floor_cpu_s": eval_cpu,
           "wall_s": wall_s, "cpu_s": cpu_s,
           "wall_over_floor": wall_s / train_wall if train_wall else float("nan"),
           "cpu_over_floor": cpu_s / train_cpu if train_cpu else float("nan"),
           "wall_over_floor_and_eval": wall_s / (train_wall + eval_wall),
           "cpu_over_floor_and_eval": cpu_s / (train_cpu + eval_cpu)}
    print(f"  floor {name}: {steps} steps -> training floor {train_wall:.1f} s wall "
          f"({train_cpu:.1f} CPU-s), held-out evaluation floor {eval_wall:.1f} s "
          f"({eval_cpu:.1f} CPU-s); run {wall_s:.1f} s wall, {cpu_s:.1f} CPU-s: "
          f"wall/floor {out['wall_over_floor']:.2f}x, CPU/floor {out['cpu_over_floor']:.2f}x "
          f"(with the evaluation: {out['wall_over_floor_and_eval']:.2f}x / "
          f"{out['cpu_over_floor_and_eval']:.2f}x); synchronous floor (each round waits "
          f"for its clients' best schedule on {times.cores} cores) {sync_wall:.1f} s: "
          f"wall/that {out['wall_over_sync_floor']:.2f}x", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--reps", type=int, default=40)
    args = p.parse_args()
    from fedkb.simulation.fleet_engine import default_artifact_dir, ensure_artifact

    art = default_artifact_dir(args.data, args.preset)
    ensure_artifact(args.data, args.preset, art)
    print(measure_step_times(art, args.data, args.reps).describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
