"""Loss, metric and suggestion math in TensorFlow, written with LiteRT builtin ops only.

These functions are traced into the artifact's signatures *and* used for the Keras side
of the parity check, so both sides compute exactly the same thing.

Metric (fedkb/metrics.py): top-k recall over target positions whose target is an
in-vocabulary word (id >= 4: not PAD, BOS, EOS or OOV); special tokens are never
suggested, so their logits are pushed to -1e9 before ranking. A target counts as a
top-k hit when fewer than k other words have a strictly larger logit.
"""

from __future__ import annotations

import tensorflow as tf

from fedkb.artifact import NUM_SPECIAL  # PAD, BOS, EOS, OOV are ids 0..3

NEG = -1e9


def token_cross_entropy(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-position cross-entropy, (B, T, V) logits and (B, T) targets -> (B, T)."""
    logp = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_sum(tf.one_hot(y, tf.shape(logits)[-1], dtype=logits.dtype) * logp, -1)


def masked_mean_loss(logits: tf.Tensor, y: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy over positions with mask 1 (0 when the mask is empty)."""
    ce = token_cross_entropy(logits, y)
    return tf.reduce_sum(ce * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def gather_rows(table: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """``tf.gather(table, ids)`` whose gradient is one SCATTER_ND into a dense table.

    Autodiff would densify the gather's IndexedSlices with UNSORTED_SEGMENT_SUM, whose
    LiteRT kernel (a reference one) took ~18% of a `small` training step. Duplicate ids
    add up, as in TensorFlow.
    """

    @tf.custom_gradient
    def gather(t):
        def grad(d):
            rows = tf.reshape(d, (-1, t.shape[-1]))
            return tf.scatter_nd(tf.reshape(ids, (-1, 1)), rows, tf.shape(t))

        return tf.gather(t, ids), grad

    return gather(table)


def training_loss(model, x: tf.Tensor, y: tf.Tensor, mask: tf.Tensor,
                  recurrent_kernel: tf.Tensor | None = None,
                  ) -> tuple[tf.Tensor, list[tuple[tf.Tensor, tf.Tensor]]]:
    """Masked mean cross-entropy of a :class:`NextWordModel`, in a LiteRT-friendly form.

    Mathematically :func:`masked_mean_loss` of ``model(x)``, written as
    ``logsumexp(logits) - logit[y]`` with the target logit taken from the features and
    the gathered target embedding (``h . E[y] + b[y]``). Its gradient avoids
    LOG_SOFTMAX and a (B, T, V) ONE_HOT, the two large ops LiteRT's XNNPACK delegate
    does not run; what is left over the (B, T, V) logits are delegated element-wise ops.
    Inputs and targets are looked up in one :func:`gather_rows`. Returns the loss and
    the cell's recurrent taps (see :func:`recurrent_kernel_gradient`).
    """
    E = model.embedding.embeddings
    ex, ey = tf.split(gather_rows(E, tf.concat([x, y], axis=0)), 2, axis=0)
    h, taps = model.encode(ex, recurrent_kernel)
    logits = model.logits_from_features(h)
    top = tf.stop_gradient(tf.reduce_max(logits, axis=-1, keepdims=True))
    lse = tf.math.log(tf.reduce_sum(tf.exp(logits - top), axis=-1)) + top[..., 0]
    target = tf.reduce_sum(h * ey, axis=-1) + tf.gather(model.output_bias, y)
    loss = tf.reduce_sum((lse - target) * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
    return loss, taps


def recurrent_kernel_gradient(taps: list[tuple[tf.Tensor, tf.Tensor]],
                              tap_grads: list[tf.Tensor], like: tf.Tensor) -> tf.Tensor:
    """dL/dW_h from the taps ``(r_prev, q = r_prev @ W_h)`` and dL/dq: one matmul.

    Autodiff through the unrolled cell would sum T-1 per-step products with an ADD_N
    (~20% of a `small` training step in LiteRT); stacking the steps gives the same sum
    as a single (H, B*T) x (B*T, G*H) product.
    """
    if not taps:
        return tf.zeros_like(like)
    r = tf.stack([t[0] for t in taps], axis=1)  # (B, T-1, H)
    dq = tf.stack(list(tap_grads), axis=1)  # (B, T-1, G*H)
    return tf.einsum("bti,btj->ij", r, dq)


def global_norm(tensors: list[tf.Tensor]) -> tf.Tensor:
    """The L2 norm of all ``tensors`` together (``tf.linalg.global_norm``, builtin ops)."""
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors]))


def clip_scale(norm: tf.Tensor, clip: tf.Tensor) -> tf.Tensor:
    """The factor that clips a gradient of L2 norm ``norm`` to ``clip``:
    ``min(1, clip / norm)``, or 1 when ``clip <= 0`` (no clipping).

    The same rule as :func:`fedkb.clipping.clip_update` on a phone's delta and as the TFF
    reference's client optimizer (:mod:`fedkb.simulation.tff_optimizers`).
    """
    scale = tf.minimum(1.0, clip / tf.maximum(norm, 1e-30))
    return tf.where(clip > 0.0, scale, tf.ones_like(scale))


def mask_special(logits: tf.Tensor) -> tf.Tensor:
    """Logits with the special tokens' entries set to -1e9 (never suggested)."""
    V = logits.shape[-1]
    special = tf.constant([1.0] * NUM_SPECIAL + [0.0] * (V - NUM_SPECIAL), dtype=logits.dtype)
    return logits * (1.0 - special) + NEG * special


def evaluation_sums(logits: tf.Tensor, y: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
    """Sums for one batch: loss_sum, count (mask), iv_count, top1_hits, top3_hits.

    The target logit is gathered from ``logits`` itself (so the rank test compares a value
    with its own copy exactly) and the loss is ``logsumexp - target``: no LOG_SOFTMAX or
    (B, T, V) ONE_HOT, which LiteRT would run outside its XNNPACK delegate.
    """
    V = logits.shape[-1]
    target = tf.reshape(tf.gather(tf.reshape(logits, (-1, V)), tf.reshape(y, (-1,)),
                                  batch_dims=1), tf.shape(y))
    top = tf.reduce_max(logits, axis=-1, keepdims=True)
    lse = tf.math.log(tf.reduce_sum(tf.exp(logits - top), axis=-1)) + top[..., 0]
    ce = lse - target
    rank = tf.reduce_sum(tf.cast(mask_special(logits) > target[..., None], tf.float32), -1)
    iv = mask * tf.cast(y >= NUM_SPECIAL, tf.float32)
    return {
        "loss_sum": tf.reduce_sum(ce * mask),
        "count": tf.reduce_sum(mask),
        "iv_count": tf.reduce_sum(iv),
        "top1_hits": tf.reduce_sum(iv * tf.cast(rank < 1.0, tf.float32)),
        "top3_hits": tf.reduce_sum(iv * tf.cast(rank < 3.0, tf.float32)),
    }


def top_suggestions(logits: tf.Tensor, k: int) -> dict[str, tf.Tensor]:
    """(N, V) logits -> top-k word ids (int32) and their probabilities.

    Probabilities are a softmax over the words only (special tokens removed), so the
    suggestions of a prefix sum to at most 1.
    """
    probs = tf.nn.softmax(mask_special(logits), axis=-1)
    top = tf.math.top_k(probs, k=k)
    return {"ids": tf.cast(top.indices, tf.int32), "probs": top.values}
