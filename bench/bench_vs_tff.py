"""`fedkb simulate --engine fleet` vs `--engine tff`: wall time and held-out recall.

    uv run python bench/bench_vs_tff.py --data DIR [--rounds 20] [--clients-per-round 20]
        [--preset small] [--lr LR] [--seeds 0,1,2] [--replay] [--out DIR]
        [--recipe-args "--strategy fedavgm --server-lr 0.7 --clip-norm 4"]
        [--fleet-args "--overselect 1.0"] [--skip-tff]
    uv run python bench/bench_vs_tff.py --data DIR --summarize OUT1 OUT2 ...

For each seed, runs each engine as its own `fedkb simulate ... --json --seed S` command,
one after the other (never together: they would share the cores), and times the whole
command from the outside (process start to exit: imports, TFF's set-up, the fleet's
server and workers, the final evaluation). TFF's seed picks its clients; the fleet's
seed picks which user each phone holds and the phones' traces. With ``--replay``, TFF
then trains the very clients each fleet run aggregated (``--engine tff --schedule``).

At 20 rounds top-1 recall is chaotic in either engine: with the same clients, reversing
the order in which a round sums its clients' deltas (a change of ~1e-8 in round 1) moves
the weights by ~1e-4 at round 4 and ends 2-3 points of top-1 apart (bench/README.md).
So the summary compares medians and means over the seeds, with bootstrap intervals for
their differences; the replay shows how far our
stack and TFF drift on the same clients, which is that same chaos, not a bias
(`bench/bench_chaos.py` measures it). The fleet's model export is made before timing
starts (the default cache DATA/models/PRESET), as a deployed system reuses its artifact;
its time is printed apart. ``--out`` keeps every JSON report.

Each run is also set against its compute floor (``bench/compute_floor.py``): its SGD
steps x the machine's 1-thread step time / cores, measured at start; wall/floor and, for
a shared machine, the process tree's CPU seconds / the steps' CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], keep: Path) -> tuple[dict | None, float]:
    """The command's JSON report and wall time; None (and its error) when it failed.
    The CPU seconds of its process tree go into ``LAST_CPU_S`` (bench/compute_floor.py)."""
    from compute_floor import children_cpu_s

    t0, c0 = time.perf_counter(), children_cpu_s()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    LAST_CPU_S[0] = children_cpu_s() - c0
    keep.with_suffix(".cpu").write_text(f"{LAST_CPU_S[0]:.3f}\n", encoding="utf-8")
    if out.returncode != 0:  # e.g. a fleet run whose model diverged: a result, not a crash
        error = (out.stderr.strip().splitlines() or ["?"])[-1]
        keep.with_suffix(".err").write_text(out.stderr, encoding="utf-8")
        if out.stdout.strip():  # a stalled fleet run's partial report: replayable
            keep.with_suffix(".failed.json").write_text(out.stdout, encoding="utf-8")
        print(f"FAILED ({out.returncode}) after {wall:.1f} s: {' '.join(cmd[3:])}\n  {error}",
              flush=True)
        return None, wall
    keep.write_text(out.stdout, encoding="utf-8")
    keep.with_suffix(".wall").write_text(f"{wall:.3f}\n", encoding="utf-8")
    return json.loads(out.stdout), wall


LAST_CPU_S = [0.0]


def figures(rep: dict | None) -> str:
    if rep is None:
        return "failed (see the .err file)"
    h = rep["heldout"]
    return f"{h['top1_recall']:.2%} / {h['top3_recall']:.2%} ({h['loss']:.3f})"


def series() -> tuple[dict[str, list[float]], ...]:
    """Empty per-engine lists: wall times, top-1 recalls, losses."""
    return ({"tff": [], "fleet": []}, {"tff": [], "fleet": [], "replay": []},
            {"tff": [], "fleet": [], "replay": []})


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def gap_interval(a: list[float], b: list[float], stat: str = "mean", n: int = 20_000,
                 seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of stat(a) - stat(b) (each resampled with replacement);
    ``stat`` is "mean" or "median"."""
    import numpy as np

    f = {"mean": np.mean, "median": np.median}[stat]
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a), np.asarray(b)
    gaps = f(rng.choice(xa, (n, len(xa))), axis=1) - f(rng.choice(xb, (n, len(xb))), axis=1)
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients-per-round", type=int, default=20)
    p.add_argument("--lr", type=float, default=None,
                   help="client SGD learning rate for both engines (default: the preset's)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one run each")
    p.add_argument("--replay", action="store_true",
                   help="also train each fleet run's clients with TFF")
    p.add_argument("--recipe-args", default="",
                   help="arguments for both engines, e.g. \"--strategy fedavgm --server-lr 0.7 "
                        "--clip-norm 4\"")
    p.add_argument("--fleet-args", default="", help="extra arguments for the fleet engine")
    p.add_argument("--skip-tff", action="store_true", help="no sampled TFF runs")
    p.add_argument("--out", type=Path, default=None, help="keep the JSON reports here")
    p.add_argument("--summarize", type=Path, nargs="+", default=None, metavar="DIR",
                   help="run nothing: pool the reports kept (--out) by earlier invocations")
    args = p.parse_args()
    if args.summarize:
        return pooled(args.summarize)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = args.out or Path(tempfile.mkdtemp(prefix="fedkb-bench-"))
    out.mkdir(parents=True, exist_ok=True)

    from fedkb.simulation.fleet_engine import default_artifact_dir, ensure_artifact

    t0 = time.perf_counter()
    artifact = default_artifact_dir(args.data, args.preset)
    ensure_artifact(args.data, args.preset, artifact)
    print(f"export (or reuse) of '{args.preset}': {time.perf_counter() - t0:.1f}s", flush=True)
    from compute_floor import floor_line, measure_step_times

    times = measure_step_times(artifact, args.data)
    batch = json.loads((artifact / "metadata.json").read_text())["batch_size"]
    print(f"compute floor from: {times.describe()}", flush=True)
    floors: dict[str, list[dict]] = {"tff": [], "fleet": []}

    common = [sys.executable, "-m", "fedkb", "simulate", "--data", str(args.data),
              "--preset", args.preset, "--rounds", str(args.rounds),
              "--clients-per-round", str(args.clients_per_round), "--json",
              *(["--lr", str(args.lr)] if args.lr is not None else []),
              *shlex.split(args.recipe_args)]
    fleet_extra = shlex.split(args.fleet_args)
    table = ["| seed | engine | wall (whole command) | held-out top-1 / top-3 (loss) |",
             "|---|---|---|---|"]
    walls, top1, loss = series()
    gaps = []
    for seed in seeds:
        s = ["--seed", str(seed)]
        if not args.skip_tff:
            rep, wall = run([*common, *s, "--engine", "tff"], out / f"tff-{seed}.json")
            if rep is not None:
                floors["tff"].append(floor_line("tff", rep, wall, LAST_CPU_S[0], times,
                                                args.data, batch))
                walls["tff"].append(wall)
                top1["tff"].append(rep["heldout"]["top1_recall"])
                loss["tff"].append(rep["heldout"]["loss"])
            table.append(f"| {seed} | tff | {wall:.1f} s | {figures(rep)} |")
            print(table[-1], flush=True)
        fleet_file = out / f"fleet-{seed}.json"
        rep, wall = run([*common, *s, "--engine", "fleet", *fleet_extra], fleet_file)
        table.append(f"| {seed} | fleet | {wall:.1f} s | {figures(rep)} |")
        print(table[-1], flush=True)
        if rep is None:
            continue
        floors["fleet"].append(floor_line("fleet", rep, wall, LAST_CPU_S[0], times, args.data,
                                          batch))
        walls["fleet"].append(wall)
        top1["fleet"].append(rep["heldout"]["top1_recall"])
        loss["fleet"].append(rep["heldout"]["loss"])
        if args.replay:
            again, wall = run([*common, "--engine", "tff", "--schedule", str(fleet_file)],
                              out / f"replay-{seed}.json")
            table.append(f"| {seed} | tff replaying the fleet's clients | {wall:.1f} s | "
                         f"{figures(again)} |")
            print(table[-1], flush=True)
            if again is None:
                continue
            top1["replay"].append(again["heldout"]["top1_recall"])
            loss["replay"].append(again["heldout"]["loss"])
            gaps.append((rep["heldout"]["top1_recall"] - again["heldout"]["top1_recall"],
                         rep["heldout"]["loss"] - again["heldout"]["loss"]))

    print("\n" + "\n".join(table) + "\n")
    summarize(top1, loss, walls, gaps)
    for name, rows in floors.items():
        if rows:
            print(f"{name} over its compute floor (median of {len(rows)}): wall "
                  f"{median([r['wall_over_floor'] for r in rows]):.2f}x, CPU "
                  f"{median([r['cpu_over_floor'] for r in rows]):.2f}x; with the held-out "
                  f"evaluation's floor: wall "
                  f"{median([r['wall_over_floor_and_eval'] for r in rows]):.2f}x, CPU "
                  f"{median([r['cpu_over_floor_and_eval'] for r in rows]):.2f}x")
    (out / "floors.json").write_text(json.dumps({"step_times": times.__dict__, **floors}),
                                     encoding="utf-8")
    print(f"reports: {out}")
    return 0


