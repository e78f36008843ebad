"""TensorFlow Federated's FedAvg, run isolated, agrees with LiteRT clients + a weighted mean.

This checks the TFF harness itself (same model, batches, loss, optimizers) and that its
``worker_binary`` is reaped; the full-stack fidelity test (real server + devices) builds
on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import _suspects

from fedkb.codec import decode_arrays, encode_arrays
from fedkb.datasets.store import Dataset
from fedkb.device_runtime.batching import batch_plan

pytestmark = pytest.mark.slow


def test_batch_plan_is_seeded_and_covers_each_epoch():
    plan = batch_plan(10, 4, epochs=2, seed=3)
    assert [e for e, _ in plan] == [0, 0, 0, 1, 1, 1]
    assert sorted(np.concatenate([i for e, i in plan if e == 0]).tolist()) == list(range(10))
    again = batch_plan(10, 4, epochs=2, seed=3)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plan, again, strict=True))
    assert len(batch_plan(10, 4, epochs=2, max_steps=4, seed=3)) == 4


def _clip_case(clip_share, ds, trainer, meta, w0_path, out: Path):
    """Four clients' LiteRT training and their example-weighted mean (``ours``), and the
    TFF spec of the same round; with ``clip_share`` the phones clip each step's gradient
    to that share of the first client's largest step norm (some steps of every kind)."""
    w0 = trainer.artifact.initial_weights()
    clients = [[u, 11 + i] for i, u in enumerate(ds.train_users[:4])]
    lr = 0.3
    grad_clip = None
    if clip_share is not None:
        free = trainer.train(w0, ds.shard(clients[0][0]).train, epochs=1, lr=lr,
                             seed=clients[0][1])
        grad_clip = clip_share * free.max_grad_norm
    deltas, weights, clipped = [], [], 0
    for user, seed in clients:
        res = trainer.train(w0, ds.shard(user).train, epochs=1, lr=lr, seed=seed,
                            grad_clip=grad_clip)
        deltas.append(res.delta)
        weights.append(res.num_examples)
        clipped += res.clipped_steps
    wsum = float(sum(weights))
    ours = [w + sum(d[i] * (n / wsum) for d, n in zip(deltas, weights, strict=True))
            for i, w in enumerate(w0)]
    spec = {"data": str(ds.path), "model": meta["config"], "weights": str(w0_path),
            "rounds": [clients], "epochs": 1, "max_steps": None, "client_lr": lr,
            "server_lr": 1.0, "client_grad_clip": grad_clip, "weights_out": str(out)}
    return {"spec": spec, "ours": ours, "w0": w0, "clipped": clipped,
            "grad_clip": grad_clip}


def _strategy_case(name, ds, trainer, meta, w0_path, out: Path):
    """Three rounds of LiteRT clients fed to the server's own aggregator (clipping) and
    strategy object (Nesterov momentum / Reddi's FedAdam, decayed lr), and the TFF spec
    of the same recipe (`--engine tff --strategy/--clip-norm/--lr-decay`)."""
    from fedkb.server.aggregate import mean_factory
    from fedkb.server.config import StrategyConfig
    from fedkb.server.strategy import make_strategy
    from fedkb.simulation.engines import tff_strategy

    w0 = trainer.artifact.initial_weights()
    rounds = [[[u, 7 * r + i] for i, u in enumerate(ds.train_users[r:r + 3])] for r in range(3)]
    lr, server_lr, clip = 0.3, (0.5 if name == "fedavgm" else 0.02), 0.05
    spec = tff_strategy(StrategyConfig(name=name, server_lr=server_lr, clip_norm=clip,
                                       decay_rounds=len(rounds)), len(rounds))
    assert spec["lrs"][0] == server_lr and spec["lrs"][-1] == pytest.approx(server_lr / 10)
    strategy = make_strategy(StrategyConfig(name=name, server_lr=server_lr, clip_norm=clip,
                                            decay_rounds=len(rounds)))
    ours, clipped = w0, 0
    for version, clients in enumerate(rounds, 1):
        agg = mean_factory(trainer.artifact.specs, clip)
        for user, seed in clients:
            res = trainer.train(ours, ds.shard(user).train, epochs=1, lr=lr, seed=seed)
            agg.accumulate(res.delta, float(res.num_examples))
        result = agg.result()
        clipped += result.measurements["clipped"]
        ours = strategy.aggregate(ours, result, version)
    tff_spec = {"data": str(ds.path), "model": meta["config"], "weights": str(w0_path),
                "rounds": rounds, "epochs": 1, "max_steps": None, "client_lr": lr,
                "server_lr": server_lr, "strategy": spec, "weights_out": str(out)}
    return {"spec": tff_spec, "ours": ours, "w0": w0, "clipped": clipped}


@pytest.fixture(scope="module")
def tff_cases(tiny_data, tiny_artifact, tmp_path_factory):
    """Every case of this module's TFF comparisons, run by one TFF child process (its
    imports cost ~15 s a process); each case's ``theirs`` is TFF's final weights."""
    from fedkb.device_runtime.trainer import Trainer
    from fedkb.simulation.tff_engine import run_tff_isolated

    tmp = tmp_path_factory.mktemp("tff_cases")
    ds = Dataset.open(tiny_data)
    meta = json.loads((tiny_artifact / "metadata.json").read_text())
    trainer = Trainer(tiny_artifact)
    w0_path = tmp / "w0.bin"
    w0_path.write_bytes(encode_arrays(trainer.artifact.initial_weights()))
    cases = {("clip", share): _clip_case(share, ds, trainer, meta, w0_path,
                                         tmp / f"clip-{share}.bin") for share in (None, 0.5)}
    cases |= {("strategy", name): _strategy_case(name, ds, trainer, meta, w0_path,
                                                 tmp / f"{name}.bin")
              for name in ("fedavgm", "fedadam")}
    before = set(_suspects())
    outs = run_tff_isolated([c["spec"] for c in cases.values()], tmp / "tff")
    leftover = [c for p, c in _suspects().items() if p not in before and "worker_binary" in c]
    for case, out in zip(cases.values(), outs, strict=True):
        case["out"] = out
        case["theirs"] = decode_arrays(Path(out["weights_out"]).read_bytes())
    return cases, leftover


def _gap(a: list, b: list) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def test_the_tff_child_leaves_no_worker_binary(tff_cases):
    assert not tff_cases[1]


@pytest.mark.parametrize("clip_share", [None, 0.5])
def test_tff_round_matches_litert_clients_and_weighted_mean(clip_share, tff_cases):
    """Exact to 1e-5, also when the phones clip each step's gradient."""
    case = tff_cases[0][("clip", clip_share)]
    assert (case["clipped"] > 0) == (case["grad_clip"] is not None)
    assert case["out"]["rounds"][0]["clients"] == 4
    assert _gap(case["ours"], case["w0"]) > 1e-3  # the round really changed the model
    worst = _gap(case["ours"], case["theirs"])
    assert worst < 1e-5, worst


@pytest.mark.parametrize("name", ["fedavgm", "fedadam"])
def test_tff_runs_the_servers_strategy_clipping_and_decay(name, tff_cases):
    """`--engine tff --strategy/--clip-norm/--lr-decay` is the fleet server's recipe:
    three rounds of TFF equal the server's own aggregator and strategy to 1e-5."""
    case = tff_cases[0][("strategy", name)]
    assert case["clipped"] > 0  # the clip norm binds, so clipping is really compared
    assert _gap(case["ours"], case["w0"]) > 1e-3
    worst = _gap(case["ours"], case["theirs"])
    assert worst < 1e-5, worst
