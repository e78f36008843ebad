"""Summarize the fleet runs of ``bench/run_compression_fleet.sh``: bytes vs recall.

Reads ``ENC-sSEED.json`` (a ``fedkb simulate --json`` report) and ``ENC-sSEED.err``
(its ``/usr/bin/time -v`` output) from a directory and prints, per encoding, a Markdown
row: seeds that finished (and those that stalled), held-out top-1 per seed and its
median, the report's ``communication`` (uplink Content-Length per update, downlink per
task), and the system effect: mean round wall seconds, late reports and aborts per run,
the phones' mean simulated upload and encode seconds, and CPU seconds per run.

    uv run --frozen --no-sync python bench/summarize_compression_fleet.py /tmp/h17/fleet
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def cpu_seconds(err: Path) -> float | None:
    text = err.read_text(errors="replace") if err.is_file() else ""
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    sys_ = re.search(r"System time \(seconds\): ([\d.]+)", text)
    return float(user.group(1)) + float(sys_.group(1)) if user and sys_ else None


def runs(d: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for f in sorted(d.glob("*-s*.json")):
        enc, seed = f.stem.rsplit("-s", 1)
        try:
            doc = json.loads(f.read_text())
        except ValueError:
            continue  # a run still going, or killed
        doc["_seed"], doc["_cpu"] = int(seed), cpu_seconds(f.with_suffix(".err"))
        out[enc].append(doc)
    return out


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def row(enc: str, docs: list[dict]) -> str:
    done = [d for d in docs if d.get("heldout")]
    stalled = [d["_seed"] for d in docs if not d.get("heldout")]
    top1 = {d["_seed"]: d["heldout"]["top1_recall"] for d in done}
    comm = [d["communication"] for d in docs if d.get("communication")]
    up = statistics.median([c["uplink_bytes_per_update"] for c in comm
                            if c.get("uplink_bytes_per_update")] or [0])
    down = statistics.median([c["downlink_bytes_per_task"] for c in comm
                              if c.get("downlink_bytes_per_task")] or [0])
    rounds = [r for d in done for r in d["rounds"]]
    per_run = lambda k: _mean([sum(r[k] for r in d["rounds"]) for d in done])  # noqa: E731
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    seeds = ", ".join(f"s{s} {100 * v:.2f}" for s, v in sorted(top1.items()))
    if stalled:
        seeds += " (stalled: " + ", ".join(f"s{s}" for s in stalled) + ")"
    med = fmt(100 * statistics.median(top1.values()) if top1 else None, ".2f")
    cells = [enc, seeds, med, f"{up:,.0f}", f"{down:,.0f}",
             fmt(_mean([r["wall_s"] for r in rounds]), ".1f"), fmt(per_run("late"), ".1f"),
             fmt(per_run("aborted"), ".1f"), fmt(_mean([r.get("upload_s") for r in rounds]), ".2f"),
             fmt(_mean([r.get("encode_s") for r in rounds]), ".3f"),
             fmt(_mean([d["_cpu"] for d in done]), ".0f")]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    d = Path(argv[1] if len(argv) > 1 else "/tmp/h17/fleet")
    print("| uplink | held-out top-1 % per seed | median | uplink B/update (wire) | "
          "downlink B/task | round wall s | late/run | aborts/run | upload s (phone) | "
          "encode s (phone) | CPU s/run |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    order = ["float32", "q8", "q4", "q2"]
    all_runs = runs(d)
    for enc in sorted(all_runs, key=lambda e: (order.index(e.split("+")[0]), e)):
        print(row(enc, all_runs[enc]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
