"""What DP-FedAvg costs the server per round: the DP stage against the plain clipped mean,
on updates of the real model's shapes, and the epsilon bookkeeping per commit.

    uv run --frozen --no-sync python bench/bench_dp.py [--artifact DIR] [--clients 20]
        [--rounds 200]

CPU seconds (``time.process_time``) of this process: the fold of ``--clients`` updates
plus the result (noise, divide) for one round, median of 5 rounds; then the ledger's
epsilon after each of ``--rounds`` commits (the first pays for the RDP curve), and
``accounting.epsilon`` from scratch once for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from fedkb.server.aggregate import mean_factory
from fedkb.server.privacy.accounting import RoundEvent, epsilon
from fedkb.server.privacy.adaptive_clip import AdaptiveClip
from fedkb.server.privacy.dp_mean import ClippedSum, GaussianMean
from fedkb.server.privacy.ledger import EpsilonLedger
from fedkb.server.privacy.noise import NoiseSource
from fedkb.weights import WeightSpec


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def one_round(make, updates) -> None:
    agg = make()
    for u in updates:
        if hasattr(agg, "accumulate_report"):
            agg.accumulate_report(u, True)
        else:
            agg.accumulate(u, 10.0)
    agg.result()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path, default=Path("runs/demo/data/models/small"))
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=200)
    a = ap.parse_args()
    meta = json.loads((a.artifact / "metadata.json").read_text())
    specs = [WeightSpec.from_json(w) for w in meta["weights"]]
    rng = np.random.default_rng(0)
    updates = [[rng.normal(0, 0.01, s.shape).astype(np.float32) for s in specs]
               for _ in range(a.clients)]
    m, source = a.clients, NoiseSource()
    makers = {
        "plain: clip 4, weighted mean": lambda: mean_factory(specs, 4.0),
        "DP-FedAvg fixed clip": lambda: GaussianMean(ClippedSum(specs, 1.0, m), 1.0, source),
        "DP-FedAvg adaptive": lambda: GaussianMean(
            ClippedSum(specs, 1.0, m), 1.0, source, AdaptiveClip(1.0, 1.0, m)),
    }
    out = {"params": meta["num_params"], "clients": m}
    for name, make in makers.items():
        out[name] = round(statistics.median(cpu(lambda mk=make: one_round(mk, updates))
                                            for _ in range(5)), 4)
    ev = RoundEvent("fixed", 1.0, 1.0, population=1277, clients_per_round=m)
    ledger = EpsilonLedger()
    per = [cpu(lambda k=k: ledger.spent([ev] * k, 1e-5)) for k in range(1, a.rounds + 1)]
    out["ledger first commit s"] = round(per[0], 3)
    out["ledger later commits s (median)"] = round(statistics.median(per[1:]), 5)
    out["accounting.epsilon from scratch s"] = round(cpu(lambda: epsilon([ev] * a.rounds,
                                                                          1e-5)), 3)
    out[f"epsilon after {a.rounds} rounds"] = round(ledger.spent([ev] * a.rounds,
                                                                 1e-5).epsilon, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
