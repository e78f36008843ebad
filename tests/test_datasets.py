"""The corpus pipeline: readers, tokenizer, vocabulary, windows, splits, store, bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedkb.cli import main
from fedkb.datasets.corpus import MAX_LINE_CHARS, ReadReport, open_corpus, parse_play
from fedkb.datasets.prepare import PrepareConfig, prepare
from fedkb.datasets.store import Dataset, make_windows, windows_to_xy
from fedkb.datasets.tokenize import sentences, tokens
from fedkb.datasets.vocab import BOS, EOS, OOV, PAD, SPECIAL_TOKENS, Vocab
from fedkb.errors import UserError

# --- tokenizer ---------------------------------------------------------------------------


def test_tokens_keep_in_word_apostrophes_and_elisions():
    assert tokens("'Tis true: I don't know o'er the hill.") == [
        "'tis", "true", ":", "i", "don't", "know", "o'er", "the", "hill", "."]


def test_tokens_drop_quotes_and_collapse_dashes():
    assert tokens("'Ladies,'--or \"Sirs\" (now)") == ["ladies", ",", "-", "or", "sirs", "now"]
    assert tokens("It\u2019s HIS") == ["it's", "his"]


def test_sentence_split_keeps_marks_and_drops_empty():
    assert sentences("Go! Where? Home.  ... ,") == [["go", "!"], ["where", "?"], ["home", "."]]
    assert sentences("no end mark") == [["no", "end", "mark"]]
    assert sentences(" . ! ") == []


# --- readers -----------------------------------------------------------------------------

PLAY = """# A Play

## ACT I

### SCENE I. A room.

_Enter HAMLET and HORATIO, with
others_

**HAMLET**
To be, or not to be:
that is the question.

**HORATIO**
_\\[Aside]_
My lord\\--peace.

