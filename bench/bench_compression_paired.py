"""What an uplink encoding costs in held-out recall, paired: the same clients, the same
batches, only the encoding differs.

    uv run --frozen --no-sync python bench/bench_compression_paired.py --data DIR \
        [--model DIR] [--seeds 0-4] [--rounds 20] [--clients-per-round 20] \
        [--encodings float32,q4:5000,q8] [--jsonl OUT]

Fleet runs of one seed are paired only loosely (a run's timing decides who reports), so
their seed-to-seed spread (~4 top-1 points at 20x20) hides any 0.3-point effect. Here each
seed fixes the client sampling and every client's batch seed (TFF's engine sampling,
:func:`fedkb.simulation.schedule.federated_rounds`), and every encoding trains the same
schedule with the fleet's math and no server: LiteRT clients (the artifact's ``train``
signature, the plan's lr / max steps / gradient clip), each delta through the phone's
encoder and the server's decoder (:func:`fedkb.plan_codec.encode_delta` /
``decode_delta``, stochastic rounding seeded by the task's batch seed as on a phone),
the server's aggregator and optimizer (:func:`fedkb.server.strategy.make_strategy`: the
brief's fedavgm 0.7, clip 4, example-weighted mean), then the fleet engine's LiteRT
held-out evaluation. The per-seed difference to float32 is the encoding's cost.

An encoding is ``NAME[+rotate][:MIN_ELEMENTS][/f16]`` (``q4:5000``: 4 bits, tensors of
5,000 values or more quantized; ``/f16``: the global weights broadcast as float16, as
``--downlink float16`` does: the phone trains from them widened to float32;
``~uniform`` after it: every client weighs 1, as ``--weighting uniform``). One JSON
line per (seed, encoding) run; a table at the end.

``sec[:CAP][@SIGMAS]`` is a secure round's q8 codec without the masks (they cancel
exactly in the sum, which the secagg tests pin): each phone clips its delta to the clip
norm, scales it by :func:`fedkb.secagg.update_codec.example_weight` and encodes it on the
round's shared, rotated grid (:func:`~fedkb.secagg.update_codec.encode_codes`, rounding
seeded as a phone seeds it); the server sums the codes in Z_{2^k}, decodes the sum
(:func:`~fedkb.secagg.update_codec.decode_sum`) and divides by the weights' total, as
:class:`fedkb.server.secure_round.SecureRound` does. CAP is the example cap ŵ: ``mean``
(the last round's mean examples per report; weight 1 in the first round), ``max`` /
``p90`` / ``Xp90`` (the last round's largest / 90th-percentile / X times its
90th-percentile claim; weight 1 in the first round),
``budget`` (batch x steps: exact FedAvg weights, given ``--max-steps``), ``uniform``
(weight 1) or a count; SIGMAS the grid's radius in standard deviations (default 4).

``cdp:Z[:K]`` and ``ddp:Z[:K]`` are DP-FedAvg on that secure codec at the clip norm, every
client weight 1, the mean over the report goal (here the cohort): ``cdp`` adds the
server's central Gaussian noise ``z·Δ`` to the decoded sum, ``ddp`` has every client add
its discrete Gaussian share to its codes (:mod:`fedkb.secagg.distributed_dp`, each
owing ``1/n`` of the variance: no dropouts here), as ``--dp-distributed`` does. With K
the noise is that of K clients a round (``--dp-noise-cohort K``: actual multiplier
``z·m/K``). The noise draws are not paired (each run draws its own).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np


def parse_seeds(text: str) -> list[int]:
    if "-" in text and "," not in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def parse_encoding(text: str) -> dict:
    if text.startswith(("cdp:", "ddp:")):
        mode, _, rest = text.partition(":")
        z, _, k = rest.partition(":")
        return {"label": text, "secure": True, "cap": "uniform", "sigmas": None,
                "downlink": "float32", "dp": mode, "z": float(z),
                "noise_cohort": int(k) if k else None}
    if text == "sec" or text.startswith(("sec:", "sec@")):
        spec, _, sig = text.partition("@")
        cap = spec.partition(":")[2] or "mean"
        if cap not in ("mean", "max", "p90", "budget", "uniform") and not cap.isdigit() \
                and not (cap.endswith("p90") and cap[:-3].isdigit()):
            raise SystemExit(f"a secure cap is mean, max, p90, budget, uniform or a count, "
                             f"not {cap}")
        return {"label": text, "secure": True, "cap": cap,
                "sigmas": float(sig) if sig else None, "downlink": "float32"}
    text_w, _, weighting = text.partition("~")
    if weighting not in ("", "uniform"):
        raise SystemExit(f"a weighting is ~uniform or nothing, not ~{weighting}")
    spec, _, down = text_w.partition("/")
    name, _, minimum = spec.partition(":")
    base, _, rot = name.partition("+")
    if down not in ("", "f16"):
        raise SystemExit(f"a downlink is /f16 or nothing, not /{down}")
    return {"label": text, "uplink": base, "rotate": rot == "rotate",
            "min_elements": int(minimum) if minimum else 20_000,
            "downlink": "float16" if down == "f16" else "float32",
            "weighting": weighting or "examples"}


def secure_round(trainer, w, clients, ds, strategy, agg, cap: int, sigmas: float | None,
                 rotation_seed: int, args, clipped: list[int],
                 norms: list[float], examples_seen: list[int],
                 dp: tuple[str, float] | None = None) -> tuple[float, int]:
    """One round's secure codec: every client's codes summed in Z_{2^k}, the decoded sum
    over the weights' total accumulated once (as SecureRound._fold_sum does). Returns the
    round's mean examples per report and one update's code bytes; appends each client's
    grid-clipped coordinates and delta norm to ``clipped`` and ``norms``."""
    from fedkb.plan_codec import ROUNDING_STREAM
    from fedkb.secagg import distributed_dp as ddp
    from fedkb.secagg.update_codec import (
        RANGE_SIGMAS,
        UpdateLayout,
        as_residues,
        decode_sum,
        encode_codes,
        example_weight,
    )

    layout = UpdateLayout(tuple(tuple(s.shape) for s in trainer.specs), 8, args.clip_norm,
                          rotation_seed, sigmas or RANGE_SIGMAS)
    if dp is not None and dp[0] == "ddp" and dp[1] > 0:  # each client's share of z·Δ
        layout = dataclasses.replace(layout, noise_std=dp[1] * layout.sensitivity
                                     / math.sqrt(len(clients)))
        layout = dataclasses.replace(layout, noise_scale=ddp.noise_scale(
            min(float(x.min()) for x in layout.lattice)))
    k = layout.modulus_bits(len(clients))
    total = np.zeros(layout.dim, np.uint64)
    examples, weights = [], []
    for user, seed in clients:
        plan = strategy.configure("train", trainer.artifact.batch_size)
        res = trainer.train(w, ds.shard(user).train, epochs=plan.epochs,
                            max_steps=plan.max_steps, lr=plan.lr, seed=int(seed),
                            grad_clip=plan.grad_clip or None)
        scale = example_weight(res.num_examples, cap) if cap else 1.0
        rng = np.random.default_rng([int(seed), ROUNDING_STREAM])
        enc = encode_codes(res.delta, layout, rng, scale)
        noise = layout.noise(ddp.noise_rng()) if layout.noise_std > 0 else None
        total = (total + as_residues(enc.codes, k, noise, layout.noise_scale).astype(
            np.uint64)) % np.uint64(2 ** k)
        clipped.append(enc.clipped_values)
        norms.append(enc.norm)
        examples.append(int(res.num_examples))
        weights.append(scale)
    examples_seen.extend(examples)
    s = decode_sum(total, len(clients), k, layout)
    if dp is not None and dp[0] == "cdp" and dp[1] > 0:  # the server's noise, z·Δ
        from fedkb.server.privacy.noise import add_gaussian
        s, _ = add_gaussian(s, dp[1] * layout.sensitivity)
    denom = np.float32(sum(weights))
    agg.accumulate([(a / denom).astype(np.float32) for a in s], float(max(sum(examples), 1)))
    return sum(examples) / len(examples), math.ceil(layout.dim * k / 8)


def one_secure_run(trainer, ds, artifact: Path, schedule, enc: dict, args) -> dict:
    from fedkb.server.config import ClientConfig, StrategyConfig
    from fedkb.server.strategy import make_strategy
    from fedkb.server.uploads import examples_budget
    from fedkb.simulation.fleet_engine import heldout_eval

    client = ClientConfig(lr=args.lr, max_steps=args.max_steps, grad_clip=args.grad_clip)
    strategy = make_strategy(StrategyConfig(name="fedavgm", server_lr=args.server_lr,
                                            clip_norm=args.clip_norm), client)
    budget = examples_budget(strategy.configure("train", trainer.artifact.batch_size))
    w = trainer.artifact.initial_weights()
    t0 = time.perf_counter()
    last_mean: float | None = None
    caps: list[int] = []
    clipped: list[int] = []
    norms: list[float] = []
    examples_seen: list[int] = []
    last_examples: list[int] = []
    nbytes = 0
    for version, clients in enumerate(schedule, 1):
        if enc["cap"] == "uniform":
            cap = 0
        elif enc["cap"] == "budget":
            cap = budget
        elif enc["cap"] == "mean":  # the server's rule until the fifteenth session
            cap = 0 if last_mean is None else max(1, min(budget, round(last_mean)))
        elif enc["cap"] in ("max", "p90") or enc["cap"].endswith("p90"):
            # the last round's largest / (X x its) 90th-percentile claim
            q = 100 if enc["cap"] == "max" else 90
            times = int(enc["cap"][:-3]) if enc["cap"][:-3].isdigit() else 1
            cap = 0 if not last_examples else max(1, min(budget, times * int(np.ceil(
                np.percentile(last_examples, q, method="higher")))))
        else:
            cap = int(enc["cap"])
        caps.append(cap)
        agg = strategy.aggregator(trainer.specs)
        n_before = len(examples_seen)
        dp = None
        if "dp" in enc:  # the actual multiplier: z, or z·m/K with a noise cohort
            m = len(clients)
            dp = (enc["dp"], enc["z"] * (m / enc["noise_cohort"] if enc["noise_cohort"]
                                         else 1.0))
        last_mean, nbytes = secure_round(trainer, w, clients, ds, strategy, agg, cap,
                                         enc["sigmas"], 1_000_003 * args.seed_base + version,
                                         args, clipped, norms, examples_seen, dp)
        last_examples = examples_seen[n_before:]
        w = strategy.aggregate(w, agg.result(), version)
    train_s = time.perf_counter() - t0
    counts, loss = heldout_eval(artifact, w, ds)
    return {"encoding": enc["label"], "top1": counts.top1_recall, "top3": counts.top3_recall,
            "heldout_loss": loss, "uplink_bytes_median": nbytes,
            "cap_median": int(statistics.median(caps)),
            "norm_median": round(statistics.median(norms), 3),
            "grid_clipped_per_update": round(statistics.mean(clipped), 1),
            "train_s": round(train_s, 1)}


def one_run(trainer, ds, artifact: Path, schedule, enc: dict, args) -> dict:
    if enc.get("secure"):
        return one_secure_run(trainer, ds, artifact, schedule, enc, args)
    from fedkb.plan_codec import decode_delta, encode_delta, float16_weights
    from fedkb.server.config import ClientConfig, StrategyConfig
    from fedkb.server.strategy import make_strategy
    from fedkb.simulation.fleet_engine import heldout_eval

    client = ClientConfig(lr=args.lr, max_steps=args.max_steps, grad_clip=args.grad_clip)
    strategy = make_strategy(StrategyConfig(name="fedavgm", server_lr=args.server_lr,
                                            clip_norm=args.clip_norm,
                                            weighting=enc["weighting"]), client)
    shapes = [s.shape for s in trainer.specs]
    w = trainer.artifact.initial_weights()
    t0 = time.perf_counter()
    up_bytes: list[int] = []
    for version, clients in enumerate(schedule, 1):
        agg = strategy.aggregator(trainer.specs)
        for user, seed in clients:
            plan = strategy.configure("train", trainer.artifact.batch_size)
            plan = dataclasses.replace(
                plan, seed=int(seed), uplink=enc["uplink"], rotate=enc["rotate"],
                rotation_seed=int(seed) if enc["rotate"] else None,
                min_elements=enc["min_elements"])
            # a float16 broadcast: the phone trains from the weights rounded to float16
            # (widened to float32); the server applies the mean delta to its exact model
            start = w if enc["downlink"] == "float32" else \
                [a.astype(np.float32) for a in float16_weights(w)]
            res = trainer.train(start, ds.shard(user).train, epochs=plan.epochs,
                                max_steps=plan.max_steps, lr=plan.lr, seed=plan.seed,
                                grad_clip=plan.grad_clip or None)
            body, _ = encode_delta(res.delta, plan)
            up_bytes.append(len(body))
            agg.accumulate(decode_delta(body, plan, shapes), float(res.num_examples))
        w = strategy.aggregate(w, agg.result(), version)
    train_s = time.perf_counter() - t0
    counts, loss = heldout_eval(artifact, w, ds)
    return {"encoding": enc["label"], "top1": counts.top1_recall, "top3": counts.top3_recall,
            "heldout_loss": loss, "uplink_bytes_median": int(statistics.median(up_bytes)),
            "train_s": round(train_s, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, default=None, help="default: DATA/models/small")
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients-per-round", type=int, default=20)
    p.add_argument("--encodings", default="float32,q4:5000,q8")
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--server-lr", type=float, default=0.7)
    p.add_argument("--clip-norm", type=float, default=4.0)
    p.add_argument("--jsonl", type=Path, default=None, help="append each run's line here")
    args = p.parse_args()

    from fedkb.datasets.store import Dataset
    from fedkb.device_runtime.trainer import Trainer
    from fedkb.simulation.schedule import federated_rounds

    ds = Dataset.open(args.data)
    artifact = args.model or args.data / "models" / "small"
    trainer = Trainer(artifact, num_threads=1)
    encodings = [parse_encoding(e) for e in args.encodings.split(",")]
    rows: list[dict] = []
    for seed in parse_seeds(args.seeds):
        schedule = federated_rounds(ds.train_users, args.rounds, args.clients_per_round, seed)
        args.seed_base = seed  # the secure codec's per-round rotation seeds
        for enc in encodings:
            row = {"seed": seed, **one_run(trainer, ds, artifact, schedule, enc, args)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.jsonl is not None:
                with args.jsonl.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
    base = encodings[0]["label"]
    by = {(r["seed"], r["encoding"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    print(f"\n| encoding | bytes/update | top-1 per seed | mean top-1 | "
          f"top-1 minus {base}, per seed | mean difference (± std error) | "
          f"top-3 minus {base}, per seed | mean top-3 difference |\n"
          "|---|---:|---|---:|---|---:|---|---:|")
    for enc in encodings:
        lab = enc["label"]
        top1 = [100 * by[s, lab]["top1"] for s in seeds]
        cells = []
        for key in ("top1", "top3"):
            diff = [100 * (by[s, lab][key] - by[s, base][key]) for s in seeds]
            se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
            cells.append(f"{', '.join(f'{d:+.2f}' for d in diff)} | "
                         f"{np.mean(diff):+.2f} ± {se:.2f}")
        print(f"| {lab} | {by[seeds[0], lab]['uplink_bytes_median']:,} | "
              f"{', '.join(f'{t:.2f}' for t in top1)} | {np.mean(top1):.2f} | "
              f"{cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
