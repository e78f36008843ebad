"""Benchmark the corpus pipeline: full Shakespeare prepare, and loading one user's shard.

    uv run python bench/bench_data.py [--repeat 3]

Prepare is timed into a fresh directory each time (no no-op shortcut). Shard loading is
timed for every training user; memory is the peak traced allocation of one load
(tracemalloc), next to the shard's own size, to show it scales with the shard.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from fedkb.datasets.prepare import PrepareConfig, prepare
from fedkb.datasets.store import Dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            prepare(PrepareConfig(out=Path(tmp) / f"d{i}"))
            times.append(time.perf_counter() - t0)
        ds = Dataset.open(Path(tmp) / "d0")
        users = ds.train_users
        ds.shard(users[0])  # open the memory map once
        load = []
        for u in users:
            t0 = time.perf_counter()
            ds.shard(u)
            load.append((time.perf_counter() - t0) * 1000)
        cold = []
        for u in users[:100]:
            t0 = time.perf_counter()
            Dataset.open(Path(tmp) / "d0").shard(u)
            cold.append((time.perf_counter() - t0) * 1000)
        big = max(users, key=lambda u: ds.entry(u).train[1])
        small = min(users, key=lambda u: ds.entry(u).train[1])
        mem = {}
        for name, u in (("largest", big), ("smallest", small)):
            tracemalloc.start()
            s = ds.shard(u)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            mem[name] = {"user": u, "shard_bytes": int(s.train.nbytes + s.eval.nbytes),
                         "peak_alloc_bytes": int(peak)}
        corpus_bytes = (Path(tmp) / "d0" / "windows.npy").stat().st_size
    print(json.dumps({
        "prepare_s": {"min": round(min(times), 2), "all": [round(t, 2) for t in times]},
        "shard_load_ms": {"p50": round(float(np.percentile(load, 50)), 3),
                          "p99": round(float(np.percentile(load, 99)), 3),
                          "max": round(max(load), 3)},
        "open_dataset_and_load_shard_ms": {"p50": round(float(np.percentile(cold, 50)), 3),
                                           "max": round(max(cold), 3)},
        "memory": mem,
        "windows_file_bytes": corpus_bytes,
    }, indent=2))


if __name__ == "__main__":
    main()
