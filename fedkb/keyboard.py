"""What a keyboard user feels, beside top-k recall: recall by word frequency and the
keystrokes that in-word completion saves.

- **Recall by frequency bucket**: the vocabulary is ranked by training count (ids after
  the four special tokens are in that order, :mod:`fedkb.datasets.vocab`); top-1/top-3
  recall over the targets whose word ranks 1-100, 101-1,000 and 1,001 or below. Top-1
  recall over all words is dominated by "the", "," and "i"; the rarer buckets say whether
  a model learned anything an n-gram did not.
- **Keystroke savings** (the share of characters not typed): for each target word the
  user types its letters one at a time; before each letter the keyboard shows the top 3
  words of the model's distribution *that start with the letters typed so far*. The
  first time the word is among them the user taps it and saves the letters not yet
  typed (all of them if it was suggested before the first letter). Savings = saved
  characters / characters of all target words. Only in-vocabulary targets count (the
  text of an out-of-vocabulary word is not in the data); class tokens such as ``<url>``
  are not typed letter by letter and are left out; special tokens are never suggested.

Pure NumPy, on any engine's scores ``(n, V)``: the n-gram's probabilities, the Keras
model's logits. Prefix sets are contiguous ranges of the alphabetically sorted
vocabulary, so each "how many candidates score higher" is a difference of a cumulative
sum over the range of the word's first letter.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkb.artifact import NUM_SPECIAL

BUCKETS = ((1, 100), (101, 1_000), (1_001, None))  # frequency ranks, inclusive
SUGGESTIONS = 3  # a keyboard's suggestion strip
FIGURES = ("by_frequency", "keystroke_savings", "completion_chars", "completion_saved_chars")
_CHUNK = 512  # rows scored at a time (a chunk's cumulative sum is _CHUNK x V int32)


def _zeros() -> np.ndarray:
    return np.zeros(len(BUCKETS), np.int64)


@dataclass
class KeyboardCounts:
    """Additive sums over target positions; combine with ``+``."""

    iv: np.ndarray = field(default_factory=_zeros)  # in-vocabulary targets per bucket
    top1: np.ndarray = field(default_factory=_zeros)
    top3: np.ndarray = field(default_factory=_zeros)
    chars: int = 0  # characters of the targets that are typed letter by letter
    saved: int = 0  # of them, characters a top-3 completion saved

    def __add__(self, other: KeyboardCounts) -> KeyboardCounts:
        return KeyboardCounts(self.iv + other.iv, self.top1 + other.top1,
                              self.top3 + other.top3, self.chars + other.chars,
                              self.saved + other.saved)

    @property
    def keystroke_savings(self) -> float:
        return self.saved / self.chars if self.chars else 0.0

    def figures(self) -> dict[str, Any]:
        """The report's ``by_frequency`` list and ``keystroke_savings``."""
        total = int(self.iv.sum())
        rows = []
        for (lo, hi), n, h1, h3 in zip(BUCKETS, self.iv, self.top1, self.top3, strict=True):
            rows.append({"ranks": f"{lo}-{hi}" if hi else f"{lo}+",
                         "share": round(int(n) / total, 5) if total else 0.0,
                         "targets": int(n),
                         "top1_recall": round(int(h1) / n, 5) if n else None,
                         "top3_recall": round(int(h3) / n, 5) if n else None})
        return {"by_frequency": rows,
                "keystroke_savings": round(self.keystroke_savings, 5),
                "completion_chars": self.chars, "completion_saved_chars": self.saved}


class Completion:
    """The keyboard figures for one vocabulary (``words[i]`` is id i)."""

    def __init__(self, words: Sequence[str]):
        self.V = len(words)
        ids = [i for i in range(NUM_SPECIAL, self.V)]
        self.order = np.array(sorted(ids, key=lambda i: words[i]), np.int64)
        sorted_words = [words[i] for i in self.order]
        typed = [not (w.startswith("<") and w.endswith(">")) for w in words]
        self.length = np.array([len(w) if typed[i] and i >= NUM_SPECIAL else 0
                                for i, w in enumerate(words)], np.int64)
        L = max(1, int(self.length.max()))
        # lo/hi[i, p]: the sorted range of words starting with words[i][:p]
        self.lo = np.zeros((self.V, L), np.int64)
        self.hi = np.zeros((self.V, L), np.int64)
        for i in ids:
            w = words[i]
            for p in range(int(self.length[i])):
                pre = w[:p]
                self.lo[i, p] = bisect.bisect_left(sorted_words, pre)
                self.hi[i, p] = bisect.bisect_left(sorted_words, pre + "\U0010ffff")
        rank = np.arange(self.V) - NUM_SPECIAL + 1
        self.bucket = np.full(self.V, -1, np.int64)
        for b, (lo, hi) in enumerate(BUCKETS):
            self.bucket[(rank >= lo) & ((rank <= hi) if hi else True)] = b

    def counts(self, scores: np.ndarray, targets: np.ndarray) -> KeyboardCounts:
        """Figures of rows ``scores`` (n, V) against ``targets`` (n,); non-word rows skipped."""
        targets = np.asarray(targets, np.int64)
        keep = targets >= NUM_SPECIAL
        scores, targets = np.asarray(scores)[keep], targets[keep]
        out = KeyboardCounts()
        for s in range(0, len(targets), _CHUNK):
            out = out + self._chunk(scores[s:s + _CHUNK], targets[s:s + _CHUNK])
        return out

    def _chunk(self, scores: np.ndarray, t: np.ndarray) -> KeyboardCounts:
        n = len(t)
        sc = np.asarray(scores, np.float32)
        ts = sc[np.arange(n), t]
        overall = (sc[:, NUM_SPECIAL:] > ts[:, None]).sum(axis=1)  # words scoring higher
        out = KeyboardCounts()
        b = self.bucket[t]
        for k in range(len(BUCKETS)):
            sel = b == k
            out.iv[k] = int(sel.sum())
            out.top1[k] = int((overall[sel] < 1).sum())
            out.top3[k] = int((overall[sel] < SUGGESTIONS).sum())
        length = self.length[t]
        first = np.where((overall < SUGGESTIONS) & (length > 0), 0, -1)  # before a letter
        # after one letter or more every candidate shares the first letter: one cumulative
        # sum per first-letter group, over that group's alphabetical range only
        todo = np.nonzero((first < 0) & (length > 1))[0]
        lo1 = self.lo[t[todo], 1]
        for start in np.unique(lo1):
            rows = todo[lo1 == start]
            stop = int(self.hi[t[rows[0]], 1])
            h = sc[rows][:, self.order[start:stop]] > ts[rows, None]
            cs = np.zeros((len(rows), stop - start + 1), np.int32)
            np.cumsum(h, axis=1, out=cs[:, 1:])
            tr = t[rows]
            p = np.arange(self.lo.shape[1])[None, :]
            valid = (p >= 1) & (p < length[rows][:, None])
            hi = np.where(valid, self.hi[tr] - start, 0)
            lo = np.where(valid, self.lo[tr] - start, 0)
            cnt = np.take_along_axis(cs, hi, axis=1) - np.take_along_axis(cs, lo, axis=1)
            ok = valid & (cnt < SUGGESTIONS)
            first[rows] = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
        out.chars = int(length.sum())
        out.saved = int(np.where(first >= 0, length - first, 0).sum())
        return out


def windows_counts(completion: Completion, score_batches) -> KeyboardCounts:
    """Sum :meth:`Completion.counts` over ``(scores, targets)`` batches."""
    total = KeyboardCounts()
    for scores, targets in score_batches:
        total = total + completion.counts(scores, targets)
    return total
