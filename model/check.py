"""``fedkb model check``: what an artifact contains and whether LiteRT trains like Keras.

Parity: from the artifact's initial weights, run the same ``steps`` batches through
LiteRT's ``train`` signature and through the Keras model trained the idiomatic Keras
way (``sparse_categorical_crossentropy(from_logits=True)``, masked, and
``tf.keras.optimizers.SGD``: the same math as the exported step, written
independently of it), then compare every step's loss and every final weight.

Timing: the step time of LiteRT ``train`` and of the compiled (``tf.function``) Keras
step on the same fixed batch, each the median of ``timing_steps`` after a warm-up, with
the same number of threads for both; also TensorFlow running the exported step function
itself (same graph as the artifact), and LiteRT ``infer`` latency for one prefix.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.artifact import BOS, PAD, Artifact
from fedkb.device_runtime.trainer import Trainer
from fedkb.model.config import ModelConfig
from fedkb.model.oplist import op_report


def synthetic_batches(config: ModelConfig, n: int, seed: int = 0,
                      ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` fixed-size batches of random windows with ragged lengths (padding masked)."""
    rng = np.random.default_rng(seed)
    B, T, V = config.batch_size, config.seq_len, config.vocab_size
    out = []
    for _ in range(n):
        w = rng.integers(4, V, size=(B, T + 1)).astype(np.int32)
        w[:, 0] = BOS
        lengths = rng.integers(2, T + 2, size=B)
        for r, length in enumerate(lengths):
            w[r, length:] = PAD
        w[-1] = PAD  # one empty row, as in a padded last batch
        y = w[:, 1:]
        out.append((np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(y),
                    (y != PAD).astype(np.float32)))
    return out


def _median_seconds(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def set_tf_threads(threads: int) -> None:
    """Limit TensorFlow to ``threads`` intra-op threads (if TF is not running yet)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised (e.g. after an export in this process)
        pass


def check_artifact(path: str | Path, steps: int = 5, timing_steps: int = 20,
                   threads: int | None = None, lr: float | None = None) -> dict[str, Any]:
    """Inspect an artifact and measure LiteRT/Keras parity and speed; returns a report."""
    import tensorflow as tf

    threads = threads or os.cpu_count() or 1
    set_tf_threads(threads)
    from fedkb.model.keras_model import build_model

    path = Path(path)
    art = Artifact.load(path)
    config = ModelConfig.from_dict(art.meta["config"])
    lr = float(config.learning_rate if lr is None else lr)
    ops = op_report(art.model_bytes)
    w0 = art.initial_weights()
    batches = synthetic_batches(config, steps)

    # LiteRT
    trainer = Trainer(art, num_threads=threads)
    trainer.set_weights(w0)
    lite_losses = [trainer.step(x, y, m, lr) for x, y, m in batches]
    lite_weights = trainer.get_weights()

    # Keras, with Keras's own SGD
    model = build_model(config, w0)
    variables = model.weights_in_order
    opt = tf.keras.optimizers.SGD(learning_rate=lr)

    @tf.function
    def keras_step(x, y, mask):
        with tf.GradientTape() as tape:
            ce = tf.keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
            loss = tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=False))
        return loss

    keras_losses = [float(keras_step(x, y, m)) for x, y, m in batches]
    keras_weights = model.get_numpy_weights()

    weight_diffs = {n: float(np.max(np.abs(a - b))) for n, a, b in
                    zip(art.weight_names, lite_weights, keras_weights, strict=True)}
    loss_diff = max(abs(a - b) for a, b in zip(lite_losses, keras_losses, strict=True))

    # Timing on one fixed batch.
    x, y, m = batches[0]
    lite_step = _median_seconds(lambda: trainer.step(x, y, m, lr), timing_steps)
    evaluate = trainer._runners["evaluate"]
    lite_eval = _median_seconds(lambda: evaluate(x=x, y=y, mask=m), timing_steps)
    tx, ty, tm = tf.constant(x), tf.constant(y), tf.constant(m)
    keras_step_s = _median_seconds(lambda: keras_step(tx, ty, tm).numpy(), timing_steps)
    # TensorFlow running the exported step itself (same graph as the artifact).
    from fedkb.model.signatures import TrainingModule

    module = TrainingModule(model)
    tlr = tf.constant(lr, tf.float32)
    no_clip = tf.constant(0.0, tf.float32)
    tf_graph_s = _median_seconds(lambda: module.train(tx, ty, tm, tlr, no_clip)["loss"].numpy(),
                                 timing_steps)
    prefix = [1, *list(range(4, min(config.vocab_size, 4 + config.seq_len // 2)))]
    lite_infer = _median_seconds(lambda: trainer.infer(prefix), max(timing_steps, 50))

    sizes = {name: (path / name).stat().st_size for name in sorted(art.meta["files"])}
    sizes["metadata.json"] = (path / "metadata.json").stat().st_size
    return {
        "artifact": str(path),
        "preset": art.meta["preset"],
        "num_params": int(art.meta["num_params"]),
        "vocab_size": config.vocab_size, "seq_len": config.seq_len,
        "batch_size": config.batch_size,
        "ops": ops.counts,
        "op_names": ops.names,
        "builtin_only": ops.builtin_only,
        "non_builtin_ops": list(ops.non_builtin),
        "file_bytes": sizes,
        "parity": {
            "steps": steps, "lr": lr,
            "lite_losses": lite_losses, "keras_losses": keras_losses,
            "max_abs_loss_diff": loss_diff,
            "max_abs_weight_diff": max(weight_diffs.values()),
            "weight_diffs": weight_diffs,
        },
        "timing": {
            "threads": threads,
            "lite_train_step_ms": lite_step * 1e3,
            "keras_train_step_ms": keras_step_s * 1e3,
            "lite_over_keras": lite_step / keras_step_s,
            "tf_same_graph_step_ms": tf_graph_s * 1e3,
            "lite_evaluate_batch_ms": lite_eval * 1e3,
            "lite_infer_ms": lite_infer * 1e3,
        },
    }


def format_report(r: dict[str, Any]) -> str:
    """A human-readable summary of :func:`check_artifact`'s report."""
    p, t = r["parity"], r["timing"]
    lines = [
        f"artifact     {r['artifact']}  (preset {r['preset']}, V={r['vocab_size']}, "
        f"T={r['seq_len']}, B={r['batch_size']})",
        f"parameters   {r['num_params']:,}",
        f"builtin_only {r['builtin_only']}"
        + (f"  NON-BUILTIN: {', '.join(r['non_builtin_ops'])}" if r["non_builtin_ops"] else ""),
        f"ops          {sum(r['ops'].values())} in total: "
        + ", ".join(f"{k}x{v}" for k, v in r["ops"].items()),
        "files        " + ", ".join(f"{k} {v:,} B" for k, v in r["file_bytes"].items()),
        f"parity       {p['steps']} train steps, lr={p['lr']}: max |loss diff| "
        f"{p['max_abs_loss_diff']:.2e}, max |weight diff| {p['max_abs_weight_diff']:.2e}",
        f"step time    LiteRT {t['lite_train_step_ms']:.2f} ms, Keras "
        f"{t['keras_train_step_ms']:.2f} ms (ratio {t['lite_over_keras']:.2f}, "
        f"{t['threads']} threads); TF on the exported graph {t['tf_same_graph_step_ms']:.2f} ms",
        f"evaluate     LiteRT {t['lite_evaluate_batch_ms']:.2f} ms per batch",
        f"infer        LiteRT {t['lite_infer_ms']:.3f} ms for one prefix",
    ]
    return "\n".join(lines)
