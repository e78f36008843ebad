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

The gate order (i, f, g, o) is Keras's. The cell is used inside
``tf.keras.layers.RNN(..., unroll=True)``: unrolling is what lets the LiteRT converter
express training with builtin ops only (no TensorList, hence no Flex).
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
        self.state_size = [out, units]
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

    def call(self, inputs, states):
        r_prev, c_prev = states[0], states[1]
        z = _mm(inputs, self.kernel) + _mm(r_prev, self.recurrent_kernel)
        z = z + self.bias
        if self.cifg:
            i, g, o = tf.split(z, 3, axis=-1)
            i = tf.sigmoid(i)
            f = 1.0 - i
        else:
            i, f, g, o = tf.split(z, 4, axis=-1)
            i, f = tf.sigmoid(i), tf.sigmoid(f)
        c = f * c_prev + i * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        if self.projection is not None:
            h = _mm(h, self.projection)
        return h, [h, c]

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "cifg": self.cifg,
                "projection_units": self.projection_units}
