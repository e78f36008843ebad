"""fedkb: federated learning for next-word prediction on a phone keyboard.

Packages: ``fedkb.datasets`` (corpus -> per-user shards), ``fedkb.model`` (Keras LSTM ->
LiteRT training artifact), ``fedkb.device_runtime`` (emulated phones, LiteRT only),
``fedkb.server`` (Flask round server), ``fedkb.simulation`` (the engines).

The modules of this folder are the contract they all share (NumPy, safetensors and the
standard library only, so a phone can import them): ``fedkb.codec`` the pickle-free array
codec and ``fedkb.wire`` the messages (what travels), ``fedkb.weights`` the one weight
spec and check, ``fedkb.artifact`` the one artifact reader with its file names, format id
and special tokens, ``fedkb.tensorfile`` weights at rest (safetensors), ``fedkb.metrics``
the keyboard metric, ``fedkb.errors`` and ``fedkb.cli``.
"""

__version__ = "0.1.0"