_Exit_
"""


def test_parse_play_joins_verse_and_drops_directions():
    assert list(parse_play(PLAY)) == [
        ("HAMLET", "To be, or not to be: that is the question."),
        ("HORATIO", "My lord--peace."),
    ]


def test_shakespeare_reader_users_are_play_role_pairs():
    report = ReadReport()
    users = Counter(u for u, _ in open_corpus("shakespeare", report))
    assert "hamlet/HAMLET" in users and users["hamlet/HAMLET"] > 300
    assert 1300 < len(users) < 1500
    assert len(report.corpus_hash) == 64


def test_jsonl_and_dir_readers(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"user": "a", "text": "hi there"}\n\n{"user": "b", "text": "yo"}\n')
    assert list(open_corpus(str(f), ReadReport())) == [("a", "hi there"), ("b", "yo")]
    d = tmp_path / "users"
    d.mkdir()
    (d / "ann.txt").write_text("Hello.\nBye.\n")
    (d / "ben.txt").write_text("Hi.")
    assert list(open_corpus(str(d), ReadReport())) == [("ann", "Hello."), ("ann", "Bye."),
                                                      ("ben", "Hi.")]


# --- vocab and windows -------------------------------------------------------------------


def test_vocab_build_is_frequency_then_alpha_and_maps_oov():
    v = Vocab.build(Counter({"b": 2, "a": 2, "c": 5, "d": 1}), max_words=3)
    assert v.words == (*SPECIAL_TOKENS, "c", "a", "b")
    assert v.encode(["c", "zzz"]) == [4, OOV]
    assert (PAD, BOS, EOS, OOV) == (0, 1, 2, 3)


def test_windows_cover_each_target_once_and_mask_padding():
    seq = [BOS, 5, 6, 7, 8, EOS]  # 5 targets
    w = make_windows([seq], seq_len=3)
    assert w.tolist() == [[BOS, 5, 6, 7], [7, 8, EOS, PAD]]
    x, y, m = windows_to_xy(w)
    assert x.dtype == np.int32 and y.dtype == np.int32 and m.dtype == np.float32
    assert m.sum() == 5
    assert y[m > 0].tolist() == [5, 6, 7, 8, EOS]
    # a sentence ending exactly on a window boundary emits no all-padding window
    assert make_windows([[BOS, 5, 6, EOS]], seq_len=3).shape == (1, 4)


# --- prepare + store ---------------------------------------------------------------------


def test_prepare_round_trip(tiny_data):
    ds = Dataset.open(tiny_data)
    meta = ds.meta
    assert meta["counts"]["users"] == 10
    assert len(ds.heldout_users) == 2 and len(ds.train_users) == 8
    assert set(ds.heldout_users).isdisjoint(ds.train_users)
    assert ds.seq_len == 10 and len(ds.vocab) == meta["vocab_size"] <= 44
    for u in ds.users:
        s = ds.shard(u)
        assert s.train.dtype == np.int32 and s.train.shape[1] == 11
        if u in ds.heldout_users:
            assert len(s.train) == 0 and len(s.eval) > 0
        else:
            assert len(s.train) > 0
    total = sum(len(ds.shard(u).train) + len(ds.shard(u).eval) for u in ds.users)
    assert total == meta["counts"]["windows"]


def test_vocab_comes_from_training_users_only(tiny_jsonl, tmp_path):
    lines = tiny_jsonl.read_text().splitlines()
    lines.append(json.dumps({"user": "zed", "text": "Zyzzyva zyzzyva zyzzyva."}))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines))
    for seed in range(6):
        out = tmp_path / f"d{seed}"
        prepare(PrepareConfig(corpus=str(corpus), out=out, vocab_size=1000, seq_len=8,
                              heldout_fraction=0.2, seed=seed))
        ds = Dataset.open(out)
        assert ("zyzzyva" in ds.vocab.words) == ("zed" in ds.train_users)


def test_split_is_deterministic_and_seeded(tiny_jsonl, tmp_path):
    def heldout(seed, name):
        prepare(PrepareConfig(corpus=str(tiny_jsonl), out=tmp_path / name, seq_len=8,
                              heldout_fraction=0.3, seed=seed))
        return Dataset.open(tmp_path / name).heldout_users

    assert heldout(1, "a") == heldout(1, "b")
    assert any(heldout(1, "a") != heldout(s, f"s{s}") for s in range(2, 6))


def test_training_users_keep_a_local_eval_slice(tiny_data):
    ds = Dataset.open(tiny_data)
    with_eval = [u for u in ds.train_users if len(ds.shard(u).eval) > 0]
    assert len(with_eval) >= len(ds.train_users) // 2


def test_rerun_is_a_noop_and_change_rewrites(tiny_jsonl, tmp_path):
    cfg = PrepareConfig(corpus=str(tiny_jsonl), out=tmp_path / "d", seq_len=8)
    assert prepare(cfg).changed
    mtime = (tmp_path / "d" / "windows.npy").stat().st_mtime_ns
    assert not prepare(cfg).changed
    assert (tmp_path / "d" / "windows.npy").stat().st_mtime_ns == mtime
    again = prepare(PrepareConfig(corpus=str(tiny_jsonl), out=tmp_path / "d", seq_len=9))
    assert again.changed and Dataset.open(tmp_path / "d").seq_len == 9


def test_crash_leftovers_never_look_complete(tiny_jsonl, tmp_path):
    # A crashed run leaves only the temporary directory, which is not a dataset ...
    tmp = tmp_path / ".d.tmp"
    tmp.mkdir()
    (tmp / "windows.npy").write_bytes(b"half")
    with pytest.raises(FileNotFoundError):
        Dataset.open(tmp)
    # ... and the next run cleans it up and writes the real thing.
    prepare(PrepareConfig(corpus=str(tiny_jsonl), out=tmp_path / "d", seq_len=8))
    assert not tmp.exists()
    assert Dataset.open(tmp_path / "d").meta["counts"]["users"] == 10


def test_default_corpus_stats(tmp_path):
    res = prepare(PrepareConfig(out=tmp_path / "shk"))
    c = res.meta["counts"]
    assert 1300 < c["users"] < 1500 and c["heldout_users"] == round(0.1 * c["users"])
    assert res.meta["vocab_size"] == 10_004
    assert 0.0 < res.meta["heldout_oov_rate"] < 0.1
    spu = res.meta["sentences_per_user"]
    assert spu["p10"] <= spu["p50"] <= spu["p90"] <= spu["max"]


# --- bad input ---------------------------------------------------------------------------


def _cli_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_missing_corpus(capsys, tmp_path):
    assert "not found" in _cli_error(capsys, "data", "prepare", "--corpus",
                                     str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))


def test_empty_corpus(capsys, tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    assert "empty" in _cli_error(capsys, "data", "prepare", "--corpus",
                                 str(tmp_path / "e.jsonl"), "--out", str(tmp_path / "o"))
    (tmp_path / "d").mkdir()
    assert "empty" in _cli_error(capsys, "data", "prepare", "--corpus", str(tmp_path / "d"),
                                 "--out", str(tmp_path / "o"))


@pytest.mark.parametrize("line", ['{"user": "a"}', '["a", "b"]', '{"user": true, "text": "x"}',
                                  '{"user": "a", "text": "x"', '{"user": " ", "text": "x"}'])
def test_bad_jsonl_lines(capsys, tmp_path, line):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"user": "ok", "text": "fine."}\n' + line + "\n")
    err = _cli_error(capsys, "data", "prepare", "--corpus", str(f), "--out", str(tmp_path / "o"))
    assert "bad.jsonl:2" in err


def test_non_utf8(capsys, tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(b'{"user": "a", "text": "caf\xe9"}\n')
    assert "not UTF-8" in _cli_error(capsys, "data", "prepare", "--corpus", str(f),
                                     "--out", str(tmp_path / "o"))
    d = tmp_path / "dir"
    d.mkdir()
    (d / "u.txt").write_bytes(b"\xff\xfe hi")
    assert "not UTF-8" in _cli_error(capsys, "data", "prepare", "--corpus", str(d),
                                     "--out", str(tmp_path / "o"))


def test_users_without_sentences_are_skipped_and_counted(tmp_path):
    f = tmp_path / "c.jsonl"
    rows = [{"user": "a", "text": "the cat."}, {"user": "b", "text": "a dog."},
            {"user": "c", "text": "the bird."}, {"user": "mute", "text": "... !!! ,"}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    res = prepare(PrepareConfig(corpus=str(f), out=tmp_path / "o", seq_len=4))
    assert res.meta["counts"]["skipped_users"] == 1 and res.meta["counts"]["users"] == 3


def test_too_few_users(capsys, tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"user": "solo", "text": "only me."}\n')
    assert "at least 2" in _cli_error(capsys, "data", "prepare", "--corpus", str(f),
                                      "--out", str(tmp_path / "o"))


def test_absurdly_long_lines_are_cut_and_counted(tmp_path):
    f = tmp_path / "c.jsonl"
    long_text = "word " * (MAX_LINE_CHARS // 2)
    f.write_text(json.dumps({"user": "a", "text": long_text}) + "\n"
                 + json.dumps({"user": "b", "text": "short."}) + "\n")
    res = prepare(PrepareConfig(corpus=str(f), out=tmp_path / "o", seq_len=8))
    assert res.meta["counts"]["lines_cut"] == 1
    assert res.meta["counts"]["tokens"] <= MAX_LINE_CHARS // 5 + 2


def test_output_dir_holding_something_else(capsys, tiny_jsonl, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    err = _cli_error(capsys, "data", "prepare", "--corpus", str(tiny_jsonl), "--out", str(out))
    assert "not a fedkb dataset" in err
    assert (out / "thesis.tex").read_text() == "do not delete"
    with pytest.raises(UserError):
        prepare(PrepareConfig(corpus=str(tiny_jsonl), out=out / "thesis.tex"))


def test_bad_numbers_and_stats_on_non_dataset(capsys, tmp_path):
    assert "--seq-len" in _cli_error(capsys, "data", "prepare", "--seq-len", "1",
                                     "--out", str(tmp_path / "o"))
    assert "not a prepared dataset" in _cli_error(capsys, "data", "stats", str(tmp_path))


def test_stats_cli_json(capsys, tiny_data):
    assert main(["data", "stats", str(tiny_data), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["users"] == {"train": 8, "heldout": 2, "skipped": 0}
    assert set(st["sentences_per_user"]) == {"p10", "p50", "p90", "max"}
    assert main(["data", "stats", str(tiny_data)]) == 0
    assert "held-out OOV rate" in capsys.readouterr().out


def test_cli_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "data" in capsys.readouterr().out


def test_codec_round_trip_and_corruption():
    from fedkb.codec import CodecError, decode_arrays, encode_arrays

    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int32),
              np.zeros((0, 4), np.float32), np.float32(3.5)]
    blob = encode_arrays(arrays)
    back = decode_arrays(blob)
    assert [a.shape for a in back] == [(2, 3), (2,), (0, 4), ()]
    for a, b in zip(arrays, back, strict=True):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    for bad in (blob[:-1], blob[:20], b"junk" + blob[4:], blob[:30] + b"\x00" + blob[31:]):
        with pytest.raises(CodecError):
            decode_arrays(bad)
    with pytest.raises(CodecError):
        encode_arrays([np.array(["s"], dtype=object)])


def test_dataset_dir_has_only_pickle_free_files(tiny_data):
    names = sorted(p.name for p in Path(tiny_data).iterdir())
    assert names == ["index.json", "metadata.json", "vocab.json", "windows.npy"]
    np.load(Path(tiny_data) / "windows.npy", allow_pickle=False)
