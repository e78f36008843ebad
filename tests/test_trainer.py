"""The device-side LiteRT trainer (issue 3): no TensorFlow, weights, batching, training."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedkb.artifact import WEIGHTS_FILE, Artifact, ArtifactError
from fedkb.datasets.store import Dataset
from fedkb.device_runtime.trainer import Trainer
from fedkb.weights import WeightsError


@pytest.fixture(scope="module")
def trainer(tiny_artifact) -> Trainer:
    return Trainer(tiny_artifact)


@pytest.fixture(scope="module")
def train_windows(tiny_data, trainer) -> np.ndarray:
    ds = Dataset.open(tiny_data)
    return np.concatenate([ds.shard(u).train for u in ds.train_users])


def test_trainer_imports_no_tensorflow(tiny_artifact):
    code = ("import sys, fedkb.device_runtime.trainer as t; "
            f"tr = t.Trainer({str(tiny_artifact)!r}); "
            "tr.train(tr.artifact.initial_weights(), __import__('numpy').zeros((3, tr.T + 1), "
            "'int32') + 5, max_steps=1); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_get_set_round_trip_exact(trainer):
    rng = np.random.default_rng(1)
    w = [rng.standard_normal(i.shape).astype(np.float32) for i in trainer.specs]
    trainer.set_weights(w)
    back = trainer.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(w, back, strict=True))
    trainer.set_weights(dict(zip(trainer.names, w, strict=True)))  # by name works too
    assert all(np.array_equal(a, b) for a, b in zip(w, trainer.get_weights(), strict=True))


def test_bad_weights_refused(trainer):
    good = trainer.artifact.initial_weights()
    name0 = trainer.names[0]
    with pytest.raises(WeightsError, match=r"expected .* weight arrays"):
        trainer.set_weights(good[:-1])
    with pytest.raises(WeightsError, match=f"{name0}.*shape"):
        trainer.set_weights([good[0][:-1], *good[1:]])
    with pytest.raises(WeightsError, match=f"{name0}.*dtype float64"):
        trainer.set_weights([good[0].astype(np.float64), *good[1:]])
    bad = good[1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(WeightsError, match=f"{trainer.names[1]}.*non-finite"):
        trainer.set_weights([good[0], bad, *good[2:]])
    inf = good[-1].copy()
    inf[0] = np.inf
    with pytest.raises(WeightsError, match="non-finite"):
        trainer.train([*good[:-1], inf], np.zeros((2, trainer.T + 1), np.int32) + 5)
    with pytest.raises(WeightsError, match="missing"):
        trainer.set_weights({name0: good[0]})


def test_bad_windows_refused(trainer):
    w = trainer.artifact.initial_weights()
    with pytest.raises(ValueError, match="shape"):
        trainer.train(w, np.zeros((4, trainer.T), np.int32))
    with pytest.raises(ValueError, match="integer"):
        trainer.evaluate(w, np.zeros((4, trainer.T + 1), np.float32))
    with pytest.raises(ValueError, match="negative"):
        trainer.evaluate(w, np.full((4, trainer.T + 1), -1, np.int32))


def test_loss_decreases_on_tiny_corpus(trainer, train_windows):
    w0 = trainer.artifact.initial_weights()
    before = trainer.evaluate(w0, train_windows).mean_loss
    res = trainer.train(w0, train_windows, epochs=8, lr=0.5)
    after = trainer.evaluate([a + d for a, d in zip(w0, res.delta, strict=True)],
                             train_windows).mean_loss
    assert after < before - 0.5
    assert np.isfinite(res.mean_loss)


def test_batching_steps_examples_and_delta(trainer, train_windows):
    w0 = trainer.artifact.initial_weights()
    n, B = len(train_windows), trainer.B
    assert n % B != 0  # the last batch is a padded, masked one
    res = trainer.train(w0, train_windows, epochs=2)
    assert res.steps == 2 * -(-n // B) and res.completed
    assert res.num_examples == n and res.examples_processed == 2 * n
    assert [d.shape for d in res.delta] == [w.shape for w in w0]
    assert all(d.dtype == np.float32 for d in res.delta)
    assert trainer.get_weights()[0] == pytest.approx(w0[0] + res.delta[0])
    capped = trainer.train(w0, train_windows, epochs=5, max_steps=2)
    assert capped.steps == 2 and capped.examples_processed == 2 * B
    empty = trainer.train(w0, train_windows[:0])
    assert empty.steps == 0 and empty.num_examples == 0
    assert all(not d.any() for d in empty.delta)


def _norm(arrays) -> float:
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))


def test_each_step_gradient_is_clipped_inside_the_train_signature(trainer, train_windows):
    """grad_clip bounds every step's move by lr * C and leaves a shorter gradient alone."""
    w0 = trainer.artifact.initial_weights()
    x, y, m = trainer._batch(train_windows[: trainer.B])
    lr = 0.5
    trainer.set_weights(w0)
    loss = trainer.step(x, y, m, lr)  # not clipped: the plain SGD step
    norm = trainer.last_grad_norm
    plain = [a - b for a, b in zip(trainer.get_weights(), w0, strict=True)]
    assert norm > 0 and _norm(plain) == pytest.approx(lr * norm, rel=1e-4)
    trainer.set_weights(w0)
    assert trainer.step(x, y, m, lr, grad_clip=2 * norm) == loss  # a bound that does not bind
    loose = [a - b for a, b in zip(trainer.get_weights(), w0, strict=True)]
    assert all(np.array_equal(a, b) for a, b in zip(plain, loose, strict=True))
    trainer.set_weights(w0)
    clip = norm / 4
    assert trainer.step(x, y, m, lr, grad_clip=clip) == loss  # loss is before the step
    assert trainer.last_grad_norm == pytest.approx(norm, rel=1e-6)  # reported unclipped
    clipped = [a - b for a, b in zip(trainer.get_weights(), w0, strict=True)]
    assert _norm(clipped) == pytest.approx(lr * clip, rel=1e-4)
    for a, b in zip(clipped, plain, strict=True):  # same direction, a quarter of the length
        assert np.allclose(a, b / 4, atol=1e-7)
    with pytest.raises(ValueError, match="grad_clip"):
        trainer.step(x, y, m, lr, grad_clip=-1.0)


