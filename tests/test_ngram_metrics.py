"""The NumPy keyboard metric and the Kneser-Ney trigram baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedkb.cli import main
from fedkb.metrics import RecallCounts, recall_from_scores
from fedkb.model.ngram import KneserNeyTrigram


def test_recall_counts_exactly_on_a_tiny_case():
    scores = np.array([
        [9, 9, 9, 9, 5, 4, 3, 2],  # specials score high but are never suggested
        [0, 0, 0, 0, 1, 2, 3, 4],  # target 5 is third
        [0, 0, 0, 0, 1, 2, 3, 4],  # target 4 is fourth
        [0, 0, 0, 0, 1, 1, 1, 1],  # ties: nobody is strictly higher -> a hit
        [0, 0, 0, 0, 1, 2, 3, 4],  # target OOV (3): not counted
        [0, 0, 0, 0, 1, 2, 3, 4],  # target PAD: not counted
    ], dtype=float)
    targets = np.array([4, 5, 4, 6, 3, 0])
    c = recall_from_scores(scores, targets)
    assert c == RecallCounts(iv_count=4, top1_hits=2, top3_hits=3)
    assert c.top1_recall == 0.5 and c.top3_recall == 0.75
    assert (c + c).iv_count == 8


def _windows(sentences, T=6):
    from fedkb.datasets.store import make_windows

    return make_windows([[1, *s, 2] for s in sentences], T)


def test_kneser_ney_is_a_distribution_and_learns_trigrams():
    V = 12
    train = _windows([[4, 5, 6], [4, 5, 6], [4, 5, 7], [8, 5, 9], [10, 11, 4]])
    m = KneserNeyTrigram(V).fit(train)
    for ctx in [(4, 5), (8, 5), (0, 1), (11, 11), (1, 4)]:
        p = m.scores(*ctx)
        assert p.shape == (V,) and np.all(p > 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
    p = m.scores(4, 5)
    assert np.argmax(p[4:]) + 4 == 6 and p[6] > p[7] > p[9]
    assert np.argmax(m.scores(8, 5)[4:]) + 4 == 9


def test_ngram_evaluate_matches_the_reference_metric():
    rng = np.random.default_rng(0)
    V = 15
    sents = [list(rng.integers(4, V, size=rng.integers(2, 9))) for _ in range(60)]
    m = KneserNeyTrigram(V).fit(_windows(sents[:40]))
    held = _windows(sents[40:])
    scores, targets = [], []
    for row in held:
        for t in range(len(row) - 1):
            scores.append(m.scores(int(row[t - 1]) if t else 0, int(row[t])))
            targets.append(row[t + 1])
    assert m.evaluate(held) == recall_from_scores(np.array(scores), np.array(targets))


def test_simulate_ngram_cli(capsys, tiny_data):
    assert main(["simulate", "--engine", "ngram", "--data", str(tiny_data), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["engine"] == "ngram" and rep["heldout"]["users"] == 2
    assert rep["heldout"]["iv_targets"] > 0
    assert 0.0 < rep["heldout"]["top3_recall"] <= 1.0
    assert rep["heldout"]["top1_recall"] <= rep["heldout"]["top3_recall"]
