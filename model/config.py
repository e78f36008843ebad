"""Model presets: frozen hyperparameter records for the next-word LSTM.

Three presets ship with fedkb:

- ``tiny``: for tests (D=16, H=32, T=10, B=8); converts and trains in seconds.
- ``small``: the demo default (V up to 10,000, D=96, H=256, T=20, B=16), a plain LSTM
  followed by a projection back to D.
- ``gboard``: the model of Hard et al. 2018, "Federated Learning for Mobile Keyboard
  Prediction" (arXiv:1811.03604): V=10,000, 96-dim tied embeddings, one CIFG LSTM layer of
  670 units whose output is projected to 96 inside the recurrence (an LSTMP cell, Sak et
  al. 2014), about 1.4M parameters.

The vocabulary size of an exported model is the dataset's, capped at the preset's
``vocab_size``; the data also decides ``seq_len`` (see :func:`fit_to_data`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

CellType = Literal["lstm", "cifg"]


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one next-word model and of its exported training artifact.

    Attributes:
        name: preset name (recorded in the artifact).
        vocab_size: V, including the four special tokens.
        embed_dim: D, size of the token embedding (tied with the output layer).
        units: H, LSTM units.
        cell: ``"lstm"`` (plain) or ``"cifg"`` (coupled input/forget gate, f = 1 - i).
        recurrent_projection: project the cell output to D *inside* the recurrence (LSTMP,
            as in the Gboard model); otherwise a dense projection to D follows the layer.
        seq_len: T, tokens per training window (the data may override it).
        batch_size: B, fixed batch of the ``train`` and ``evaluate`` signatures.
        infer_batch: fixed batch of the ``infer`` signature (one prefix at a time).
        infer_k: how many suggestions ``infer`` returns (at least 3).
        learning_rate: default SGD step size for training (``train`` takes it as input).
        seed: seed of the initial weights.
    """

    name: str
    vocab_size: int
    embed_dim: int
    units: int
    cell: CellType = "lstm"
    recurrent_projection: bool = False
    seq_len: int = 20
    batch_size: int = 16
    infer_batch: int = 1
    infer_k: int = 10
    learning_rate: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cell not in ("lstm", "cifg"):
            raise ValueError(f"cell must be 'lstm' or 'cifg', not {self.cell!r}")
        if self.vocab_size < 5:
            raise ValueError("vocab_size must leave room for words after the 4 special tokens")
        for field in ("embed_dim", "units", "seq_len", "batch_size", "infer_batch"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be positive")
        if not 3 <= self.infer_k <= self.vocab_size - 4:
            raise ValueError("infer_k must be at least 3 and at most the number of words")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def fit_to_data(self, data_vocab_size: int, data_seq_len: int) -> ModelConfig:
        """This preset adapted to a dataset: V capped at the preset's, T from the data."""
        return self.replace(vocab_size=min(self.vocab_size, data_vocab_size),
                            seq_len=data_seq_len,
                            infer_k=min(self.infer_k, min(self.vocab_size, data_vocab_size) - 4))


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig("tiny", vocab_size=64, embed_dim=16, units=32, seq_len=10,
                        batch_size=8, learning_rate=0.5),
    "small": ModelConfig("small", vocab_size=10_000, embed_dim=96, units=256, seq_len=20,
                         batch_size=16, learning_rate=0.5),
    "gboard": ModelConfig("gboard", vocab_size=10_000, embed_dim=96, units=670, cell="cifg",
                          recurrent_projection=True, seq_len=20, batch_size=16,
                          learning_rate=0.5),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})") from None
