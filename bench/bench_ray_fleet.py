"""The Ray fleet against the multiprocessing fleet, and the Ray fleet at scale (issue 20).

    # equal recall: the 20x20 `small` run, multiprocessing then Ray, seed after seed
    uv run --frozen --no-sync python bench/bench_ray_fleet.py recall --data runs/data \
        --seeds 0,1,2,3,4 --out runs/bench-ray-recall.jsonl

    # scale: N idle-then-training phones on a local Ray, tiny model, for D wall seconds
    uv run --frozen --no-sync python bench/bench_ray_fleet.py scale --data runs/data \
        --devices 100000 --duration 300

`recall` runs `fedkb simulate --engine fleet` (the bench README's 20x20 command, with the
loaded machine's `--speedup 60 --selection-window 3 --reporting-deadline 30`) once with
worker processes and once with `--ray` per seed and prints one JSON line per run (wall
seconds, held-out top-1/top-3, and what the rounds aggregated: clients, late and aborted
tasks, SGD steps, the share of clients from the 10% longest shards). `scale` starts
`fedkb server` with the tiny model and the fleet engine's derived config, runs the Ray
fleet for ``--duration`` wall seconds and prints its summary's cluster report plus
check-ins/s and rounds/min.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = ["--preset", "small", "--rounds", "20", "--clients-per-round", "20", "--lr", "1.0",
          "--strategy", "fedavgm", "--server-lr", "0.7", "--clip-norm", "4", "--devices",
          "1419", "--speedup", "60", "--selection-window", "3", "--reporting-deadline", "30",
          "--overselect", "1.0", "--pace-margin", "2"]


def round_facts(rep: dict, data: Path) -> dict:
    """What a run's committed rounds aggregated, to compare two fleets at one seed: the
    clients, late and aborted tasks, the aggregated clients' SGD steps (their shards and
    batch seeds), and the share of rounds' clients among the 10% longest shards."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compute_floor import client_steps

    from fedkb.datasets.store import Dataset

    ds = Dataset.open(data)
    batch = json.loads((data / "models" / "small" / "metadata.json").read_text())["batch_size"]
    sizes = sorted(len(ds.shard(u).train) for u in ds.train_users)
    long_cut = sizes[int(0.9 * len(sizes))]
    rounds = rep["rounds"]
    clients = [u for r in rounds for u, _ in r.get("participants") or []]
    return {"clients": sum(r["clients"] for r in rounds),
            "late": sum(r["late"] for r in rounds),
            "aborted": sum(r["aborted"] for r in rounds),
            "steps": sum(map(sum, client_steps(rep, data, batch))),
            "long_share": round(sum(len(ds.shard(u).train) >= long_cut for u in clients)
                                / max(1, len(clients)), 4)}


def recall(args: argparse.Namespace) -> None:
    for seed in [int(s) for s in args.seeds.split(",")]:
        for engine in args.engines.split(","):
            cmd = [sys.executable, "-m", "fedkb", "simulate", "--engine", "fleet", "--data",
                   str(args.data), *RECIPE, *args.recipe_args.split(), "--seed", str(seed),
                   "--json",
                   *(["--ray"] if engine == "ray" else [])]
            t0 = time.monotonic()
            p = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.monotonic() - t0
            row: dict = {"seed": seed, "fleet": engine, "wall_s": round(wall, 1),
                         "rc": p.returncode}
            if p.returncode == 0:
                rep = json.loads(p.stdout)
                row.update(top1=rep["heldout"]["top1_recall"],
                           top3=rep["heldout"]["top3_recall"], rounds=len(rep["rounds"]),
                           **round_facts(rep, args.data))
            else:
                row["error"] = p.stderr[-500:]
            print(json.dumps(row), flush=True)
            if args.out:
                with Path(args.out).open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")


def scale(args: argparse.Namespace) -> None:
    from fedkb.datasets.store import Dataset
    from fedkb.device_runtime.fleet import Fleet, FleetConfig
    from fedkb.device_runtime.ray_options import RayOptions
    from fedkb.simulation.fleet_config import (
        FLEET_ROUND,
        FleetRunConfig,
        train_phones,
        write_server_config,
    )
    from fedkb.simulation.fleet_engine import ensure_artifact
    from fedkb.simulation.server_process import ServerProcess

    work = Path(tempfile.mkdtemp(prefix="fedkb-bench-ray-"))
    artifact = ensure_artifact(args.data, "tiny", Path(args.data) / "models" / "tiny")
    cfg = FleetRunConfig(data=Path(args.data), preset="tiny", devices=args.devices,
                         speedup=args.speedup, claim_hold_s=0.0,
                         round=FLEET_ROUND.replace(max_rounds=1000, report_goal=args.goal,
                                                   selection_window_s=3.0,
                                                   reporting_deadline_s=30.0))
    ds = Dataset.open(args.data)
    trainers = train_phones(ds, cfg)
    config = write_server_config(cfg, work / "server.json", trainers, args.devices - trainers)
    server = ServerProcess(work / "state", model=artifact, config=config,
                           threads=args.server_threads)
    url = server.start()
    try:
        fleet = Fleet(FleetConfig(url, Path(args.data), args.devices, speedup=args.speedup,
                                  duration_s=args.duration, seed=0,
                                  ray=RayOptions(shards=args.shards, trainers=args.trainers,
                                                 ready_timeout_s=900)))
        t0 = time.monotonic()
        summary = fleet.run()
        wall = time.monotonic() - t0
    finally:
        server.stop()
    run_s = wall - summary["ray"]["connect_s"] - summary["ray"]["actors_ready_s"]
    committed = (summary.get("server") or {}).get("rounds_committed", 0)
    print(json.dumps({"devices": args.devices, "wall_s": round(wall, 1),
                      "running_s": round(run_s, 1), "ray": summary["ray"],
                      "checkins": summary["checkins"],
                      "checkins_per_s": round(summary["checkins"] / run_s, 1),
                      "rounds_committed": committed,
                      "rounds_per_min": round(60 * committed / run_s, 2),
                      "tasks": summary["tasks"]}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(required=True)
    r = sub.add_parser("recall")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--seeds", default="0,1,2,3,4")
    r.add_argument("--out", default=None)
    r.add_argument("--engines", default="processes,ray", help="which fleets, in order")
    r.add_argument("--recipe-args", default="",
                   help="flags appended to the recipe (a later flag wins), e.g. for a loaded "
                        "machine: '--rounds 10 --reporting-deadline 90'")
    r.set_defaults(func=recall)
    s = sub.add_parser("scale")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--devices", type=int, default=100_000)
    s.add_argument("--duration", type=float, default=300.0)
    s.add_argument("--speedup", type=float, default=60.0)
    s.add_argument("--goal", type=int, default=20)
    s.add_argument("--shards", type=int, default=2)
    s.add_argument("--trainers", type=int, default=0)
    s.add_argument("--server-threads", type=int, default=None)
    s.set_defaults(func=scale)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
