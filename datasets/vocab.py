"""The vocabulary: special tokens first, then the most frequent training-user tokens.

Ids are positions in :attr:`Vocab.words`. The four special tokens have fixed ids
(``PAD=0, BOS=1, EOS=2, OOV=3``) that the model, the metric and the device rely on; they
are the artifact contract's (:mod:`fedkb.artifact`), re-exported here for the datasets.
On disk it is ``vocab.json``: a JSON list of the words, index = id.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedkb.artifact import BOS, EOS, NUM_SPECIAL, OOV, PAD, SPECIAL_TOKENS

__all__ = ["BOS", "EOS", "NUM_SPECIAL", "OOV", "PAD", "SPECIAL_TOKENS", "Vocab"]


@dataclass(frozen=True)
class Vocab:
    """An immutable word list with a lookup table."""

    words: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.words[:NUM_SPECIAL]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

    @classmethod
    def build(cls, counts: Counter[str], max_words: int) -> Vocab:
        """The ``max_words`` most frequent tokens (ties broken alphabetically) + specials."""
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls(SPECIAL_TOKENS + tuple(w for w, _ in ranked[:max_words]))

    def __len__(self) -> int:
        return len(self.words)

    def id(self, word: str) -> int:
        return self._index.get(word, OOV)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self._index.get
        return [get(t, OOV) for t in tokens]

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return [self.words[int(i)] for i in ids]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        return json.dumps(list(self.words), ensure_ascii=False)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        words = json.loads(Path(path).read_text(encoding="utf-8"))
        if not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise ValueError(f"{path}: expected a JSON list of strings")
        return cls(tuple(words))
