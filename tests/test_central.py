"""Central training baseline: same model and metric, pooled training users."""

from __future__ import annotations

import json

import pytest

from fedkb.cli import main
from fedkb.keyboard import FIGURES

pytestmark = pytest.mark.slow


def test_simulate_central_learns_and_reports_the_shared_schema(capsys, tiny_data):
    args = ["simulate", "--engine", "central", "--data", str(tiny_data), "--preset", "tiny",
            "--batch-size", "8", "--json"]
    assert main([*args, "--max-steps", "1", "--lr", "0.0001"]) == 0
    untrained = json.loads(capsys.readouterr().out)
    assert main([*args, "--epochs", "30"]) == 0
    trained = json.loads(capsys.readouterr().out)
    for rep in (untrained, trained):
        assert rep["engine"] == "central" and rep["heldout"]["users"] == 2
        assert set(rep["heldout"]) == {"users", "iv_targets", "top1_recall", "top3_recall",
                                       "loss", *FIGURES}
    assert trained["heldout"]["loss"] < untrained["heldout"]["loss"] - 0.2
    assert trained["heldout"]["top3_recall"] >= untrained["heldout"]["top3_recall"]


def test_central_adam_is_keras_adam_on_the_same_loss(tiny_data):
    """`--central-optimizer adam`: a few steps equal Keras's Adam applied by hand."""
    import numpy as np
    import tensorflow as tf

    from fedkb.datasets.store import Dataset, clip_to_vocab, windows_to_xy
    from fedkb.model.central import CentralConfig, train_central
    from fedkb.model.config import get_preset
    from fedkb.model.keras_model import build_model
    from fedkb.model.objective import masked_mean_loss

    ds = Dataset.open(tiny_data)
    mcfg = get_preset("tiny").fit_to_data(len(ds.vocab), ds.seq_len)
    cfg = CentralConfig(batch_size=8, learning_rate=0.01, max_steps=3, optimizer="adam")
    res = train_central(ds, mcfg, cfg)

    model = build_model(mcfg, seed=mcfg.seed)
    variables = model.weights_in_order
    opt = tf.keras.optimizers.Adam(learning_rate=0.01)
    x, y, m = windows_to_xy(clip_to_vocab(ds.all_windows("train", "train"), mcfg.vocab_size))
    order = np.random.default_rng(cfg.seed).permutation(len(x))
    for s in range(3):
        idx = order[s * 8:(s + 1) * 8]
        with tf.GradientTape() as tape:
            loss = masked_mean_loss(model(x[idx]), y[idx], m[idx])
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    ref = model.get_numpy_weights()
    w0 = build_model(mcfg, seed=mcfg.seed).get_numpy_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(res.weights, w0, strict=True)) > 1e-3
    assert max(float(np.abs(a - b).max()) for a, b in zip(res.weights, ref, strict=True)) < 1e-6
    with pytest.raises(ValueError, match="sgd' or 'adam"):
        CentralConfig(optimizer="rmsprop")
