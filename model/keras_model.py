"""The next-word language model in Keras (Gboard style, Hard et al. 2018).

    x (B, T) token ids
    -> embedding E (V, D)
    -> one recurrent layer of H units (plain LSTM or CIFG; see :mod:`fedkb.model.cells`),
       unrolled over T
    -> projection to D (inside the recurrence for LSTMP, else a dense layer after it)
    -> logits = features @ E^T + output_bias        (output tied to the input embedding)

:func:`build_model` returns a :class:`NextWordModel`; its ``weights_in_order`` follow
:func:`fedkb.model.weights.weight_specs` exactly, which is the order of the artifact's
``set_weights`` / ``get_weights`` signatures and of every weights file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fedkb.model.cells import GboardLSTMCell
from fedkb.model.config import ModelConfig
from fedkb.model.weights import initial_weights, weight_specs


class NextWordModel(tf.keras.Model):
    """Embedding -> LSTM/CIFG -> projection -> tied output logits."""

    def __init__(self, config: ModelConfig):
        super().__init__(name=f"nextword_{config.name}")
        self.config = config
        V, D, H = config.vocab_size, config.embed_dim, config.units
        self.embedding = tf.keras.layers.Embedding(V, D, embeddings_initializer="zeros",
                                                   name="embedding")
        self.cell = GboardLSTMCell(H, cifg=config.cell == "cifg",
                                   projection_units=D if config.recurrent_projection else None,
                                   name="cell")
        self.proj = None
        if not config.recurrent_projection:
            self.proj = tf.keras.layers.Dense(D, kernel_initializer="zeros", name="proj")
        self.output_bias = self.add_weight(name="output_bias", shape=(V,),
                                           initializer="zeros")
        # Build every layer once so the variables exist.
        self.features(tf.zeros((1, config.seq_len), tf.int32))

    def features(self, x: tf.Tensor) -> tf.Tensor:
        """(B, T) ids -> (B, T, D) vectors to be scored against the embedding."""
        return self.encode(self.embedding(x))[0]

    def encode(self, emb: tf.Tensor, recurrent_kernel: tf.Tensor | None = None,
               ) -> tuple[tf.Tensor, list[tuple[tf.Tensor, tf.Tensor]]]:
        """(B, T, D) embedded inputs -> features and the cell's recurrent taps
        (:meth:`~fedkb.model.cells.GboardLSTMCell.unroll`)."""
        h, taps = self.cell.unroll(emb, recurrent_kernel)
        return (self.proj(h) if self.proj is not None else h), taps

    def logits_from_features(self, h: tf.Tensor) -> tf.Tensor:
        """(..., D) -> (..., V): h @ E^T + b (weights tied to the input embedding).

        Written as an einsum so the converter emits BATCH_MATMUL, which LiteRT's XNNPACK
        delegate runs multi-threaded; ``tf.matmul(..., transpose_b=True)`` would become a
        FULLY_CONNECTED with dynamic weights, which runs ~5x slower in LiteRT.
        """
        rank = len(h.shape)
        if rank == 3:
            logits = tf.einsum("btd,vd->btv", h, self.embedding.embeddings)
        elif rank == 2:
            logits = tf.einsum("nd,vd->nv", h, self.embedding.embeddings)
        else:
            raise ValueError(f"features must have rank 2 or 3, got {rank}")
        return logits + self.output_bias

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """(B, T) ids -> (B, T, V) next-word logits."""
        return self.logits_from_features(self.features(x))

    def get_config(self) -> dict:
        return self.config.to_dict()

    @property
    def weights_in_order(self) -> list[tf.Variable]:
        """The trainable variables in the canonical weight order."""
        c = self.cell
        out = [self.embedding.embeddings, c.kernel, c.recurrent_kernel, c.bias]
        if c.projection is not None:
            out.append(c.projection)
        if self.proj is not None:
            out += [self.proj.kernel, self.proj.bias]
        out.append(self.output_bias)
        return out

    def set_numpy_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Assign weights given in canonical order (shapes checked)."""
        variables = self.weights_in_order
        if len(weights) != len(variables):
            raise ValueError(f"expected {len(variables)} weight arrays, got {len(weights)}")
        for v, w in zip(variables, weights, strict=True):
            if tuple(v.shape) != tuple(np.shape(w)):
                raise ValueError(f"{v.name}: shape {np.shape(w)} != {tuple(v.shape)}")
            v.assign(np.asarray(w, dtype=np.float32))

    def get_numpy_weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.weights_in_order]


def build_model(config: ModelConfig, weights: Sequence[np.ndarray] | None = None,
                seed: int | None = None) -> NextWordModel:
    """A model for ``config`` holding ``weights`` (default: the seeded initial weights)."""
    model = NextWordModel(config)
    specs = weight_specs(config)
    got = [tuple(v.shape) for v in model.weights_in_order]
    assert got == [s.shape for s in specs], (got, specs)  # the canonical order holds
    model.set_numpy_weights(initial_weights(config, seed) if weights is None else weights)
    return model
