"""The on-disk dataset: compact token windows with a per-user index.

A prepared dataset directory holds::

    metadata.json   self-description: format, corpus hash, config, counts, stats, file hashes
                    (written last: a directory without it is not a dataset)
    vocab.json      the vocabulary, a JSON list (index = id)
    windows.npy     all token windows, shape (N, T+1), uint16 (int32 when V > 65535)
    index.json      per user: split, sentence/token counts, and the row ranges of its
                    training windows and its evaluation windows in windows.npy

Windows are stored user by user, so a device reads its own rows through a memory map
without touching anyone else's: loading a shard costs what the shard costs.
A window ``w`` of T+1 tokens gives input ``x = w[:-1]``, target ``y = w[1:]`` and
``mask = y != PAD`` (see :func:`windows_to_xy`).

Three words, one meaning each (here and in every layer above):

- ``heldout`` (:data:`HELDOUT`): the *population* of users who never train, the split
  beside ``train``; the phones holding them register as population ``heldout`` and
  recall "on held-out users" is measured on them.
- ``eval``: the *part* of one user's windows kept for evaluation (:attr:`Shard.eval`,
  ``index.json``'s ``"eval"`` rows, ``all_windows(split, "eval")``): a training user's
  held-back sentences, and all of a held-out user's windows. The name is the on-disk
  index key of :data:`FORMAT`, so it stays.
- ``evaluate``: the *task kind* (the wire's ``plan.kind``, the artifact's signature) that
  runs a model on a phone's ``eval`` part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.datasets.vocab import OOV, PAD, Vocab

FORMAT = "fedkb-dataset/1"
TRAIN, HELDOUT = "train", "heldout"


@dataclass(frozen=True)
class Shard:
    """One user's data: training windows and local evaluation windows, int32 (n, T+1).

    A held-out user has no training windows; all their windows are for evaluation.
    """

    user: str
    split: str
    train: np.ndarray
    eval: np.ndarray


@dataclass(frozen=True)
class UserEntry:
    user: str
    split: str
    sentences: int
    tokens: int
    train: tuple[int, int]  # (first row, row count) in windows.npy
    eval: tuple[int, int]


def windows_to_xy(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split (n, T+1) windows into int32 inputs, int32 targets and a float32 mask."""
    w = np.asarray(windows, dtype=np.int32)
    y = w[:, 1:]
    return w[:, :-1], y, (y != PAD).astype(np.float32)


def clip_to_vocab(windows: np.ndarray, vocab_size: int) -> np.ndarray:
    """Windows for a model of ``vocab_size`` ids: rarer words (id >= V) become OOV.

    The vocabulary is ordered by frequency, so a model with a smaller V keeps the V-4
    most frequent words of the dataset.
    """
    w = np.asarray(windows, dtype=np.int32)
    return np.where(w >= vocab_size, OOV, w).astype(np.int32)


def make_windows(sentence_ids: list[list[int]], seq_len: int) -> np.ndarray:
    """Cut sentences (already ``BOS + ids + EOS``) into (n, T+1) windows padded with PAD.

    A sentence of L tokens gives windows starting at 0, T, 2T, ...; consecutive windows
    share one token so every target position is predicted exactly once. A window whose
    targets would all be padding is not emitted.
    """
    rows: list[np.ndarray] = []
    width = seq_len + 1
    for seq in sentence_ids:
        for start in range(0, len(seq) - 1, seq_len):
            piece = seq[start : start + width]
            row = np.full(width, PAD, dtype=np.int32)
            row[: len(piece)] = piece
            rows.append(row)
    if not rows:
        return np.zeros((0, width), dtype=np.int32)
    return np.stack(rows)


class Dataset:
    """A prepared dataset opened read-only. Cheap to open; shards load on demand."""

    def __init__(self, path: Path, meta: dict[str, Any], users: dict[str, UserEntry]):
        self.path = path
        self.meta = meta
        self._users = users
        self._windows: np.ndarray | None = None
        self._vocab: Vocab | None = None

    @classmethod
    def open(cls, path: str | Path) -> Dataset:
        path = Path(path)
        meta_file = path / "metadata.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a prepared dataset (no metadata.json)")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown dataset format {meta.get('format')!r}")
        index = json.loads((path / "index.json").read_text(encoding="utf-8"))
        users = {
            u["user"]: UserEntry(u["user"], u["split"], u["sentences"], u["tokens"],
                                 tuple(u["train"]), tuple(u["eval"]))
            for u in index["users"]
        }
        return cls(path, meta, users)

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    @property
    def vocab(self) -> Vocab:
        if self._vocab is None:
            self._vocab = Vocab.load(self.path / "vocab.json")
        return self._vocab

    @property
    def users(self) -> list[str]:
        return list(self._users)

    @property
    def train_users(self) -> list[str]:
        return [u for u, e in self._users.items() if e.split == TRAIN]

    @property
    def heldout_users(self) -> list[str]:
        return [u for u, e in self._users.items() if e.split == HELDOUT]

    def entry(self, user: str) -> UserEntry:
        try:
            return self._users[user]
        except KeyError:
            raise KeyError(f"unknown user {user!r}") from None

    def shard(self, user: str) -> Shard:
        """Load one user's windows (only their rows are read from disk)."""
        e = self.entry(user)
        if self._windows is None:
            self._windows = np.load(self.path / "windows.npy", mmap_mode="r", allow_pickle=False)
        w = self._windows

        def rows(r: tuple[int, int]) -> np.ndarray:
            return np.array(w[r[0] : r[0] + r[1]], dtype=np.int32)

        return Shard(user, e.split, rows(e.train), rows(e.eval))

    def all_windows(self, split: str, part: str = "all") -> np.ndarray:
        """Concatenated windows of every user in ``split`` (``part``: train, eval or all)."""
        parts = []
        for u, e in self._users.items():
            if e.split != split:
                continue
            s = self.shard(u)
            if part in ("train", "all"):
                parts.append(s.train)
            if part in ("eval", "all"):
                parts.append(s.eval)
        width = self.seq_len + 1
        return np.concatenate(parts) if parts else np.zeros((0, width), np.int32)
