"""Federated recipes in one process: which client lr / server optimizer learns fastest.

    uv run python bench/bench_recipe.py --data DIR --model ARTIFACT [--rounds 160]
        [--clients-per-round 20] [--lr 1.0] [--strategy fedavgm] [--server-lr 0.7]
        [--clip-norm 4] [--epochs 1] [--max-steps 50] [--eval-every 40]

FedAvg without the server and the fleet: each round draws clients uniformly (seeded),
trains each with the LiteRT trainer the phones use, weights deltas by examples, clips
them if asked (the server's aggregator) and applies the server's own strategy objects.
No devices, HTTP or availability, so it isolates the optimisation recipe; one process on
one core. Every ``--eval-every`` rounds it prints held-out top-1/top-3 on the first 200
batches of held-out windows (all of them at the last round), the steps so far and the
client delta norms (p50/p90/p99/max), which is how the demo's recipe was chosen.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fedkb.datasets.store import Dataset, clip_to_vocab
from fedkb.device_runtime.trainer import Trainer
from fedkb.server.aggregate import mean_factory
from fedkb.server.config import StrategyConfig
from fedkb.server.strategy import make_strategy
from fedkb.simulation.schedule import federated_rounds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="an exported artifact")
    p.add_argument("--rounds", type=int, default=160)
    p.add_argument("--clients-per-round", type=int, default=20)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--strategy", default="fedavgm", choices=("fedavg", "fedavgm", "fedadam"))
    p.add_argument("--server-lr", type=float, default=0.7)
    p.add_argument("--momentum", type=float, default=0.9, help="fedavgm")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="fedavgm: Nesterov momentum (TFF's build_sgdm has none)")
    p.add_argument("--clip-norm", type=float, default=None)
    p.add_argument("--decay-rounds", type=int, default=0,
                   help="cosine decay of the server lr to a tenth over this many rounds")
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine-sampling", action="store_true",
                   help="draw clients as the federated engines do "
                        "(fedkb.simulation.schedule), so a seed here trains the clients "
                        "`fedkb simulate --engine tff` trains")
    a = p.parse_args()

    ds = Dataset.open(a.data)
    tr = Trainer(a.model)
    weights = tr.artifact.initial_weights()
    specs = tr.artifact.specs
    strategy = make_strategy(StrategyConfig(name=a.strategy, server_lr=a.server_lr,
                                            momentum=a.momentum, nesterov=a.nesterov,
                                            clip_norm=a.clip_norm,
                                            decay_rounds=a.decay_rounds))
    users = ds.train_users
    heldout = clip_to_vocab(ds.all_windows("heldout", "eval"), tr.V)
    rng = np.random.default_rng(a.seed)
    engine_rounds = (federated_rounds(users, a.rounds, a.clients_per_round, a.seed)
                     if a.engine_sampling else None)
    t0, steps, norms = time.perf_counter(), 0, []
    for r in range(1, a.rounds + 1):
        agg = mean_factory(specs, a.clip_norm)
        clients = engine_rounds[r - 1] if engine_rounds else [
            (users[i], int(rng.integers(2**31)))
            for i in rng.choice(len(users), a.clients_per_round, replace=False)]
        for user, batch_seed in clients:
            shard = clip_to_vocab(ds.shard(user).train, tr.V)
            res = tr.train(weights, shard, epochs=a.epochs, max_steps=a.max_steps, lr=a.lr,
                           seed=batch_seed)
            steps += res.steps
            norms.append(float(np.sqrt(sum(float(np.square(d, dtype=np.float64).sum())
                                           for d in res.delta))))
            agg.accumulate(res.delta, float(res.num_examples))
        weights = strategy.aggregate(weights, agg.result(), version=r)
        if r % a.eval_every == 0 or r == a.rounds:
            ev = tr.evaluate(weights, heldout if r == a.rounds else heldout[: 16 * 200])
            print(json.dumps({"round": r, "steps": steps,
                              "wall_s": round(time.perf_counter() - t0, 1),
                              "top1": round(ev.top1_recall * 100, 2),
                              "top3": round(ev.top3_recall * 100, 2),
                              "loss": round(ev.mean_loss, 3),
                              "delta_norm_p50_p90_p99_max": [
                                  *np.percentile(norms, [50, 90, 99]).round(2).tolist(),
                                  round(max(norms), 2)],
                              "all_heldout": r == a.rounds}), flush=True)
            norms.clear()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
