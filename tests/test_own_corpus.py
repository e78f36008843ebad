"""A user's own corpus: messy text through the readers, the recipe fitted to it, and the
keyboard figures (recall by frequency, keystroke savings). Corpora are generated here."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from messy_corpus import messages, write_dir, write_jsonl

from fedkb.datasets.corpus import ReadReport, open_corpus
from fedkb.datasets.prepare import PrepareConfig, prepare
from fedkb.datasets.store import Dataset
from fedkb.datasets.tokenize import sentences, tokens
from fedkb.keyboard import Completion


def test_tokenizer_handles_messy_messages():
    toks = tokens("OMG see https://ex.com/a?b=1. mail Bob.S@mail.co.uk :) <3 $3.50 at "
                  "12:30, 10,000 ppl 👍🏽 👨‍👩‍👧 🇫🇷 Café привет 日本 u r gr8?! ok...")
    assert toks == ["omg", "see", "<url>", ".", "mail", "<email>", ":)", "<3", "3.50", "at",
                    "12:30", ",", "10,000", "ppl", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "café",
                    "привет", "日本", "u", "r", "gr8", "?", "ok", "."]
    assert sentences("k") == [["k"]]
    assert sentences("LOL!!! ok") == [["lol", "!"], ["ok"]]


@pytest.fixture(scope="module")
def messy_rows():
    return messages(60, seed=3, big_user_lines=10_000)


def test_jsonl_and_dir_readers_agree_on_messy_text(messy_rows, tmp_path):
    by_user: dict[str, list[str]] = {}
    for user, text in messy_rows:
        by_user.setdefault(user, []).append(text)
    assert min(map(len, by_user.values())) == 1 and max(map(len, by_user.values())) == 10_000
    jsonl = write_jsonl(tmp_path / "chat.jsonl", messy_rows)
    folder = write_dir(tmp_path / "chat", messy_rows)
    seen = {}
    for spec in (str(jsonl), str(folder)):
        got: dict[str, list[str]] = {}
        report = ReadReport()
        for user, text in open_corpus(spec, report):
            got.setdefault(user, []).append(text)
        assert report.messages == len(messy_rows)
        seen[spec] = got
    assert seen[str(jsonl)] == seen[str(folder)] == by_user  # numeric ids, BOM, CRLF, blanks
    res = prepare(PrepareConfig(corpus=str(jsonl), out=tmp_path / "data", vocab_size=500))
    c = res.meta["counts"]
    assert c["users"] == len(by_user) and c["skipped_users"] == 0
    vocab = set(Dataset.open(tmp_path / "data").vocab.words)
    assert {"<url>", "<email>", ":)", "👍🏽", "🇫🇷", "café", "привет", "gr8", "ok"} <= vocab


def test_fitted_recipe_keeps_a_small_population_fed(tmp_path):
    """~300 users: the demo's 20 seats with the default rest need more eligible phones
    than the fleet's own traces have at night (the issue's stalled run); the fit does not."""
    from fedkb.simulation.fit import (
        COVER_MARGIN,
        MAX_COHORT,
        eligible_curve,
        fit_run,
        fit_vocab,
        rest_for,
        round_seconds,
    )

    rows = messages(330, seed=1)
    jsonl = write_jsonl(tmp_path / "chat.jsonl", rows)
    counts = Counter(t for _, text in rows for t in tokens(text))
    vocab = fit_vocab(counts)
    assert 50 < vocab.value < 2_000 and "at least 3 times" in vocab.why
    prepare(PrepareConfig(corpus=str(jsonl), out=tmp_path / "data", vocab_size=vocab.value))
    ds = Dataset.open(tmp_path / "data")
    fit = fit_run(ds)
    n_train = len(ds.train_users)
    assert fit.devices == len(ds.users)
    grid = np.arange(0.0, 48.0, 0.5)
    curve, _ = eligible_curve(ds.path, fit.devices, 0, grid)
    # the demo's recipe from 22:00 UTC: two cohorts of 20 and the default rest
    old = (grid >= 22.0) & (grid <= 28.0)
    need_old = MAX_COHORT * (2 + rest_for(n_train, MAX_COHORT))
    assert curve[old].min() < need_old
    # the fitted one, at its worst moment
    window = fit.rounds * round_seconds(fit.clients_per_round) * 60 / 3600
    new = (grid >= fit.start_hour) & (grid <= fit.start_hour + window)
    need_new = fit.clients_per_round * (2 + fit.rejoin_after_rounds)
    assert curve[new].min() == fit.eligible_min >= need_new * COVER_MARGIN
    assert fit.rejoin_after_rounds >= 1 and 2 <= fit.clients_per_round <= MAX_COHORT
    assert fit.central_epochs > 1.0  # a small corpus: more than one epoch of central
    assert {c.name for c in fit.choices} >= {"clients_per_round", "rejoin_after_rounds",
                                             "start_hour", "rounds", "reporting_deadline_s"}


def _brute_savings(words, scores, target):
    w = words[target]
    for p in range(len(w)):
        cands = [i for i in range(4, len(words)) if words[i].startswith(w[:p])]
        if sum(scores[i] > scores[target] for i in cands) < 3:
            return len(w), len(w) - p
    return len(w), 0


def test_keystroke_savings_and_buckets_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    letters = list("abcde")
    made = {"".join(rng.choice(letters, rng.integers(1, 6))) for _ in range(400)}
    words = ["<pad>", "<bos>", "<eos>", "<oov>", "<url>", *sorted(made)]
    comp = Completion(words)
    scores = rng.random((300, len(words)))
    targets = rng.integers(0, len(words), 300)
    got = comp.counts(scores, targets)
    chars = saved = 0
    for s, t in zip(scores, targets, strict=True):
        if t >= 5:
            a, b = _brute_savings(words, s, t)
            chars, saved = chars + a, saved + b
    assert (got.chars, got.saved) == (chars, saved) and 0 < saved < chars
    # top-1/top-3 per bucket add up to the plain metric's counts
    from fedkb.metrics import recall_from_scores

    plain = recall_from_scores(scores, targets)
    assert (int(got.iv.sum()), int(got.top1.sum()), int(got.top3.sum())) == (
        plain.iv_count, plain.top1_hits, plain.top3_hits)
    f = got.figures()
    assert [b["ranks"] for b in f["by_frequency"]] == ["1-100", "101-1000", "1001+"]
    assert f["by_frequency"][2]["top1_recall"] is None  # no word ranks that low here
    # a model that always puts the target first saves every character
    perfect = np.zeros((4, len(words)))
    perfect[np.arange(4), [5, 6, 7, 8]] = 1.0
    assert comp.counts(perfect, np.array([5, 6, 7, 8])).keystroke_savings == 1.0


def test_init_from_maps_shared_words_and_keeps_new_ones():
    from fedkb.errors import UserError
    from fedkb.simulation.init_from import Source, map_weights

    rng = np.random.default_rng(0)
    src_words = ["<pad>", "<bos>", "<eos>", "<oov>", "the", "cat", "thou"]
    dst_words = ["<pad>", "<bos>", "<eos>", "<oov>", "lol", "the", "cat", "u"]
    src = Source(src_words, {"embedding": rng.random((7, 3)), "rnn_kernel": rng.random((3, 8)),
                             "output_bias": rng.random(7)}, "test")
    init = [rng.random((8, 3)), rng.random((3, 8)), rng.random(8)]
    names = ["embedding", "rnn_kernel", "output_bias"]
    out, stats = map_weights(src, dst_words, names, init)
    assert (stats["shared_words"], stats["new_words"]) == (6, 2)
    np.testing.assert_allclose(out[0][5], src.weights["embedding"][4])  # "the"
    np.testing.assert_allclose(out[0][6], src.weights["embedding"][5])  # "cat"
    np.testing.assert_allclose(out[0][:4], src.weights["embedding"][:4])  # special tokens
    np.testing.assert_allclose(out[0][[4, 7]], init[0][[4, 7]])  # new words keep theirs
    np.testing.assert_allclose(out[1], src.weights["rnn_kernel"])
    np.testing.assert_allclose(out[2][5], src.weights["output_bias"][4])
    bad = Source(src_words, {**src.weights, "rnn_kernel": rng.random((3, 4))}, "other preset")
    with pytest.raises(UserError, match="same --preset"):
        map_weights(bad, dst_words, names, init)


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(900)  # ~2 CPU minutes; a loaded 2-core VM stretched it past 600 s
def test_demo_on_own_corpus_fits_reports_and_starts_from_another_model(tmp_path,
                                                                      tiny_artifact):
    """`fedkb demo --corpus FILE.jsonl --json`: the fitted values are printed and in the
    report, every engine reports the keyboard figures, stdout is the report alone and
    LiteRT's INFO line is not in the output; the run's central model and its server state
    are sources for `--init-from`."""
    import json
    import subprocess
    import sys

    jsonl = write_jsonl(tmp_path / "chat.jsonl", messages(50, seed=5, big_user_lines=2_000))
    base = [sys.executable, "-m", "fedkb", "demo", "--corpus", str(jsonl), "--preset", "tiny",
            "--rounds", "2", "--workers", "1", "--central-epochs", "0.2", "--no-serve",
            "--json", "--init-from", str(tiny_artifact)]  # a model of another corpus
    first = subprocess.run([*base, "--workdir", str(tmp_path / "a")], capture_output=True,
                           text=True, timeout=500)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert report == json.loads((tmp_path / "a" / "report" / "report.json").read_text())
    recipe = report["recipe"]
    assert recipe["fitted"] and recipe["rounds"] == 2 and recipe["central_epochs"] == 0.2
    chosen = {c["name"]: c for c in recipe["choices"]}
    assert {"vocab_size", "clients_per_round", "rejoin_after_rounds", "start_hour"} <= set(
        chosen)
    assert recipe["clients_per_round"] == chosen["clients_per_round"]["value"] < 20
    assert "clients_per_round = " in first.stderr
    assert "XNNPACK" not in first.stderr
    for engine in ("federated", "central", "ngram"):
        h = report[engine]["heldout"]
        assert 0.0 <= h["keystroke_savings"] <= 1.0 and len(h["by_frequency"]) == 3
    assert "keys saved" in report["table"]
    init = recipe["init_from"]
    assert 4 < init["shared_words"] < init["words"] and "federated training starts from" in (
        first.stderr)
    # the run's central model and its server state both start another run, vocabulary mapped
    from fedkb.artifact import Artifact
    from fedkb.simulation.init_from import init_artifact, read_source

    a = tmp_path / "a"
    central = Artifact.load(a / "model-central")
    out, stats = init_artifact(a / "model-tiny", a / "model-central", tmp_path / "warm")
    assert stats["shared_words"] == stats["words"] > 4  # the same corpus: every word shared
    warm = Artifact.load(out)
    assert warm.meta["init_from"] == stats and warm.model_bytes == central.model_bytes
    for got, want in zip(warm.initial_weights(), central.initial_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    fed = read_source(a / "federated" / "server-state")
    assert fed.where.endswith(".safetensors") and fed.words == central.vocab()
