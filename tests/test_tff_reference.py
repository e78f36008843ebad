"""TensorFlow Federated's FedAvg, run isolated, agrees with LiteRT clients + a weighted mean.

This checks the TFF harness itself (same model, batches, loss, optimizers) and that its
``worker_binary`` is reaped; the full-stack fidelity test (real server + devices) builds
on it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import _suspects

from fedkb.codec import decode_arrays, encode_arrays
from fedkb.datasets.store import Dataset
from fedkb.device_runtime.batching import batch_plan
from fedkb.keyboard import FIGURES

pytestmark = pytest.mark.slow


def test_batch_plan_is_seeded_and_covers_each_epoch():
    plan = batch_plan(10, 4, epochs=2, seed=3)
    assert [e for e, _ in plan] == [0, 0, 0, 1, 1, 1]
    assert sorted(np.concatenate([i for e, i in plan if e == 0]).tolist()) == list(range(10))
    again = batch_plan(10, 4, epochs=2, seed=3)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plan, again, strict=True))
    assert len(batch_plan(10, 4, epochs=2, max_steps=4, seed=3)) == 4


@pytest.mark.parametrize("clip_share", [None, 0.5])
def test_tff_round_matches_litert_clients_and_weighted_mean(clip_share, tiny_data, tiny_artifact,
                                                            tmp_path):
    """Exact to 1e-5, also when the phones clip each step's gradient (to half the
    largest step norm of the first client: some steps of every kind)."""
    from fedkb.device_runtime.trainer import Trainer
    from fedkb.simulation.tff_engine import run_tff_isolated

    ds = Dataset.open(tiny_data)
    meta = json.loads((tiny_artifact / "metadata.json").read_text())
    trainer = Trainer(tiny_artifact)
    w0 = trainer.artifact.initial_weights()
    clients = [[u, 11 + i] for i, u in enumerate(ds.train_users[:4])]
    lr = 0.3
    grad_clip = None
    if clip_share is not None:
        free = trainer.train(w0, ds.shard(clients[0][0]).train, epochs=1, lr=lr,
                             seed=clients[0][1])
        grad_clip = clip_share * free.max_grad_norm

    # our side: LiteRT training per client, then the example-weighted mean of the deltas
    deltas, weights, clipped = [], [], 0
    for user, seed in clients:
        res = trainer.train(w0, ds.shard(user).train, epochs=1, lr=lr, seed=seed,
                            grad_clip=grad_clip)
        deltas.append(res.delta)
        weights.append(res.num_examples)
        clipped += res.clipped_steps
    assert (clipped > 0) == (grad_clip is not None)
    wsum = float(sum(weights))
    ours = [w + sum(d[i] * (n / wsum) for d, n in zip(deltas, weights, strict=True))
            for i, w in enumerate(w0)]

    (tmp_path / "w0.bin").write_bytes(encode_arrays(w0))
    before = set(_suspects())
    out = run_tff_isolated({
        "data": str(tiny_data), "model": meta["config"], "weights": str(tmp_path / "w0.bin"),
        "rounds": [clients], "epochs": 1, "max_steps": None, "client_lr": lr,
        "server_lr": 1.0, "client_grad_clip": grad_clip,
        "weights_out": str(tmp_path / "w1.bin")}, tmp_path / "tff")
    assert not [c for p, c in _suspects().items() if p not in before and "worker_binary" in c]
    theirs = decode_arrays((tmp_path / "w1.bin").read_bytes())
    assert out["rounds"][0]["clients"] == 4
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs, strict=True))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, w0, strict=True))
    assert moved > 1e-3  # the round really changed the model
    assert worst < 1e-5, worst


def test_simulate_tff_cli_reports_the_shared_schema(capsys, tiny_data):
    from fedkb.cli import main

    assert main(["simulate", "--engine", "tff", "--data", str(tiny_data), "--preset", "tiny",
                 "--rounds", "2", "--clients-per-round", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["engine"] == "tff" and [r["round"] for r in rep["rounds"]] == [1, 2]
    assert all(r["clients"] == 3 and r["train_loss"] > 0 for r in rep["rounds"])
    assert set(rep["heldout"]) == {"users", "iv_targets", "top1_recall", "top3_recall", "loss",
                                   *FIGURES}


@pytest.mark.parametrize("name", ["fedavgm", "fedadam"])
def test_tff_runs_the_servers_strategy_clipping_and_decay(name, tiny_data, tiny_artifact,
                                                          tmp_path):
    """`--engine tff --strategy/--clip-norm/--lr-decay` is the fleet server's recipe:
    three rounds of TFF against LiteRT clients fed to the server's own aggregator
    (clipping) and strategy object (Nesterov momentum / Reddi's FedAdam, decayed lr)."""
    from fedkb.device_runtime.trainer import Trainer
    from fedkb.server.aggregate import mean_factory
    from fedkb.server.config import StrategyConfig
    from fedkb.server.strategy import make_strategy
    from fedkb.simulation.engines import tff_strategy
    from fedkb.simulation.tff_engine import run_tff_isolated

    ds = Dataset.open(tiny_data)
    meta = json.loads((tiny_artifact / "metadata.json").read_text())
    trainer = Trainer(tiny_artifact)
    w0 = trainer.artifact.initial_weights()
    rounds = [[[u, 7 * r + i] for i, u in enumerate(ds.train_users[r:r + 3])] for r in range(3)]
    lr, server_lr, clip = 0.3, (0.5 if name == "fedavgm" else 0.02), 0.05
    spec = tff_strategy(StrategyConfig(name=name, server_lr=server_lr, clip_norm=clip,
                                       decay_rounds=len(rounds)), len(rounds))
    assert spec["lrs"][0] == server_lr and spec["lrs"][-1] == pytest.approx(server_lr / 10)

    strategy = make_strategy(StrategyConfig(name=name, server_lr=server_lr, clip_norm=clip,
                                            decay_rounds=len(rounds)))
    specs = trainer.artifact.specs
    ours, clipped = w0, 0
    for version, clients in enumerate(rounds, 1):
        agg = mean_factory(specs, clip)
        for user, seed in clients:
            res = trainer.train(ours, ds.shard(user).train, epochs=1, lr=lr, seed=seed)
            agg.accumulate(res.delta, float(res.num_examples))
        result = agg.result()
        clipped += result.measurements["clipped"]
        ours = strategy.aggregate(ours, result, version)
    assert clipped > 0  # the clip norm binds, so clipping is really compared

    (tmp_path / "w0.bin").write_bytes(encode_arrays(w0))
    run_tff_isolated({
        "data": str(tiny_data), "model": meta["config"], "weights": str(tmp_path / "w0.bin"),
        "rounds": rounds, "epochs": 1, "max_steps": None, "client_lr": lr,
        "server_lr": server_lr, "strategy": spec,
        "weights_out": str(tmp_path / "w3.bin")}, tmp_path / "tff")
    theirs = decode_arrays((tmp_path / "w3.bin").read_bytes())
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, w0, strict=True))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs, strict=True))
    assert moved > 1e-3
    assert worst < 1e-5, worst
