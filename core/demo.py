"""`fedkb demo`: the whole loop on the bundled default corpus.

Today it runs the stages that exist: it prepares the Shakespeare corpus into per-user
shards and prints their statistics. Later stages (export, server, fleet, evaluation)
join here as they land.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole loop on the bundled Shakespeare corpus")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                   help="where the demo writes its dataset, model and reports")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from fedkb.datasets.cli import main_stats
    from fedkb.datasets.prepare import PrepareConfig, prepare

    data_dir = args.workdir / "data"
    print(f"[1/1] preparing the Shakespeare corpus -> {data_dir}")
    result = prepare(PrepareConfig(corpus="shakespeare", out=data_dir))
    print("      " + ("written" if result.changed else "already up to date"))
    main_stats(data_dir, as_json=False)
    return 0
