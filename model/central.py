"""Central training: the same Keras model trained on the pooled training users.

The upper reference for federated training (Hard et al. 2018 report 16.5% top-1 recall
server-trained vs 16.4% federated). Same model, same initial weights and the same loss
as the on-device ``train`` signature; only the data is pooled and shuffled across users.
The optimizer is the phones' plain SGD (``optimizer="sgd"``), or Adam, which a
server-side trainer would use: in the one epoch a demo can afford, SGD leaves the model
far from converged, a weak reference for federated training to be measured against.
Evaluation uses the metric of :mod:`fedkb.model.objective`, the one the LiteRT
``evaluate`` signature runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fedkb.datasets.store import Dataset, clip_to_vocab, windows_to_xy
from fedkb.metrics import RecallCounts
from fedkb.model.config import ModelConfig

# Adam's learning rate when none is given: the best of 0.002/0.005/0.01/0.02 for one epoch
# of `small` on Shakespeare (bench/README.md); plain SGD defaults to the preset's rate
ADAM_LR = 0.01
OPTIMIZERS = ("sgd", "adam")  # central training's optimizers


@dataclass(frozen=True)
class CentralConfig:
    epochs: float = 1.0  # may be fractional: stop after that share of the data
    batch_size: int = 64
    learning_rate: float = 0.5
    seed: int = 0
    max_steps: int | None = None
    optimizer: str = "sgd"  # or "adam" (Keras Adam, default betas and epsilon)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"central optimizer must be 'sgd' or 'adam', not {self.optimizer!r}")


@dataclass(frozen=True)
class CentralResult:
    counts: RecallCounts
    loss: float
    steps: int
    train_seconds: float
    weights: list[np.ndarray]


def evaluate_keras(model, windows: np.ndarray, batch: int = 256) -> tuple[RecallCounts, float]:
    """Recall counts and mean loss of a Keras model over ``windows`` (n, T+1)."""
    import tensorflow as tf

    from fedkb.model.objective import evaluation_sums

    @tf.function(reduce_retracing=True)
    def sums(x, y, m):
        return evaluation_sums(model(x), y, m)

    total = {"loss_sum": 0.0, "count": 0.0, "iv_count": 0.0, "top1_hits": 0.0, "top3_hits": 0.0}
    x, y, m = windows_to_xy(windows)
    for i in range(0, len(x), batch):
        out = sums(x[i : i + batch], y[i : i + batch], m[i : i + batch])
        for k in total:
            total[k] += float(out[k])
    counts = RecallCounts(int(total["iv_count"]), int(total["top1_hits"]),
                          int(total["top3_hits"]))
    return counts, total["loss_sum"] / max(total["count"], 1.0)


def keyboard_keras(model, windows: np.ndarray, completion, batch: int = 256):
    """:class:`fedkb.keyboard.KeyboardCounts` of a Keras model over ``windows`` (n, T+1)."""
    import tensorflow as tf

    from fedkb.keyboard import windows_counts

    forward = tf.function(lambda x: model(x), reduce_retracing=True)
    x, y, m = windows_to_xy(windows)

    def batches():
        for i in range(0, len(x), batch):
            logits = forward(x[i : i + batch]).numpy()
            keep = m[i : i + batch].reshape(-1) > 0
            yield (logits.reshape(-1, logits.shape[-1])[keep],
                   y[i : i + batch].reshape(-1)[keep])

    return windows_counts(completion, batches())


def train_central(ds: Dataset, model_cfg: ModelConfig, cfg: CentralConfig,
                  progress=None) -> CentralResult:
    """Train on every training user's training windows; evaluate on held-out users."""
    import tensorflow as tf

    from fedkb.model.keras_model import build_model
    from fedkb.model.objective import masked_mean_loss

    model = build_model(model_cfg, seed=model_cfg.seed)
    variables = model.weights_in_order
    adam = None
    if cfg.optimizer == "adam":
        adam = tf.keras.optimizers.Adam(learning_rate=cfg.learning_rate)
        adam.build(variables)

    @tf.function(reduce_retracing=True)
    def step(x, y, m, lr):
        with tf.GradientTape() as tape:
            loss = masked_mean_loss(model(x), y, m)
        grads = tape.gradient(loss, variables)
        if adam is not None:
            adam.apply_gradients(zip(grads, variables, strict=True))
        else:
            for v, g in zip(variables, grads, strict=True):
                v.assign_sub(lr * tf.convert_to_tensor(g))
        return loss

    V = model_cfg.vocab_size
    x, y, m = windows_to_xy(clip_to_vocab(ds.all_windows("train", "train"), V))
    rng = np.random.default_rng(cfg.seed)
    n_steps = int(np.ceil(cfg.epochs * len(x) / cfg.batch_size))
    if cfg.max_steps is not None:
        n_steps = min(n_steps, cfg.max_steps)
    order = np.concatenate([rng.permutation(len(x))
                            for _ in range(int(np.ceil(cfg.epochs)) or 1)])
    lr = tf.constant(cfg.learning_rate, tf.float32)
    t0 = time.perf_counter()
    for s in range(n_steps):
        idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
        if len(idx) == 0:
            break
        loss = step(x[idx], y[idx], m[idx], lr)
        if progress is not None:
            progress(s + 1, n_steps, float(loss))
    train_s = time.perf_counter() - t0
    counts, mean_loss = evaluate_keras(model, clip_to_vocab(ds.all_windows("heldout", "eval"), V))
    return CentralResult(counts, mean_loss, n_steps, train_s, model.get_numpy_weights())
