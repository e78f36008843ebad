"""The chaos bench (issue 19): a faulty fleet, a server killed twice, and poisoning.

    # 300 phones with the issue's faults, SIGKILL twice (the first during a commit), then
    # a clean run at the same seed for the held-out recall to compare with
    uv run --frozen --no-sync python bench/bench_faults.py chaos --clean \\
        --sim "--data runs/demo/data --preset small --devices 300 --rounds 12 --lr 1.0 \\
               --strategy fedavgm --server-lr 0.7 --clip-norm 4 --speedup 300" \\
        --faults nan=0.05,huge=0.02,shape=0.02,replay=0.02,examples=0.02,unplug=0.15

    # poisoning: boosted-update attackers (model replacement) against clean, per seed
    uv run --frozen --no-sync python bench/bench_faults.py poison --seeds 0,1,2 \\
        --faults boost=0.05 --sim "(the 20x20 fleet recipe of bench/README.md)"

``--sim`` takes `fedkb simulate --engine fleet` flags (one parser, one config:
:func:`fedkb.simulation.cli.fleet_config`). The chaos report (JSON) is what
:mod:`fedkb.simulation.chaos` measures; the poisoning report gives, per seed, the
held-out top-1 of the clean and the attacked run, the attackers' accepted uploads, and
the bound one update's influence has under the run's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def sim_config(sim: str, seed: int | None = None, faults: str | None = None):
    """A FleetRunConfig from `fedkb simulate` flags (``--engine fleet`` implied)."""
    from fedkb.simulation import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    argv = ["simulate", "--engine", "fleet", *shlex.split(sim)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if faults is not None:
        argv += ["--faults", faults]
    return cli.fleet_config(parser.parse_args(argv))


def influence_bound(cfg) -> dict[str, Any]:
    """What one accepted update can do to a round's mean update (see bench/README.md)."""
    m = cfg.round.report_goal
    clip = cfg.strategy.clip_norm
    return {"clients_per_round": m, "clip_norm": clip,
            "one_update_on_the_mean": None if clip is None else round(clip / m, 4),
            "note": "equal weights; an update claiming n_i of N examples moves the mean by "
                    "at most clip_norm * n_i / N (n_i is held to the plan's step budget)"}


def chaos(args: argparse.Namespace) -> dict[str, Any]:
    from fedkb.simulation.chaos import ChaosConfig, run_chaos
    from fedkb.simulation.fleet_engine import run_fleet_engine

    cfg = sim_config(args.sim, faults=args.faults)
    out = Path(args.out or tempfile.mkdtemp(prefix="fedkb-chaos-"))
    report = run_chaos(ChaosConfig(cfg, kills=args.kills, timeout_s=args.timeout), out / "chaos",
                       log=lambda s: print(s, file=sys.stderr))
    if args.clean:
        t0 = time.monotonic()
        clean, _, _ = run_fleet_engine(dataclasses.replace(cfg, faults=None), out / "clean")
        report["clean"] = {"top1_recall": clean.heldout["top1_recall"],
                           "top3_recall": clean.heldout["top3_recall"],
                           "rounds": len(clean.rounds), "wall_s": round(time.monotonic() - t0, 1)}
        report["top1_vs_clean_points"] = round(
            100 * (report["heldout"]["top1_recall"] - clean.heldout["top1_recall"]), 3)
    from fedkb.simulation.chaos_checks import orphans

    report["orphans_after_all"] = orphans(os.getpid(), out)
    return report


def poison(args: argparse.Namespace) -> dict[str, Any]:
    from fedkb.simulation.fleet_engine import run_fleet_engine
    from fedkb.simulation.fleet_run import TrainingStalled

    out = Path(args.out or tempfile.mkdtemp(prefix="fedkb-poison-"))
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        row: dict[str, Any] = {"seed": seed}
        for name, faults in (("clean", None), ("attacked", args.faults)):
            cfg = sim_config(args.sim, seed=seed, faults=faults)
            t0 = time.monotonic()
            try:
                report, run, _ = run_fleet_engine(cfg, out / f"{name}-{seed}")
            except TrainingStalled as exc:  # failures are data: say so, go on
                row[name], row[f"{name}_error"] = None, str(exc)
                continue
            row[name] = round(report.heldout["top1_recall"], 5)
            row[f"{name}_wall_s"] = round(time.monotonic() - t0, 1)
            if faults:
                f = run.fleet.get("faults", {})
                row["boosted_accepted"] = f.get("fault_boost:accepted", 0)
                row["boosted_injected"] = f.get("fault_boost", 0)
                row["clipped"] = sum(r.get("clipped", 0) for r in run.rounds
                                     if r["kind"] == "train" and r["state"] == "committed")
        if row.get("clean") is not None and row.get("attacked") is not None:
            row["delta_points"] = round(100 * (row["attacked"] - row["clean"]), 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    deltas = [r["delta_points"] for r in rows if "delta_points" in r]
    return {"faults": args.faults, "sim": args.sim, "rows": rows,
            "delta_points_mean": round(statistics.mean(deltas), 3) if deltas else None,
            "delta_points_max_abs": max((abs(d) for d in deltas), default=None),
            "bound": influence_bound(sim_config(args.sim, faults=args.faults))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("chaos", help="faulty fleet + SIGKILLed server")
    c.add_argument("--kills", type=int, default=2)
    c.add_argument("--clean", action="store_true", help="also a clean run at the same seed")
    c.add_argument("--timeout", type=float, default=900.0, help="wall seconds for the fleet")
    c.add_argument("--faults", default="nan=0.05,huge=0.02,shape=0.02,replay=0.02,"
                                        "examples=0.02,unplug=0.15")
    q = sub.add_parser("poison", help="boosted-update attackers against clean, per seed")
    q.add_argument("--seeds", default="0,1,2")
    q.add_argument("--faults", default="boost=0.05")
    for s in (c, q):
        s.add_argument("--sim", required=True, help="`fedkb simulate --engine fleet` flags")
        s.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = p.parse_args(argv)
    report = chaos(args) if args.what == "chaos" else poison(args)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
