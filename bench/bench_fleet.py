"""Benchmark the fleet against a real server: realism shares, per-step overhead, round phases.

    uv run python bench/bench_fleet.py --data DIR --model ARTIFACT [--devices 500]
        [--rounds 10] [--speedup 60] [--workers 2] [--config FILE]

Starts `fedkb server` (its own process, a fresh state dir, the default round config
unless --config) and `fedkb fleet --json` (its own processes), waits for the rounds,
then reports:

- the fleet's completed / late / interrupted / dropout shares next to Bonawitz et al.;
- fleet wall time per training step (shard load, LiteRT steps, delta, encoding) over a
  bare LiteRT ``train`` loop on the same artifact (the overhead ratio);
- a round's phases: the server's selection / reporting / commit (wall seconds) and the
  devices' mean download / compute / upload (simulated seconds, and wall at the speedup).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests


def bare_step_ms(model: Path, steps: int = 60) -> float:
    from fedkb.device_runtime.trainer import Trainer

    tr = Trainer(model)
    tr.set_weights(tr.artifact.initial_weights())
    rng = np.random.default_rng(0)
    x = rng.integers(4, tr.V, size=(tr.B, tr.T), dtype=np.int32)
    y = rng.integers(4, tr.V, size=(tr.B, tr.T), dtype=np.int32)
    m = np.ones((tr.B, tr.T), np.float32)
    for _ in range(5):
        tr.step(x, y, m, 0.0)
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.step(x, y, m, 0.0)
    return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--speedup", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--config", type=Path)
    args = ap.parse_args()
    py = [sys.executable, "-m", "fedkb"]
    with tempfile.TemporaryDirectory(prefix="fedkb-bench-") as tmp:
        state = Path(tmp) / "state"
        cmd = [*py, "server", "--port", "0", "--state-dir", str(state), "--model",
               str(args.model), "--rounds", str(args.rounds)]
        config = args.config
        if config is None:  # the default round config; every phone registers from here
            config = Path(tmp) / "server.json"
            config.write_text(json.dumps({"registrations_per_minute_per_address": 10**6,
                                          "registrations_per_minute": 10**6}))
        cmd += ["--config", str(config)]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not (state / "server.json").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            url = json.loads((state / "server.json").read_text())["url"]
            t0 = time.monotonic()
            fleet = subprocess.run(
                [*py, "fleet", "--server", url, "--data", str(args.data), "--devices",
                 str(args.devices), "--rounds", str(args.rounds), "--speedup",
                 str(args.speedup), "--workers", str(args.workers), "--json"],
                capture_output=True, text=True, timeout=3600)
            wall = time.monotonic() - t0
            if fleet.returncode != 0:
                sys.exit(fleet.stderr[-3000:])
            summary = json.loads(fleet.stdout)
            rounds = requests.get(f"{url}/v1/rounds?limit=1000", timeout=10).json()
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    rows = rounds["rounds"] if isinstance(rounds, dict) else rounds
    train_rounds = [r for r in rows if r.get("kind") == "train" and r["state"] == "committed"]
    phases = {k: round(float(np.mean([r["durations"].get(k) or 0 for r in train_rounds])), 2)
              for k in ("selection_s", "reporting_s", "commit_s")} if train_rounds else {}
    bare = bare_step_ms(args.model)
    dev = summary["mean_device_phase_sim_s"]
    print(json.dumps({
        "devices": args.devices, "rounds": args.rounds, "speedup": args.speedup,
        "workers": args.workers, "wall_s": round(wall, 1),
        "shares": summary["shares"], "bonawitz_2019": summary["bonawitz_2019"],
        "tasks": summary["tasks"], "aborted_by_reason": summary["aborted_by_reason"],
        "failed_by_code": summary["failed_by_code"],
        "completed_by_tier": summary["completed_by_tier"],
        "step_ms": {"fleet_wall_per_step": summary["training"]["wall_per_step_ms"],
                    "bare_litert": round(bare, 3),
                    "overhead_ratio": round(summary["training"]["wall_per_step_ms"] / bare, 3)},
        "round_phases_wall_s": phases,
        "device_phases_sim_s": dev,
        "device_phases_wall_s": {k: (None if v is None else round(v / args.speedup, 3))
                                 for k, v in dev.items()},
        "simulated_hours": summary["simulated_hours"],
    }, indent=2))


if __name__ == "__main__":
    main()
