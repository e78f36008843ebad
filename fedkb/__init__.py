"""fedkb: federated learning for next-word prediction on a phone keyboard.

Packages: ``fedkb.datasets`` (corpus -> per-user shards), ``fedkb.model`` (Keras LSTM ->
LiteRT training artifact), ``fedkb.device_runtime`` (emulated phones, LiteRT only),
``fedkb.server`` (Flask round server). ``fedkb.codec`` is the pickle-free array codec
shared by all of them.
"""

__version__ = "0.1.0"
