"""The recurrent cell: plain LSTM or CIFG, with an optional recurrent projection.

CIFG ("coupled input and forget gate", Greff et al. 2017) is the variant the Gboard
next-word model uses (Hard et al. 2018, "Federated Learning for Mobile Keyboard
Prediction", arXiv:1811.03604): the forget gate is tied to the input gate, f = 1 - i,
which saves a quarter of the gate parameters. Gboard's cell also projects its output
to the embedding size inside the recurrence (LSTMP, Sak et al. 2014), so the recurrent
kernel is D x 3H instead of H x 3H.

For each step, with x the input and (r, c) the previous output and cell state::

    z = x @ kernel + r @ recurrent_kernel + bias
    plain LSTM: i, f, g, o = split(z, 4); i, f, o = sigmoid(.); g = tanh(g)
    CIFG:       i, g, o = split(z, 3);    i, o = sigmoid(.);    f = 1 - i
    c' = f * c + i * g;  h = o * tanh(c');  r' = h @ projection (LSTMP) or h

The gate order (i, f, g, o) is Keras's. :meth:`GboardLSTMCell.unroll` runs the cell
over a whole sequence as a Python loop: unrolling is what lets the LiteRT converter
express training with builtin ops only (no TensorList, hence no Flex). The input term
``x @ kernel + bias`` of all T steps is one matmul before the loop (so its gradient is
one matmul too, not a sum of T); only the recurrent term runs per step.
"""

from __future__ import annotations

import tensorflow as tf


def _mm(a: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """a @ w as an einsum: converts to LiteRT BATCH_MATMUL (XNNPACK-delegated, threaded)
    rather than FULLY_CONNECTED with dynamic weights (slow, single-threaded)."""
    return tf.einsum("bi,ij->bj", a, w)


class GboardLSTMCell(tf.keras.layers.Layer):
    """An LSTM cell with optional CIFG coupling and optional recurrent projection.

    Args:
        units: H, the number of LSTM units.
        cifg: couple the forget gate to the input gate (f = 1 - i).
        projection_units: if set, project the cell output to this size inside the
            recurrence (the cell then emits and feeds back vectors of that size).
    """

    def __init__(self, units: int, cifg: bool = False, projection_units: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.cifg = cifg
        self.projection_units = projection_units
        self.gates = 3 if cifg else 4
        out = projection_units or units
        self.output_size = out

    def build(self, input_shape) -> None:
        in_dim = int(input_shape[-1])
        out = self.projection_units or self.units
        zeros = tf.keras.initializers.Zeros()  # real values always come via set_weights
        self.kernel = self.add_weight(name="kernel", shape=(in_dim, self.gates * self.units),
                                      initializer=zeros)
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel",
                                                shape=(out, self.gates * self.units),
                                                initializer=zeros)
        self.bias = self.add_weight(name="bias", shape=(self.gates * self.units,),
                                    initializer=zeros)
        self.projection = None
        if self.projection_units:
            self.projection = self.add_weight(name="projection",
                                              shape=(self.units, self.projection_units),
                                              initializer=zeros)
        self.built = True

    def unroll(self, inputs: tf.Tensor, recurrent_kernel: tf.Tensor | None = None,
               ) -> tuple[tf.Tensor, list[tuple[tf.Tensor, tf.Tensor]]]:
        """(B, T, I) inputs -> (B, T, out) outputs from zero states, and the recurrent taps.

        The taps are ``(r_prev, r_prev @ W_h)`` for steps 1..T-1 (step 0's previous output
        is zero). ``recurrent_kernel`` stands in for the variable: the training signature
        passes a stop-gradient copy and computes W_h's gradient from the taps as one
        matmul (:func:`fedkb.model.objective.recurrent_kernel_gradient`) instead of the
        sum of T-1 per-step matmuls that autodiff would build.
        """
        if not self.built:
            self.build(inputs.shape)
        w_h = self.recurrent_kernel if recurrent_kernel is None else recurrent_kernel
        xz = tf.einsum("bti,ij->btj", inputs, self.kernel) + self.bias
        outputs, taps = [], []
        r = c = None
        for z in tf.unstack(xz, axis=1):  # unstack: its gradient is PACK (a strided
            if r is not None:               # slice's would need Flex)
                q = _mm(r, w_h)
                taps.append((r, q))
                z = z + q
            if self.cifg:
                i, g, o = tf.split(z, 3, axis=-1)
                i = tf.sigmoid(i)
                f = 1.0 - i
            else:
                i, f, g, o = tf.split(z, 4, axis=-1)
                i, f = tf.sigmoid(i), tf.sigmoid(f)
            c = i * tf.tanh(g) if c is None else f * c + i * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            r = _mm(h, self.projection) if self.projection is not None else h
            outputs.append(r)
        return tf.stack(outputs, axis=1), taps

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "cifg": self.cifg,
                "projection_units": self.projection_units}
