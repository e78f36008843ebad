"""What distributed DP costs a secure round's numbers: the modulus k, the sensitivity Δ/C,
τ, and a phone's CPU time to draw its discrete Gaussian noise, for one model's shapes.

    uv run --frozen --no-sync python bench/bench_distributed_dp.py \
        --metadata runs/demo/data/models/small/metadata.json [--clip 4] [--repeats 5]

For each cohort n (t = ceil(0.6 n) = n_floor) and noise multiplier z on the sum (the
actual one: with ``--dp-noise-cohort K`` it is z·m/K), it prints k with and without the
noise's margin, the noise scale S (distributed_dp.noise_scale), each phone's smallest
lattice std after it, τ on q8's own grid (S = 1) and with S, and the noise draw's
median wall time on one thread (``UpdateLayout.noise``; ``--repeats 0``: not drawn), for
each of ``--bits`` (coarser grids need fewer bits but inflate Δ). NumPy only: no model is
run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time

from fedkb.secagg import distributed_dp as ddp
from fedkb.secagg.update_codec import UpdateLayout


def table(base: UpdateLayout, preset: str, bits: int, args: argparse.Namespace) -> None:
    print(f"{preset} at {bits} bits: dim {base.dim}, Δ/C {base.sensitivity / args.clip:.4f}")
    print("n     z      k plain  k noised  S    lattice min  tau (S=1)  tau        draw ms")
    for n in (int(x) for x in args.cohorts.split(",")):
        floor = max(2, math.ceil(0.6 * n - 1e-9))
        for z in (float(x) for x in args.multipliers.split(",")):
            lay = dataclasses.replace(base, noise_std=z * base.sensitivity / math.sqrt(floor))
            raw = dataclasses.replace(lay)
            lay = dataclasses.replace(lay, noise_scale=ddp.noise_scale(
                min(float(s.min()) for s in lay.lattice)))
            lat = min(float(s.min()) for s in lay.lattice)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                lay.noise(ddp.noise_rng())
                times.append(time.perf_counter() - t0)
            draw = f"{1000 * statistics.median(times):.0f}" if times else "-"
            print(f"{n:<5} {z:<6} {base.modulus_bits(n):<8} {lay.modulus_bits(n):<9} "
                  f"{lay.noise_scale:<4} {lat:<12.1f} {raw.tau(n):<10.2e} {lay.tau(n):<10.2e} "
                  f"{draw}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--metadata", required=True, help="an artifact's metadata.json")
    p.add_argument("--clip", type=float, default=4.0)
    p.add_argument("--bits", default="8", help="uplink bits, a list of 8, 4, 2")
    p.add_argument("--cohorts", default="20,100,1000")
    p.add_argument("--multipliers", default="0.02,0.3,1.0")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with open(args.metadata) as f:
        meta = json.load(f)
    shapes = tuple(tuple(w["shape"]) for w in meta["weights"])
    for bits in (int(b) for b in args.bits.split(",")):
        table(UpdateLayout(shapes, bits, args.clip, 12345), meta["preset"], bits, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
