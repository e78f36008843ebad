"""``fedkb privacy audit``: how much a trained model memorised, measured with canaries.

The secret sharer test (Carlini et al. 2019, "The Secret Sharer: Evaluating and Testing
Unintended Memorization in Neural Networks", https://arxiv.org/abs/1802.08232):

1. Make ``k`` random canary sentences of one fixed format, ``<prefix> w1 ... wL`` (the
   prefix "my pin is", the ``w`` drawn uniformly from the model's vocabulary), and put
   each into one training user's shard ``repeats`` times (that user typed it that often;
   the command picks the users: :func:`fedkb.simulation.audit_cli._training_users`).
   As many *control* canaries are made the same way and put nowhere.
2. Train on the changed data with an existing engine (``fleet``: `fedkb server` and the
   emulated phones, the demo's recipe; ``central``: pooled Keras training, fast).
3. Score every canary and ``candidates`` random sequences of the same format by the
   trained model's log-likelihood of the secret words after the prefix, and report

       exposure = log2(|candidates|) − log2(rank)

   where ``rank`` is the canary's place among the candidates and itself (1: it is the
   most likely; ties count against it). ``|candidates|`` counts the canary, so exposure
   lies in ``[0, log2(candidates + 1)]``; a sequence the model never saw has expected
   exposure about ``log2 e ≈ 1.44`` bits, and a memorised one reaches the cap (a larger
   candidate set raises the cap, not the measurement's meaning).

The data is copied into the work directory with the canaries added (the source is never
changed). Without ``--dp`` training is plain; DP training needs the DP-FedAvg / DP-FTRL
wiring of the fleet engine (issue 16), refused with a clear error until it is there.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.datasets.store import Dataset, clip_to_vocab, make_windows
from fedkb.datasets.vocab import BOS, EOS, NUM_SPECIAL, PAD

PREFIX = ("my", "pin", "is")


@dataclass(frozen=True)
class CanaryConfig:
    """The canaries: ``canaries`` inserted (and as many controls), each ``length`` random
    words after ``prefix``, typed ``repeats`` times by its user, ranked among
    ``candidates`` random sequences of the same format."""

    canaries: int = 5
    repeats: int = 20
    length: int = 4
    candidates: int = 999
    prefix: tuple[str, ...] = PREFIX
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.canaries, self.repeats, self.length, self.candidates) < 1:
            raise ValueError("canaries, repeats, length and candidates must be >= 1")


@dataclass(frozen=True)
class Canary:
    secret: tuple[int, ...]  # word ids after the prefix
    user: str | None  # who typed it; None for a control
    text: str


def exposure(canary_score: float, candidate_scores: np.ndarray) -> tuple[float, int]:
    """``(log2(n) − log2(rank), rank)`` of a canary among ``n − 1`` candidates (higher
    score: more likely; a candidate scoring as high as the canary ranks above it)."""
    scores = np.asarray(candidate_scores, dtype=np.float64)
    rank = 1 + int(np.sum(scores >= canary_score))
    return math.log2(len(scores) + 1) - math.log2(rank), rank


def make_canaries(ds: Dataset, vocab_size: int, cfg: CanaryConfig,
                  users: list[str]) -> tuple[list[int], list[Canary]]:
    """The prefix ids and ``2k`` canaries: the first ``k`` for ``users``, then controls."""
    if len(users) < cfg.canaries:
        raise ValueError(f"{cfg.canaries} canaries need as many training users, "
                         f"there are {len(users)}")
    rng = np.random.default_rng(cfg.seed)
    prefix = [int(i) for i in clip_to_vocab(np.array([ds.vocab.encode(cfg.prefix)]),
                                            vocab_size)[0]]
    if len(prefix) + cfg.length + 2 > ds.seq_len + 1:
        raise ValueError(f"a canary of {len(prefix) + cfg.length + 2} tokens does not fit "
                         f"a window of {ds.seq_len + 1}")
    chosen = rng.choice(len(users), size=cfg.canaries, replace=False)
    out = []
    for i in range(2 * cfg.canaries):
        secret = tuple(int(x) for x in rng.integers(NUM_SPECIAL, vocab_size, cfg.length))
        words = ds.vocab.decode(secret)
        user = users[chosen[i]] if i < cfg.canaries else None
        out.append(Canary(secret, user, " ".join([*cfg.prefix, *words])))
    return prefix, out


def canary_window(prefix: list[int], secret: tuple[int, ...], seq_len: int) -> np.ndarray:
    """The one (T+1) window of ``BOS prefix secret EOS``."""
    return make_windows([[BOS, *prefix, *secret, EOS]], seq_len)


def insert_canaries(src: Path, dst: Path, prefix: list[int], canaries: list[Canary],
                    repeats: int) -> Path:
    """A copy of the dataset at ``src`` in ``dst`` with each canary's window appended
    ``repeats`` times to its user's training rows."""
    ds = Dataset.open(src)
    extra: dict[str, np.ndarray] = {}
    for c in canaries:
        if c.user is not None:
            row = canary_window(prefix, c.secret, ds.seq_len)
            extra[c.user] = np.concatenate([extra.get(c.user, row[:0]),
                                            np.repeat(row, repeats, axis=0)])
    index = json.loads((src / "index.json").read_text(encoding="utf-8"))
    rows, at = [], 0
    for u in index["users"]:
        shard = ds.shard(u["user"])
        train = np.concatenate([shard.train, extra.get(u["user"], shard.train[:0])])
        u["train"], u["eval"] = [at, len(train)], [at + len(train), len(shard.eval)]
        rows += [train, shard.eval]
        at += len(train) + len(shard.eval)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    windows = np.concatenate(rows).astype(np.load(src / "windows.npy", mmap_mode="r").dtype)
    np.save(dst / "windows.npy", windows, allow_pickle=False)
    (dst / "index.json").write_text(json.dumps(index), encoding="utf-8")
    shutil.copyfile(src / "vocab.json", dst / "vocab.json")
    meta = dict(ds.meta)
    meta["audit"] = {"canaries": sum(c.user is not None for c in canaries),
                     "repeats": repeats, "source": str(src)}
    meta["files"] = {n: hashlib.sha256((dst / n).read_bytes()).hexdigest()
                     for n in ("vocab.json", "windows.npy", "index.json")}
    (dst / "metadata.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return dst


def secret_log_likelihoods(model: Any, prefix: list[int], secrets: np.ndarray,
                           seq_len: int, batch: int = 128) -> np.ndarray:
    """Σ log p(secret word | everything before it) under a Keras ``model``, one per row
    of ``secrets`` (n, L), each after ``BOS prefix``."""
    import tensorflow as tf

    n, length = secrets.shape
    w = np.full((n, seq_len + 1), PAD, np.int32)
    w[:, 0] = BOS
    w[:, 1:1 + len(prefix)] = prefix
    w[:, 1 + len(prefix):1 + len(prefix) + length] = secrets
    x, y = w[:, :-1], w[:, 1:]
    cols = np.arange(len(prefix), len(prefix) + length)
    out = np.empty(n, np.float64)
    for i in range(0, n, batch):
        logits = tf.gather(model(x[i:i + batch]), cols, axis=1)  # (b, L, V)
        logp = tf.nn.log_softmax(logits, axis=-1).numpy()
        picked = np.take_along_axis(logp, y[i:i + batch, cols][..., None], -1)
        out[i:i + batch] = picked[..., 0].sum(axis=1)
    return out


def score_canaries(model: Any, prefix: list[int], canaries: list[Canary], vocab_size: int,
                   seq_len: int, cfg: CanaryConfig) -> list[dict[str, Any]]:
    """Each canary's exposure among its own ``cfg.candidates`` random candidates."""
    rng = np.random.default_rng(cfg.seed + 1)
    rows = []
    for c in canaries:
        cands = rng.integers(NUM_SPECIAL, vocab_size, (cfg.candidates, cfg.length))
        cands = cands[~np.all(cands == np.array(c.secret), axis=1)]
        scores = secret_log_likelihoods(
            model, prefix, np.vstack([np.array([c.secret]), cands]), seq_len)
        exp, rank = exposure(scores[0], scores[1:])
        rows.append({"text": c.text, "inserted": c.user is not None, "user": c.user,
                     "exposure": round(exp, 4), "rank": rank,
                     "candidates": len(cands) + 1,
                     "max_exposure": round(math.log2(len(cands) + 1), 4),
                     "log_likelihood": round(float(scores[0]), 4),
                     "candidate_log_likelihood_median": round(float(np.median(scores[1:])), 4)})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max exposure of the inserted canaries and of the controls."""
    out: dict[str, Any] = {}
    for name, inserted in (("inserted", True), ("controls", False)):
        e = [r["exposure"] for r in rows if r["inserted"] is inserted]
        out[name] = {"count": len(e), "exposure_mean": round(float(np.mean(e)), 4),
                     "exposure_max": round(float(np.max(e)), 4)} if e else {"count": 0}
    return out


def config_json(cfg: CanaryConfig) -> dict[str, Any]:
    return {**asdict(cfg), "prefix": " ".join(cfg.prefix)}