def test_a_training_session_counts_its_clipped_steps(trainer, train_windows):
    w0 = trainer.artifact.initial_weights()
    free = trainer.train(w0, train_windows, epochs=1, lr=2.0, seed=1)
    assert free.clipped_steps == 0 and free.max_grad_norm > 0
    bound = free.max_grad_norm / 10
    res = trainer.train(w0, train_windows, epochs=1, lr=2.0, seed=1, grad_clip=bound)
    assert res.clipped_steps >= 1 and res.steps == free.steps
    assert _norm(res.delta) <= res.steps * 2.0 * bound * (1 + 1e-4)
    with pytest.raises(ValueError, match="grad_clip"):
        trainer.start_training(w0, train_windows, grad_clip=float("nan"))


def test_padded_rows_do_not_count(trainer, train_windows):
    """A batch's sums equal the sums of its rows evaluated alone (padding is masked)."""
    w0 = trainer.artifact.initial_weights()
    rows = train_windows[:5]
    whole = trainer.evaluate(w0, rows)
    parts = [trainer.evaluate(None, rows[i : i + 1]) for i in range(len(rows))]
    assert whole.count == sum(p.count for p in parts)
    assert whole.top3_hits == sum(p.top3_hits for p in parts)
    assert whole.loss_sum == pytest.approx(sum(p.loss_sum for p in parts), rel=1e-5)


def test_step_by_step_abort(trainer, train_windows):
    w0 = trainer.artifact.initial_weights()
    session = trainer.start_training(w0, train_windows, epochs=3)
    losses = []
    for info in session:
        losses.append(info.loss)
        if info.step == 2:
            break  # the phone was unplugged
    res = session.result()
    assert res.steps == 3 and not res.completed and session.planned_steps > 3
    stopped = trainer.train(w0, train_windows, epochs=3, should_stop=lambda s: s.step == 2)
    assert stopped.steps == 3 and not stopped.completed
    assert stopped.mean_loss == pytest.approx(res.mean_loss)


def test_ids_beyond_vocab_become_oov(trainer):
    w0 = trainer.artifact.initial_weights()
    rows = np.full((2, trainer.T + 1), 5, np.int32)
    big = rows.copy()
    big[:, 3] = trainer.V + 100
    oov = rows.copy()
    oov[:, 3] = 3
    assert trainer.evaluate(w0, big) == trainer.evaluate(w0, oov)


def test_requires_weights_first(tiny_artifact):
    fresh = Trainer(tiny_artifact)
    with pytest.raises(RuntimeError, match="set_weights"):
        fresh.infer([1, 5])


def test_artifact_hash_checked(tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact, copy)
    data = bytearray((copy / WEIGHTS_FILE).read_bytes())
    data[-20] ^= 0xFF
    (copy / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        Artifact.load(copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["format"] = "other"
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format"):
        Artifact.load(copy)
