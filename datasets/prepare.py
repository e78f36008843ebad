"""`fedkb data prepare`: from a corpus to per-device shards, atomically and reproducibly.

The pipeline: read ``(user, text)`` messages -> tokenize into sentences -> split users
into training and held-out (seeded) -> build the vocabulary from training users only ->
``BOS + ids + EOS`` per sentence -> fixed-length windows -> write the dataset directory.

Each training user keeps a seeded slice of their own sentences (``eval_fraction``) for
on-device evaluation; held-out users never train. The whole directory is written under
a temporary name and renamed into place, so a crash never leaves a half dataset that
looks complete; re-running with the same corpus and settings changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.datasets import store
from fedkb.datasets.corpus import ReadReport, open_corpus
from fedkb.datasets.tokenize import sentences
from fedkb.datasets.vocab import BOS, EOS, NUM_SPECIAL, OOV, Vocab
from fedkb.errors import UserError


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that decides a dataset's contents (``out`` only decides where)."""

    corpus: str = "shakespeare"
    out: Path = Path("data/shakespeare")
    vocab_size: int = 10_000  # words, not counting the four special tokens
    seq_len: int = 20
    heldout_fraction: float = 0.1
    eval_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if self.vocab_size < 1:
            raise UserError("--vocab-size must be at least 1")
        if not 2 <= self.seq_len <= 512:
            raise UserError("--seq-len must be between 2 and 512")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise UserError("--heldout-fraction must be between 0 and 1 (exclusive)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError("--eval-fraction must be in [0, 1)")

    def fingerprint_fields(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out")
        return d


@dataclass(frozen=True)
class PrepareResult:
    path: Path
    changed: bool  # False when an identical dataset was already there
    meta: dict[str, Any]


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Build the dataset described by ``cfg`` (no-op if it is already there)."""
    cfg.validate()
    out = Path(cfg.out)
    existing = _existing_metadata(out)

    report = ReadReport()
    per_user: dict[str, list[list[str]]] = {}
    for user, text in open_corpus(cfg.corpus, report):
        per_user.setdefault(user, []).extend(sentences(text))
    if report.messages == 0:
        raise UserError(f"corpus {cfg.corpus} is empty")
    usable = sorted(u for u, s in per_user.items() if s)
    skipped_users = len(per_user) - len(usable)
    if len(usable) < 2:
        raise UserError(f"corpus {cfg.corpus} has {len(usable)} user(s) with usable sentences;"
                        " at least 2 are needed (one to train, one to hold out)")

    fingerprint = hashlib.sha256(
        json.dumps([report.corpus_hash, cfg.fingerprint_fields()], sort_keys=True).encode()
    ).hexdigest()
    if existing and existing.get("fingerprint") == fingerprint:
        return PrepareResult(out, False, existing)

    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(usable))
    n_heldout = min(len(usable) - 1, max(1, round(cfg.heldout_fraction * len(usable))))
    heldout = {usable[i] for i in order[:n_heldout]}

    counts: Counter[str] = Counter()
    for u in usable:
        if u not in heldout:
            for s in per_user[u]:
                counts.update(s)
    vocab = Vocab.build(counts, cfg.vocab_size)

    rows: list[np.ndarray] = []
    index: list[dict[str, Any]] = []
    n_rows = 0
    heldout_tokens = heldout_oov = 0
    for u in usable:
        sents = [[BOS, *vocab.encode(s), EOS] for s in per_user[u]]
        split = store.HELDOUT if u in heldout else store.TRAIN
        if split == store.HELDOUT:
            train_s, eval_s = [], sents
            for s in sents:
                heldout_tokens += len(s) - 2
                heldout_oov += sum(1 for t in s if t == OOV)
        else:
            train_s, eval_s = _local_eval_split(sents, cfg.eval_fraction, cfg.seed, u)
        tw, ew = store.make_windows(train_s, cfg.seq_len), store.make_windows(eval_s, cfg.seq_len)
        rows += [tw, ew]
        index.append({
            "user": u, "split": split, "sentences": len(sents),
            "tokens": sum(len(s) - 2 for s in sents),
            "train": [n_rows, len(tw)], "eval": [n_rows + len(tw), len(ew)],
        })
        n_rows += len(tw) + len(ew)

    windows = np.concatenate(rows)
    windows = windows.astype(np.uint16 if len(vocab) <= 65536 else np.int32)
    per_user_sents = np.array([e["sentences"] for e in index])
    meta: dict[str, Any] = {
        "format": store.FORMAT,
        "fingerprint": fingerprint,
        "corpus": cfg.corpus,
        "corpus_hash": report.corpus_hash,
        "config": cfg.fingerprint_fields(),
        "vocab_size": len(vocab),
        "vocab_words": len(vocab) - NUM_SPECIAL,
        "vocab_sha256": vocab.sha256,
        "seq_len": cfg.seq_len,
        "seed": cfg.seed,
        "counts": {
            "users": len(usable),
            "train_users": len(usable) - len(heldout),
            "heldout_users": len(heldout),
            "skipped_users": skipped_users,
            "messages": report.messages,
            "lines_cut": report.lines_cut,
            "sentences": int(per_user_sents.sum()),
            "tokens": int(sum(e["tokens"] for e in index)),
            "windows": int(n_rows),
            "train_windows": int(sum(e["train"][1] for e in index if e["split"] == store.TRAIN)),
            "eval_windows": int(sum(e["eval"][1] for e in index)),
        },
        "heldout_oov_rate": heldout_oov / heldout_tokens if heldout_tokens else 0.0,
        "sentences_per_user": {
            "p10": float(np.percentile(per_user_sents, 10)),
            "p50": float(np.percentile(per_user_sents, 50)),
            "p90": float(np.percentile(per_user_sents, 90)),
            "max": int(per_user_sents.max()),
        },
    }
    _write_atomically(out, vocab, windows, index, meta)
    return PrepareResult(out, True, meta)


def _local_eval_split(sents: list[list[int]], fraction: float, seed: int, user: str):
    """A training user's sentences -> (train, local eval); seeded by (seed, user)."""
    n_eval = math.floor(fraction * len(sents))
    if fraction > 0 and n_eval == 0 and len(sents) >= 2:
        n_eval = 1
    if n_eval == 0:
        return sents, []
    digest = hashlib.sha256(f"{seed}:{user}".encode()).digest()
    pick = set(np.random.default_rng(int.from_bytes(digest[:8], "little"))
               .choice(len(sents), n_eval, replace=False).tolist())
    return ([s for i, s in enumerate(sents) if i not in pick],
            [s for i, s in enumerate(sents) if i in pick])


def _existing_metadata(out: Path) -> dict[str, Any] | None:
    """The metadata of a dataset already at ``out``; refuse a directory holding other things."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    meta_file = out / "metadata.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = None
        if isinstance(meta, dict) and meta.get("format") == store.FORMAT:
            return meta
    if any(out.iterdir()):
        raise UserError(f"output {out} is not empty and is not a fedkb dataset; "
                        "choose another --out or remove it")
    return None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomically(out: Path, vocab: Vocab, windows: np.ndarray,
                      index: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():  # left by a crashed run
        shutil.rmtree(tmp)
    tmp.mkdir()
    vocab.save(tmp / "vocab.json")
    np.save(tmp / "windows.npy", windows, allow_pickle=False)
    (tmp / "index.json").write_text(json.dumps({"users": index}), encoding="utf-8")
    meta["files"] = {n: _file_sha256(tmp / n) for n in ("vocab.json", "windows.npy", "index.json")}
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
