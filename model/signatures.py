"""The on-device training module: a ``tf.Module`` whose functions become the signatures.

Signatures (fixed shapes; B = batch_size, T = seq_len, K = infer_k):

- ``train(x[B,T] i32, y[B,T] i32, mask[B,T] f32, lr[] f32, grad_clip[] f32)
  -> {loss, grad_norm}``: one plain SGD step (``v -= lr * g``) on the masked mean
  cross-entropy, where ``g`` is the gradient clipped to global L2 norm ``grad_clip``
  (``g * min(1, grad_clip / ||g||)``, the norm over all weights together; ``grad_clip
  <= 0``: no clipping). Returns the loss before the step and the unclipped ``||g||``.
  A clipped step moves the weights by at most ``lr * grad_clip``, so a phone's local
  training at plain FedAvg's lr 1.0 cannot blow up (bench/README.md, "The fleet at the
  compute floor").
- ``evaluate(x, y, mask) -> {loss_sum, count, iv_count, top1_hits, top3_hits}``: sums
  over the batch (see :mod:`fedkb.model.objective`).
- ``infer(x[1,T] i32, length[1] i32) -> {ids[1,K] i32, probs[1,K] f32}``: suggestions
  after the last real token ``x[0, length-1]``.
- ``get_weights() -> {name: array}`` and ``set_weights(**{name: array}) -> {num_weights}``
  with one entry per weight, named as in :func:`fedkb.model.weights.weight_specs`.

Only builtin ops come out of this (ARCHITECTURE.md, "Hazards the code works around"):
the RNN is unrolled, shapes are static, gradients come from ``tf.GradientTape`` and the
update is written by hand (Keras optimizers inside a signature fail at run time). Two
gradients are shaped by hand for speed, the same math: the embedding's (one SCATTER_ND)
and the recurrent kernel's (one matmul over all steps), together with the cell's hoisted
input projection (what they save: bench/README.md, "Model").
"""

from __future__ import annotations

import tensorflow as tf

from fedkb.model.keras_model import NextWordModel
from fedkb.model.objective import (
    clip_scale,
    evaluation_sums,
    global_norm,
    recurrent_kernel_gradient,
    top_suggestions,
    training_loss,
)
from fedkb.model.weights import weight_specs

SIGNATURES = ("train", "evaluate", "infer", "get_weights", "set_weights")


class TrainingModule(tf.Module):
    """Wraps a :class:`NextWordModel` with the artifact's signature functions."""

    def __init__(self, model: NextWordModel):
        super().__init__(name="fedkb_training_module")
        self.model = model
        cfg = model.config
        self.config = cfg
        self.names = [s.name for s in weight_specs(cfg)]
        B, T = cfg.batch_size, cfg.seq_len
        batch = [tf.TensorSpec((B, T), tf.int32, name="x"),
                 tf.TensorSpec((B, T), tf.int32, name="y"),
                 tf.TensorSpec((B, T), tf.float32, name="mask")]
        self.train = tf.function(self._train, input_signature=[
            *batch, tf.TensorSpec((), tf.float32, name="lr"),
            tf.TensorSpec((), tf.float32, name="grad_clip")])
        self.evaluate = tf.function(self._evaluate, input_signature=batch)
        self.infer = tf.function(self._infer, input_signature=[
            tf.TensorSpec((cfg.infer_batch, T), tf.int32, name="x"),
            tf.TensorSpec((cfg.infer_batch,), tf.int32, name="length")])
        self.get_weights = tf.function(self._get_weights, input_signature=[])
        self.set_weights = tf.function(self._set_weights, input_signature=[
            tf.TensorSpec(s.shape, tf.float32, name=s.name) for s in weight_specs(cfg)])

    # -- signature bodies -------------------------------------------------------------

    def _train(self, x, y, mask, lr, grad_clip):
        variables = self.model.weights_in_order
        w_h = self.model.cell.recurrent_kernel
        with tf.GradientTape() as tape:
            loss, taps = training_loss(self.model, x, y, mask, tf.stop_gradient(w_h))
        qs = [q for _, q in taps]
        grads = tape.gradient(loss, variables + qs)
        grads, tap_grads = list(grads[: len(variables)]), grads[len(variables):]
        k = next(i for i, v in enumerate(variables) if v is w_h)
        grads[k] = recurrent_kernel_gradient(taps, tap_grads, w_h)
        grads = [tf.convert_to_tensor(g) for g in grads]
        norm = global_norm(grads)
        step = lr * clip_scale(norm, grad_clip)
        for v, g in zip(variables, grads, strict=True):
            v.assign_sub(step * g)
        return {"loss": loss, "grad_norm": norm}

    def _evaluate(self, x, y, mask):
        return evaluation_sums(self.model(x), y, mask)

    def _infer(self, x, length):
        T = self.config.seq_len
        h = self.model.features(x)  # (N, T, D)
        last = tf.clip_by_value(length - 1, 0, T - 1)  # (N,)
        pick = tf.one_hot(last, T, dtype=h.dtype)  # (N, T): select position last[n]
        h_last = tf.reduce_sum(h * pick[..., None], axis=1)  # (N, D)
        return top_suggestions(self.model.logits_from_features(h_last), self.config.infer_k)

    def _get_weights(self):
        return {n: tf.identity(v) for n, v in
                zip(self.names, self.model.weights_in_order, strict=True)}

    def _set_weights(self, *values):
        for v, value in zip(self.model.weights_in_order, values, strict=True):
            v.assign(value)
        return {"num_weights": tf.constant(len(values), tf.int32)}

    def concrete_signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}
