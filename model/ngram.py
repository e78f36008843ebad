"""Interpolated Kneser-Ney trigram model: the classic keyboard baseline.

Chen & Goodman (1998), "An empirical study of smoothing techniques for language
modeling", interpolated Kneser-Ney with one absolute discount per order,
``D = n1 / (n1 + 2 n2)``. Hard et al. (2018) compare their federated CIFG LSTM with an
n-gram model of this family (13.0% top-1 recall vs 16.4% for FL).

It is trained on the same token windows the LSTM trains on (training users only) and
scored with the same metric on the same held-out windows: the context of a target is
the (up to) two tokens before it inside its window. A window's first token gets a
virtual PAD before it, as a sentence start does in classic n-gram training.

Pure NumPy: counts are int64-keyed sorted arrays, lookups are binary searches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedkb.artifact import NUM_SPECIAL, PAD
from fedkb.metrics import RecallCounts


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 + n2 else 0.5


@dataclass
class _Level:
    """Sparse entries of one order grouped by context: ctx -> (words, adjusted prob)."""

    ctx: np.ndarray  # sorted unique context keys
    start: np.ndarray  # ctx i owns rows start[i]:start[i+1]
    words: np.ndarray
    prob: np.ndarray  # max(c - D, 0) / total(ctx)
    gamma: np.ndarray  # D * distinct(ctx) / total(ctx): the weight passed to the lower order

    def lookup(self, key: int) -> tuple[np.ndarray, np.ndarray, float] | None:
        i = int(np.searchsorted(self.ctx, key))
        if i == len(self.ctx) or self.ctx[i] != key:
            return None
        s, e = self.start[i], self.start[i + 1]
        return self.words[s:e], self.prob[s:e], float(self.gamma[i])


def _level(ctx_keys: np.ndarray, words: np.ndarray, counts: np.ndarray) -> _Level:
    """Build one order from (context, word) -> count entries sorted by context then word."""
    d = _discount(counts)
    ctx, start, distinct = np.unique(ctx_keys, return_index=True, return_counts=True)
    total = np.add.reduceat(counts, start).astype(np.float64)
    per_row_total = np.repeat(total, distinct)
    prob = np.maximum(counts - d, 0.0) / per_row_total
    gamma = d * distinct / total
    return _Level(ctx, np.append(start, len(words)), words.astype(np.int32), prob, gamma)


class KneserNeyTrigram:
    """Fit with :meth:`fit` on (n, T+1) windows; :meth:`scores` gives P(w | u, v) over V."""

    def __init__(self, vocab_size: int):
        self.V = int(vocab_size)

    def fit(self, windows: np.ndarray) -> KneserNeyTrigram:
        V = self.V
        w = np.asarray(windows, dtype=np.int64)
        w = np.concatenate([np.full((len(w), 1), PAD, np.int64), w], axis=1)
        u, v, x = w[:, :-2].ravel(), w[:, 1:-1].ravel(), w[:, 2:].ravel()
        real = (v != PAD) & (x != PAD)  # padding is not text
        u, v, x = u[real], v[real], x[real]
        # trigram counts c(u, v, w)
        tri, tri_c = np.unique((u * V + v) * V + x, return_counts=True)
        self.tri = _level(tri // V, tri % V, tri_c)
        # bigram continuation counts N1+(. v w): distinct u per (v, w)
        bi, bi_c = np.unique(tri % (V * V), return_counts=True)
        self.bi = _level(bi // V, bi % V, bi_c)
        # unigram continuation N1+(. w): distinct v per w, plus a little uniform mass
        cont = np.bincount(bi % V, minlength=V).astype(np.float64)
        cont[:NUM_SPECIAL] = 0.0
        p1 = cont / max(cont.sum(), 1.0)
        self.p1 = 0.99 * p1 + 0.01 / V
        return self

    def scores(self, u: int, v: int) -> np.ndarray:
        """P(. | u, v) as a dense (V,) vector."""
        V = self.V
        b = self.bi.lookup(v)
        t = self.tri.lookup(u * V + v)
        g3 = t[2] if t else 1.0
        g2 = b[2] if b else 1.0
        p = self.p1 * (g3 * g2)
        if b:
            p[b[0]] += g3 * b[1]
        if t:
            p[t[0]] += t[1]
        return p

    def score_batches(self, windows: np.ndarray, batch: int = 512):
        """``(scores (n, V), targets (n,))`` over the word targets of ``windows``, ``batch``
        rows at a time (for :mod:`fedkb.keyboard`)."""
        w = np.asarray(windows, dtype=np.int64)
        rows: list[np.ndarray] = []
        targets: list[int] = []
        for row in w:
            for t in range(len(row) - 1):
                target = int(row[t + 1])
                if target < NUM_SPECIAL:
                    continue
                rows.append(self.scores(int(row[t - 1]) if t > 0 else PAD, int(row[t])))
                targets.append(target)
                if len(rows) == batch:
                    yield np.stack(rows), np.array(targets)
                    rows, targets = [], []
        if rows:
            yield np.stack(rows), np.array(targets)

    def evaluate(self, windows: np.ndarray) -> RecallCounts:
        """Top-1/top-3 recall over the in-vocabulary targets of ``windows``."""
        w = np.asarray(windows, dtype=np.int64)
        total = RecallCounts()
        cache: dict[tuple[int, int], np.ndarray] = {}
        for row in w:
            for t in range(len(row) - 1):
                target = int(row[t + 1])
                if target < NUM_SPECIAL:
                    continue
                ctx = (int(row[t - 1]) if t > 0 else PAD, int(row[t]))
                s = cache.get(ctx)
                if s is None:
                    s = self.scores(*ctx)
                    s[:NUM_SPECIAL] = -1.0
                    if len(cache) < 50_000:
                        cache[ctx] = s
                higher = int((s > s[target]).sum())
                total = total + RecallCounts(1, int(higher < 1), int(higher < 3))
        return total