def pooled(dirs: list[Path]) -> int:
    """``--summarize``: the summary over the kept reports of earlier invocations (walls
    from each report's ``.wall`` file, written since this option exists)."""
    walls, top1, loss = series()
    for d in dirs:
        for name in top1:
            for f in sorted(d.glob(f"{name}-*.json")):
                if f.name.endswith(".failed.json"):
                    continue
                h = json.loads(f.read_text(encoding="utf-8"))["heldout"]
                top1[name].append(h["top1_recall"])
                loss[name].append(h["loss"])
                if name in walls and f.with_suffix(".wall").exists():
                    walls[name].append(float(f.with_suffix(".wall").read_text()))
    summarize(top1, loss, walls, [])
    return 0


def summarize(top1: dict[str, list[float]], loss: dict[str, list[float]],
              walls: dict[str, list[float]], gaps: list[tuple[float, float]]) -> None:
    for name in ("tff", "fleet", "replay"):
        if top1[name]:
            xs = [100 * x for x in top1[name]]
            print(f"{name}: top-1 median {median(xs):.2f}% (mean {statistics.mean(xs):.2f}%, "
                  f"range {min(xs):.2f}-{max(xs):.2f}%, {len(xs)} runs); loss median "
                  f"{median(loss[name]):.3f}"
                  + (f"; wall median {median(walls[name]):.1f} s" if walls.get(name) else ""))
    if walls["tff"] and walls["fleet"]:
        print(f"fleet is {median(walls['tff']) / median(walls['fleet']):.2f}x faster (medians)")
    if top1["tff"] and top1["fleet"]:
        for stat, f in (("median", median), ("mean", statistics.mean)):
            lo, hi = gap_interval(top1["fleet"], top1["tff"], stat)
            print(f"top-1 {stat}s differ by "
                  f"{100 * (f(top1['fleet']) - f(top1['tff'])):+.2f} points, 95% bootstrap "
                  f"interval [{100 * lo:+.2f}, {100 * hi:+.2f}]")
    if gaps:
        worst = max(gaps, key=lambda g: abs(g[0]))
        print(f"fleet vs TFF on the same clients: top-1 differs by at most "
              f"{100 * abs(worst[0]):.2f} points, loss by at most "
              f"{max(abs(g[1]) for g in gaps):.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
