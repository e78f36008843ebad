"""LiteRT agrees with Keras: training parity, the evaluate metric, infer (issue 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedkb.artifact import Artifact
from fedkb.datasets.store import Dataset, windows_to_xy
from fedkb.device_runtime.trainer import Trainer
from fedkb.metrics import recall_from_scores
from fedkb.model.config import ModelConfig


def test_check_parity_tiny_within_1e5(tiny_artifact, capsys):
    from fedkb.cli import main

    assert main(["model", "check", str(tiny_artifact), "--json", "--timing-steps", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    p = report["parity"]
    assert p["steps"] == 5
    assert p["max_abs_loss_diff"] < 1e-5
    assert p["max_abs_weight_diff"] < 1e-5
    assert set(p["weight_diffs"]) == {w["name"] for w in
                                      Artifact.load(tiny_artifact).meta["weights"]}
    assert p["lite_losses"][0] != p["lite_losses"][-1]  # the weights did move
    assert report["builtin_only"] and report["non_builtin_ops"] == []
    assert "ASSIGN_VARIABLE" in report["op_names"]
    assert report["num_params"] > 0 and report["file_bytes"]["model.tflite"] > 0
    t = report["timing"]
    assert t["lite_train_step_ms"] > 0 and t["keras_train_step_ms"] > 0


def test_check_parity_cifg_with_recurrent_projection(tiny_data, tmp_path):
    """The Gboard cell (CIFG + projection inside the recurrence), at tiny size."""
    from fedkb.model.check import check_artifact
    from fedkb.model.config import PRESETS
    from fedkb.model.export import export_from_dataset

    preset = PRESETS["tiny"].replace(cell="cifg", recurrent_projection=True)
    export_from_dataset(preset, tiny_data, tmp_path / "cifg")
    p = check_artifact(tmp_path / "cifg", timing_steps=1)["parity"]
    assert p["max_abs_loss_diff"] < 1e-5 and p["max_abs_weight_diff"] < 1e-5


def _keras_logits(art: Artifact, weights, x: np.ndarray) -> np.ndarray:
    from fedkb.model.keras_model import build_model

    model = build_model(ModelConfig.from_dict(art.meta["config"]), weights)
    return model(x).numpy()


def _trained_weights(trainer: Trainer, windows: np.ndarray):
    """Weights a few steps away from the init, so the metric is not trivially tied."""
    w0 = trainer.artifact.initial_weights()
    delta = trainer.train(w0, windows, epochs=3).delta
    return [a + d for a, d in zip(w0, delta, strict=True)]


def test_evaluate_agrees_with_numpy_metric(tiny_artifact, tiny_data):
    ds = Dataset.open(tiny_data)
    trainer = Trainer(tiny_artifact)
    V = trainer.V
    train = np.concatenate([ds.shard(u).train for u in ds.train_users])
    windows = np.concatenate([ds.shard(u).eval for u in ds.heldout_users] + [train[:7]])
    windows = np.where(windows >= V, 3, windows).astype(np.int32)
    weights = _trained_weights(trainer, train)
    res = trainer.evaluate(weights, windows)

    x, y, mask = windows_to_xy(windows)
    logits = _keras_logits(trainer.artifact, weights, x).astype(np.float64)
    flat_logits, flat_y = logits.reshape(-1, V), y.reshape(-1)
    ref = recall_from_scores(flat_logits[mask.reshape(-1) > 0], flat_y[mask.reshape(-1) > 0])
    assert (res.iv_count, res.top1_hits, res.top3_hits) == (
        ref.iv_count, ref.top1_hits, ref.top3_hits)
    assert res.count == int(mask.sum())
    assert res.iv_count == int(((y >= 4) & (mask > 0)).sum())
    logp = flat_logits - np.log(np.exp(flat_logits).sum(-1, keepdims=True))
    ce = -logp[np.arange(len(flat_y)), flat_y] * mask.reshape(-1)
    assert res.loss_sum == pytest.approx(ce.sum(), rel=1e-5)
    assert 0 < res.top1_hits <= res.top3_hits <= res.iv_count


def test_infer_matches_keras_and_never_suggests_special(tiny_artifact, tiny_data):
    trainer = Trainer(tiny_artifact)
    ds = Dataset.open(tiny_data)
    train = np.concatenate([ds.shard(u).train for u in ds.train_users])
    weights = _trained_weights(trainer, train)
    prefix = [1, 7, 5, 9]
    ids, probs = trainer.infer(prefix, weights)
    k = trainer.meta["infer_k"]
    assert ids.shape == probs.shape == (k,) and k >= 3
    assert (ids >= 4).all() and (np.diff(probs) <= 0).all()

    x = np.zeros((1, trainer.T), np.int32)
    x[0, : len(prefix)] = prefix
    last = _keras_logits(trainer.artifact, weights, x)[0, len(prefix) - 1].astype(np.float64)
    last[:4] = -np.inf
    p = np.exp(last - last.max())
    p /= p.sum()
    order = np.argsort(-p)[:k]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(probs, p[order], rtol=1e-4, atol=1e-6)
    # a prefix longer than T uses its last T tokens
    long_ids, _ = trainer.infer([1] * 30 + prefix[1:])
    short_ids, _ = trainer.infer(([1] * 30 + prefix[1:])[-trainer.T :])
    np.testing.assert_array_equal(long_ids, short_ids)
