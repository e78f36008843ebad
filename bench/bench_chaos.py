"""How reproducible is a 20-round FedAvg run? Same clients, two summation orders.

    uv run python bench/bench_chaos.py --data DIR [--model DIR] [--lr 1.0]
        [--schedule REPORT.json | --rounds 20 --clients-per-round 20 --seed 0]

Trains one FedAvg trajectory with LiteRT clients and a NumPy example-weighted mean (no
server, no TensorFlow), twice: once summing each round's client deltas in the listed
order and once in reverse. Mathematically the two are the same run; in float32 they
differ by ~1e-8 after the first round. The per-round max |difference| of the weights and
the held-out recall of both final models show how far that rounding grows, i.e. how
closely any two engines (ours and TFF) can be expected to agree on a single run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def trajectory(trainer, ds, schedule: list[list[list]], lr: float, reverse: bool
               ) -> list[list[np.ndarray]]:
    w = trainer.artifact.initial_weights()
    out = []
    for clients in schedule:
        deltas, counts = [], []
        for user, seed in (clients[::-1] if reverse else clients):
            res = trainer.train(w, ds.shard(user).train, epochs=1, lr=lr, seed=seed)
            deltas.append(res.delta)
            counts.append(res.num_examples)
        total = float(sum(counts))
        w = [a + sum(d[i] * (n / total) for d, n in zip(deltas, counts, strict=True))
             for i, a in enumerate(w)]
        out.append(w)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="default: DATA/models/small")
    p.add_argument("--lr", type=float, default=1.0, help="client SGD learning rate")
    p.add_argument("--schedule", type=Path, default=None,
                   help="a federated report (--json) whose rounds list participants")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients-per-round", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from fedkb.datasets.store import Dataset
    from fedkb.device_runtime.trainer import Trainer
    from fedkb.simulation.fleet_engine import heldout_eval
    from fedkb.simulation.schedule import federated_rounds

    ds = Dataset.open(args.data)
    model = args.model or args.data / "models" / "small"
    trainer = Trainer(model)
    if args.schedule is not None:
        rows = json.loads(args.schedule.read_text(encoding="utf-8"))["rounds"]
        schedule = [r["participants"] for r in rows]
    else:
        schedule = federated_rounds(ds.train_users, args.rounds, args.clients_per_round,
                                    args.seed)
    a = trajectory(trainer, ds, schedule, args.lr, reverse=False)
    b = trajectory(trainer, ds, schedule, args.lr, reverse=True)
    print("| round | max abs weight difference |\n|---|---|")
    for r, (x, y) in enumerate(zip(a, b, strict=True), 1):
        gap = max(float(np.abs(u - v).max()) for u, v in zip(x, y, strict=True))
        print(f"| {r} | {gap:.2e} |")
    for label, w in (("listed order", a[-1]), ("reversed order", b[-1])):
        counts, loss = heldout_eval(model, w, ds)
        print(f"{label}: top-1 {counts.top1_recall:.2%}, top-3 {counts.top3_recall:.2%}, "
              f"loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
