"""Secure aggregation cost (fedkb.secagg) with in-process emulated phones.

Every phone is a :class:`fedkb.secagg.client.Phone` object in this one process (no HTTP,
no separate processes: the HTTP phases come later), and every message goes through its
JSON form, so "bytes" are the JSON bodies. Compute is thread CPU time of each party's
own calls (``time.thread_time``), serialization included; wall time on a shared VM is
not reported per party. Inputs are random 8-bit codes as residues in Z_{2^k},
``k = modulus_bits(8, n)`` (the field encoding of fedkb.compression.field); making
them (quantizing) is the compression stage's cost and is not counted. Dropouts happen
after ShareKeys, before the masked input: the server's worst case (Bonawitz et al.
2017, sec. 7), since it must rebuild each dropped phone's s_SK and recompute its
pairwise masks with every surviving neighbour. Each cell checks the sum is exact.

    uv run --frozen --no-sync python bench/bench_secagg.py --n 20 100 --dims 100000 \
        --dropout 0 0.1 0.3 --mode full plus --json /tmp/secagg.jsonl

Columns: phone CPU (mean over phones that finished), bytes up/down per phone, server
CPU (all phases; "unmask" is the reconstruction and mask removal), expansion = a
phone's masked-input JSON body over the plain quantized upload's (base64 of the packed
8-bit codes), and total up / plain.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Iterator, Mapping

import numpy as np

from fedkb.compression.field import modulus_bits, sum_mod
from fedkb.secagg.graph import default_degree
from fedkb.secagg.inprocess import run_round
from fedkb.secagg.params import RoundParams
from fedkb.secagg.server import SumResult

BITS = 8


class LazyInputs(Mapping[int, np.ndarray]):
    """Each phone's codes, drawn on demand from its own seed (500 x 1.36M would not fit)."""

    def __init__(self, ids: tuple[int, ...], dim: int, k: int) -> None:
        self.ids, self.dim, self.k = ids, dim, k

    def __getitem__(self, u: int) -> np.ndarray:
        rng = np.random.default_rng(u)
        return rng.integers(0, 1 << BITS, self.dim, dtype=np.uint32)

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def cell(n: int, dim: int, dropout: float, mode: str, degree: int | None, seed: int) -> dict:
    ids = tuple(range(1, n + 1))
    k = modulus_bits(BITS, n)
    deg = None if mode == "full" else (degree or default_degree(n))
    t = n // 2 + 1
    p = RoundParams(f"bench-{n}-{dim}", ids, t, dim, k, deg, bytes(32) if deg else b"")
    rng = np.random.default_rng(seed)
    gone = set(rng.choice(np.arange(1, n + 1), round(dropout * n), replace=False).tolist())
    inputs = LazyInputs(ids, dim, k)
    t0 = time.perf_counter()
    run = run_round(p, inputs, drop={"after_shares": gone})
    wall = time.perf_counter() - t0
    out = run.outcome
    row = {"n": n, "dim": dim, "dropout": dropout, "mode": mode, "degree": deg,
           "threshold": t, "share_threshold": p.share_threshold, "k": k, "wall_s": wall}
    if not isinstance(out, SumResult):
        row["aborted"] = out.reason
        return row
    exact = np.array_equal(out.total, sum_mod((inputs[u] for u in out.survivors), k))
    done = [c for u, c in run.phone_cost.items() if u in out.survivors]
    plain = len(json.dumps(base64.b64encode(bytes(dim * BITS // 8)).decode()))
    row.update({
        "exact": exact,
        "phone_cpu_s": float(np.mean([c.cpu_s for c in done])),
        "phone_up_bytes": float(np.mean([c.up for c in done])),
        "phone_down_bytes": float(np.mean([c.down for c in done])),
        "server_cpu_s": sum(run.server_cpu_s.values()),
        "server_unmask_cpu_s": run.server_cpu_s.get("unmasking", 0.0),
        "expansion_masked": float(np.mean([c.masked_input_bytes for c in done])) / plain,
        "expansion_total": float(np.mean([c.up for c in done])) / plain,
        "dropouts": out.dropouts,
    })
    return row


def fmt(r: dict) -> str:
    head = (f"| {r['n']} | {r['dim']:,} | {r['dropout']:.0%} | {r['mode']}"
            f"{'' if r['degree'] is None else ' k=' + str(r['degree'])} |")
    if "aborted" in r:
        return head + f" aborted: {r['aborted']} |||||||"
    mb = 1 / 2**20
    return (head + f" {r['phone_cpu_s']:.3f} | {r['phone_up_bytes'] * mb:.2f} |"
            f" {r['phone_down_bytes'] * mb:.3f} | {r['server_cpu_s']:.2f} |"
            f" {r['server_unmask_cpu_s']:.2f} | {r['expansion_masked']:.2f} |"
            f" {r['expansion_total']:.2f} | {'yes' if r['exact'] else 'NO'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--dims", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--mode", nargs="+", choices=["full", "plus"], default=["full", "plus"])
    ap.add_argument("--degree", type=int, default=None,
                    help="SecAgg+ degree (even); default ~3 log2 n")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append one JSON line per cell here")
    a = ap.parse_args()
    print("| n | dim | dropout | mode | phone CPU s | up MiB | down MiB | server CPU s "
          "| of which unmask | expansion (masked) | expansion (all up) | exact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in a.n:
        for dim in a.dims:
            for mode in a.mode:
                for d in a.dropout:
                    if mode == "plus" and (a.degree or default_degree(n)) >= n - 1:
                        continue
                    r = cell(n, dim, d, mode, a.degree, a.seed)
                    print(fmt(r), flush=True)
                    if a.json:
                        with open(a.json, "a") as f:
                            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
