"""Micro-benchmark of the update encodings (fedkb.compression) on the `small` model's shapes.

For each encoding (float32, q8, q4, q2, each with and without the Hadamard rotation) it
encodes a synthetic update of the `small` model's 1,356,144 float32 values and decodes
it again, and prints encoded bytes, compression ratio, encode and decode milliseconds and
the relative L2 error ``|decode(encode(x)) - x| / |x|``, each the median of ``--runs``.
The update is drawn i.i.d. from a Gaussian or, to show what rotation is for, a
heavy-tailed Student-t (df=3); real deltas sit between. NumPy only; no model is built.

    uv run --frozen --no-sync python bench/bench_compression.py --runs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from fedkb.compression.encoding import Encoding, decode_update, encode_update_measured

SMALL_SHAPES = [(10000, 96), (96, 1024), (256, 1024), (1024,), (256, 96), (96,), (10000,)]
NAMES = ["float32", "q8", "q4", "q2"]


def synthetic_update(dist: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if dist == "gaussian":
        draw = rng.standard_normal
    else:
        def draw(shape):
            return rng.standard_t(3, shape)
    return [(draw(s) * 1e-2).astype(np.float32) for s in SMALL_SHAPES]


def rel_l2(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    num = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a, b, strict=True))
    den = sum(float(np.sum(x.astype(np.float64) ** 2)) for x in a)
    return (num / den) ** 0.5


def bench_one(arrays: list[np.ndarray], enc: Encoding, runs: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    enc_s, dec_s, errs, size, raw = [], [], [], 0, 0
    for r in range(runs):
        body, report = encode_update_measured(arrays, enc, seed + r, rng)
        t0 = time.perf_counter()
        out = decode_update(body, SMALL_SHAPES, enc, seed + r)
        dec_s.append(time.perf_counter() - t0)
        enc_s.append(report.encode_s)
        errs.append(rel_l2(arrays, out))
        size, raw = report.encoded_bytes, report.raw_bytes
    return {"encoding": enc.name, "rotate": enc.rotate, "encoded_bytes": size,
            "raw_bytes": raw, "ratio": raw / size,
            "encode_ms": 1e3 * statistics.median(enc_s),
            "decode_ms": 1e3 * statistics.median(dec_s),
            "rel_l2_error": statistics.median(errs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dist", choices=["gaussian", "student-t", "both"], default="both")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    dists = ["gaussian", "student-t"] if args.dist == "both" else [args.dist]
    rows = []
    for dist in dists:
        arrays = synthetic_update(dist, 0)
        print(f"\nupdate: {dist}, {sum(a.size for a in arrays):,} float32 values, "
              f"median of {args.runs} runs")
        print("| encoding | rotate | encoded bytes | ratio | encode ms | decode ms | rel L2 err |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name in NAMES:
            for rot in (False, True):
                row = {"dist": dist, **bench_one(arrays, Encoding(name, rot), args.runs, 1)}
                rows.append(row)
                print(f"| {name} | {'yes' if rot else 'no'} | {row['encoded_bytes']:,} "
                      f"| {row['ratio']:.2f} | {row['encode_ms']:.1f} | {row['decode_ms']:.1f} "
                      f"| {row['rel_l2_error']:.2e} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
