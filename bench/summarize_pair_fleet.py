"""Summarize ``bench/run_secagg_fleet.sh``: one mode against its base, seed by seed.

Reads ``MODE-SEED.json`` (a ``fedkb simulate --json`` report) and ``MODE-SEED.time``
(``/usr/bin/time -f "%e %U %S"``: wall, user, system) for the two modes and prints a
Markdown row per seed: held-out top-1 / top-3 of each, wall and CPU seconds of each, the
modulus bits of a secure run, the run's epsilon (or its hypothetical population's), the
rounds committed and (secure runs) aborted; then the median wall and CPU ratios and the
mean top-1 / top-3 differences (mode - base) with their standard deviation over seeds.

    uv run --frozen --no-sync python bench/summarize_pair_fleet.py /tmp/ddp ddp cdp
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def load(d: Path, mode: str, seed: str) -> dict[str, Any] | None:
    f = d / f"{mode}-{seed}.json"
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return None  # still running, killed or stalled without a report
    timing = d / f"{mode}-{seed}.time"
    t = timing.read_text().split() if timing.is_file() else []
    doc["_wall"], doc["_cpu"] = ((float(t[0]), float(t[1]) + float(t[2])) if len(t) >= 3
                                 else (None, None))
    return doc


def epsilon(doc: dict[str, Any]) -> str:
    p = doc.get("privacy")
    if not p:
        return "–"
    hyp = (p.get("hypothetical_population") or {}).get("epsilon")
    eps = p.get("epsilon")
    if hyp is not None:
        return f"{hyp:.2f} (hyp.)"
    return "inf" if eps is None else f"{eps:.2f}"


def cells(doc: dict[str, Any] | None) -> list[str]:
    if doc is None or not doc.get("heldout"):
        return ["–"] * 6
    h, sa = doc["heldout"], doc.get("secure_aggregation") or {}
    committed = len(doc.get("rounds", []))  # the report's rows are committed rounds
    return [f"{100 * h['top1_recall']:.2f} / {100 * h['top3_recall']:.2f}",
            f"{doc['_wall']:.0f} / {doc['_cpu']:.0f}" if doc["_wall"] else "–",
            str(sa.get("modulus_bits") or "–"), epsilon(doc),
            f"{committed} + {sa.get('rounds_aborted', '–')}", ""]


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__)
        return 2
    d, mode, base = Path(argv[1]), argv[2], argv[3]
    seeds = sorted({f.stem.rsplit("-", 1)[1] for f in d.glob(f"{mode}-*.json")}, key=int)
    print(f"| seed | {mode} top-1 / top-3 % | {base} top-1 / top-3 % | {mode} wall / CPU s | "
          f"{base} wall / CPU s | k bits ({mode} / {base}) | epsilon ({mode} / {base}) | "
          f"rounds committed + aborted ({mode} / {base}) |")
    print("|---|---|---|---|---|---|---|---|")
    walls, cpus, d1, d3 = [], [], [], []
    for s in seeds:
        a, b = load(d, mode, s), load(d, base, s)
        ca, cb = cells(a), cells(b)
        print(f"| {s} | {ca[0]} | {cb[0]} | {ca[1]} | {cb[1]} | {ca[2]} / {cb[2]} | "
              f"{ca[3]} / {cb[3]} | {ca[4]} / {cb[4]} |")
        if a and b and a.get("heldout") and b.get("heldout"):
            if a["_wall"] and b["_wall"]:
                walls.append(a["_wall"] / b["_wall"])
                cpus.append(a["_cpu"] / b["_cpu"])
            d1.append(100 * (a["heldout"]["top1_recall"] - b["heldout"]["top1_recall"]))
            d3.append(100 * (a["heldout"]["top3_recall"] - b["heldout"]["top3_recall"]))
    if walls:
        print(f"\nwall {mode}/{base}: median {statistics.median(walls):.2f}x "
              f"({min(walls):.2f}-{max(walls):.2f}); CPU median {statistics.median(cpus):.2f}x")
    if len(d1) > 1:
        print(f"top-1 {mode} - {base}: {statistics.mean(d1):+.2f} ± {statistics.stdev(d1):.2f}; "
              f"top-3 {statistics.mean(d3):+.2f} ± {statistics.stdev(d3):.2f} "
              f"(mean ± sd over {len(d1)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
