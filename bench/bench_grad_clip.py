"""Do FedAvg runs at client lr 1.0 diverge, with and without on-device gradient clipping?

    uv run --frozen --no-sync python bench/bench_grad_clip.py --data DIR [--model DIR]
        [--seeds 0-19] [--rounds 4] [--clients-per-round 20] [--lr 1.0]
        [--grad-clip 0,5] [--json OUT]

For each seed and each ``--grad-clip`` bound (0: none), trains the first ``--rounds``
rounds of the 20x20 run's plain FedAvg (server lr 1, example-weighted mean, the TFF
engine's client sampling :func:`fedkb.simulation.schedule.federated_rounds`) with LiteRT
clients and a NumPy mean: the fleet's and TFF's math without a server (the fleet's
divergences were the clients', bench/README.md, issue 15's session). Each client's
steps go through the artifact's ``train`` signature with that ``grad_clip``.

With ``--stress K``, after every round the K users with the longest shards also train
from the current model (not aggregated): "a long shard at lr 1.0 explodes early in
training" (the fleet's divergences, bench/README.md), tried on every seed's early models.

A run *diverged* when a client's update is not finite or longer than ``--bound`` (the
server's refusal, ``round.max_update_norm``-like), or a round's mean training loss is
over 20 (ln V = 9.2 at the start). Reports per bound: diverged runs, the step
gradient-norm quantiles (before clipping), the share of clipped steps and the final
training loss.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def parse_seeds(text: str) -> list[int]:
    if "-" in text and "," not in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def update_norm(delta) -> float:
    return math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in delta))


def stress(trainer, ds, w, users, lr: float, clip: float, bound: float) -> list[dict]:
    """The users that blow up when each trains alone from ``w``."""
    out = []
    for user in users:
        res = trainer.train(w, ds.shard(user).train, epochs=1, lr=lr, seed=0,
                            grad_clip=clip or None)
        n = update_norm(res.delta)
        if not (math.isfinite(n) and n <= bound):
            out.append({"user": user, "update_norm": n, "max_grad_norm": res.max_grad_norm})
    return out


def one_run(trainer, ds, schedule, lr: float, clip: float, bound: float,
            stress_users: list[str]) -> dict:
    """FedAvg over ``schedule``; stops at the first sign of divergence."""
    w = trainer.artifact.initial_weights()
    norms: list[float] = []
    clipped = steps = 0
    losses: list[float] = []
    blown: list[dict] = []
    for r, clients in enumerate(schedule, 1):
        total, acc, loss_sum = 0, None, 0.0
        for user, seed in clients:
            res = trainer.train(w, ds.shard(user).train, epochs=1, lr=lr, seed=seed,
                                grad_clip=clip or None,
                                should_stop=lambda s: norms.append(s.grad_norm) or False)
            clipped += res.clipped_steps
            steps += res.steps
            dnorm = update_norm(res.delta)
            if not math.isfinite(dnorm) or dnorm > bound:
                return {"diverged": True, "round": r, "why": f"update norm {dnorm:.3g}",
                        "user": user, "norms": norms, "clipped": clipped, "steps": steps,
                        "losses": losses, "stress_blown": blown}
            n = res.num_examples
            total += n
            loss_sum += res.mean_loss * n
            acc = [d * n for d in res.delta] if acc is None else \
                [a + d * n for a, d in zip(acc, res.delta, strict=True)]
        w = [a + s / total for a, s in zip(w, acc, strict=True)]
        losses.append(loss_sum / total)
        if not losses[-1] <= 20:
            return {"diverged": True, "round": r, "why": f"train loss {losses[-1]:.3g}",
                    "norms": norms, "clipped": clipped, "steps": steps, "losses": losses,
                    "stress_blown": blown}
        blown += [{**b, "round": r} for b in stress(trainer, ds, w, stress_users, lr, clip,
                                                     bound)]
    return {"diverged": False, "round": len(schedule), "norms": norms, "clipped": clipped,
            "steps": steps, "losses": losses, "stress_blown": blown}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="default: DATA/models/small")
    p.add_argument("--seeds", default="0-19")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--clients-per-round", type=int, default=20)
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--grad-clip", default="0,5", help="bounds to compare; 0: no clipping")
    p.add_argument("--bound", type=float, default=1000.0,
                   help="an update longer than this counts as diverged")
    p.add_argument("--stress", type=int, default=0, metavar="K",
                   help="after each round, also train the K longest shards alone")
    p.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    args = p.parse_args()

    from fedkb.datasets.store import Dataset
    from fedkb.device_runtime.trainer import Trainer
    from fedkb.simulation.schedule import federated_rounds

    ds = Dataset.open(args.data)
    trainer = Trainer(args.model or args.data / "models" / "small", num_threads=1)
    clips = [float(c) for c in args.grad_clip.split(",")]
    runs: dict[str, list[dict]] = {str(c): [] for c in clips}
    longest = sorted(ds.train_users, key=lambda u: -len(ds.shard(u).train))[: args.stress]
    for seed in parse_seeds(args.seeds):
        schedule = federated_rounds(ds.train_users, args.rounds, args.clients_per_round, seed)
        for c in clips:
            res = one_run(trainer, ds, schedule, args.lr, c, args.bound, longest)
            res["seed"] = seed
            runs[str(c)].append(res)
            tail = f"diverged at round {res['round']} ({res['why']})" if res["diverged"] \
                else f"train loss {res['losses'][-1]:.3f}"
            blown = ", ".join(f"{b['user']} at round {b['round']} ({b['update_norm']:.3g})"
                              for b in res["stress_blown"])
            print(f"seed {seed} grad_clip {c:g}: {tail}, {res['clipped']}/{res['steps']} "
                  f"steps clipped" + (f"; long shards blown up: {blown}" if blown else ""),
                  flush=True)
    print("\n| grad_clip | diverged | runs where a long shard blew up (client trainings) "
          "| step grad norm p50 / p90 / p99 / max | clipped steps "
          "| mean final train loss (converged runs) |\n|---|---|---|---|---|---|")
    for c in clips:
        rs = runs[str(c)]
        norms = np.array([n for r in rs for n in r["norms"] if math.isfinite(n)])
        q = np.quantile(norms, [0.5, 0.9, 0.99]) if len(norms) else [math.nan] * 3
        ok = [r["losses"][-1] for r in rs if not r["diverged"]]
        steps = sum(r["steps"] for r in rs)
        tries = sum(r["round"] for r in rs) * len(longest)
        print(f"| {c:g} | {sum(r['diverged'] for r in rs)}/{len(rs)} | "
              f"{sum(bool(r['stress_blown']) for r in rs)}/{len(rs)} "
              f"({sum(len(r['stress_blown']) for r in rs)}/{tries}) | "
              f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f} / {norms.max() if len(norms) else 0:.3g} "
              f"| {sum(r['clipped'] for r in rs)}/{steps} | "
              f"{np.mean(ok) if ok else math.nan:.3f} |")
    if args.json is not None:
        for rs in runs.values():
            for r in rs:
                r["norms"] = [round(n, 4) for n in r["norms"]]
        args.json.write_text(json.dumps(runs), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
