"""The next-word LSTM (Keras) and its LiteRT on-device training artifact.

- :mod:`fedkb.model.config`: presets (``tiny``, ``small``, ``gboard``) as frozen dataclasses.
- :mod:`fedkb.model.weights`: canonical weight order, seeded initial weights (NumPy only).
- :mod:`fedkb.model.cells`, :mod:`fedkb.model.keras_model`: the LSTM/CIFG model.
- :mod:`fedkb.model.objective`: loss, metric and suggestions (builtin-op friendly TF).
- :mod:`fedkb.model.signatures`, :mod:`fedkb.model.export`: the artifact and its writer.
- :mod:`fedkb.model.check`: ``fedkb model check`` (ops, parity with Keras, timings).

Importing this package does not import TensorFlow.
"""
