"""`fedkb simulate --engine fleet` vs `--engine tff`: wall time and held-out recall.

    uv run python bench/bench_vs_tff.py --data DIR [--rounds 20] [--clients-per-round 20]
        [--preset small] [--lr LR] [--fleet-args "--overselect 1.0"] [--skip-tff]

Runs each engine as its own `fedkb simulate ... --json` command, one after the other
(never together: they would share the cores), times the whole command from the outside
(process start to exit: imports, TFF's set-up, the fleet's server and workers, the final
evaluation), and prints one table row per engine plus the speed ratio. The fleet's model
export is made before timing starts (`--artifact`, the default cache DATA/models/PRESET),
as a deployed system reuses its artifact; the export time is printed apart.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str]) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout), wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients-per-round", type=int, default=20)
    p.add_argument("--lr", type=float, default=None,
                   help="client SGD learning rate for both engines (default: the preset's)")
    p.add_argument("--fleet-args", default="", help="extra arguments for the fleet engine")
    p.add_argument("--skip-tff", action="store_true")
    args = p.parse_args()

    from fedkb.federated import default_artifact_dir, ensure_artifact

    t0 = time.perf_counter()
    ensure_artifact(args.data, args.preset, default_artifact_dir(args.data, args.preset))
    print(f"export (or reuse) of '{args.preset}': {time.perf_counter() - t0:.1f}s", flush=True)

    common = [sys.executable, "-m", "fedkb", "simulate", "--data", str(args.data),
              "--preset", args.preset, "--rounds", str(args.rounds),
              "--clients-per-round", str(args.clients_per_round), "--json",
              *(["--lr", str(args.lr)] if args.lr is not None else [])]
    rows = []
    if not args.skip_tff:
        rows.append(("tff", *run([*common, "--engine", "tff"])))
        print(f"tff done in {rows[-1][2]:.1f}s", flush=True)
    rows.append(("fleet " + args.fleet_args,
                 *run([*common, "--engine", "fleet", *shlex.split(args.fleet_args)])))
    print(f"fleet done in {rows[-1][2]:.1f}s\n", flush=True)

    print("| engine | wall (whole command) | held-out top-1 / top-3 | rounds |")
    print("|---|---|---|---|")
    for name, rep, wall in rows:
        h = rep["heldout"]
        print(f"| {name.strip()} | {wall:.1f} s | {h['top1_recall']:.2%} / "
              f"{h['top3_recall']:.2%} | {len(rep['rounds'])} |")
    if len(rows) == 2:
        (_, tff, t_tff), (_, fleet, t_fleet) = rows
        d = (fleet["heldout"]["top1_recall"] - tff["heldout"]["top1_recall"]) * 100
        print(f"\nfleet is {t_tff / t_fleet:.2f}x faster; top-1 difference {d:+.2f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
