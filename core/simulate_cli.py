"""`fedkb simulate --engine ...`: each way to train, same data, same metric, same report.

Every engine trains on the training users of a prepared dataset and reports top-1/top-3
recall on the held-out users (users that never trained), in the one schema of
:class:`fedkb.metrics.EngineReport`.

Engines live in :data:`ENGINES` (name -> function(args) -> EngineReport); each imports its
heavy dependencies itself, so choosing the n-gram never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from fedkb.errors import UserError
from fedkb.metrics import EngineReport


def _open_dataset(path: Path):
    from fedkb.datasets.store import Dataset

    try:
        return Dataset.open(path)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def run_ngram(args: argparse.Namespace) -> EngineReport:
    """Interpolated Kneser-Ney trigrams on the training users' windows."""
    from fedkb.model.ngram import KneserNeyTrigram

    ds = _open_dataset(args.data)
    t0 = time.perf_counter()
    model = KneserNeyTrigram(len(ds.vocab)).fit(ds.all_windows("train", "train"))
    counts = model.evaluate(ds.all_windows("heldout", "eval"))
    return EngineReport(
        engine="ngram", data=str(args.data),
        heldout=EngineReport.heldout_figures(counts, len(ds.heldout_users)),
        wall_s=round(time.perf_counter() - t0, 3), config={"order": 3, "smoothing": "ikn"})


ENGINES: dict[str, Callable[[argparse.Namespace], EngineReport]] = {"ngram": run_ngram}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="train one way (" + ", ".join(ENGINES) +
                       ") and report held-out recall")
    p.add_argument("--engine", choices=sorted(ENGINES), required=True)
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    report = ENGINES[args.engine](args)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    h = report.heldout
    print(f"{report.engine}: top-1 recall {h['top1_recall']:.2%}, top-3 recall "
          f"{h['top3_recall']:.2%} on {h['users']} held-out users "
          f"({h['iv_targets']:,} targets) in {report.wall_s:.1f}s")
    return 0
