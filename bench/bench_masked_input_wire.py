"""What one masked input costs on the wire path: the phone building its POST body and
the server parsing it back to residues, base64 JSON against the FKBS frame.

    uv run --frozen --no-sync python bench/bench_masked_input_wire.py [--dim 1393792] \
        [--k 13] [--repeats 7]

The default ``dim`` is the ``small`` model's masked vector (2,264,912 packed bytes at 13
bits: q8 with headroom for 20 phones). Each figure is the median over ``repeats`` of one
call on one thread: what a phone pays before its POST (packing, and for JSON the base64
encode and the dump a phone makes of the body) and what the server pays before it folds
the vector (for JSON the parse and the base64 decode, then the unpacking). "pack
(bit matrix)" is the packing fedkb used before the shifts (NumPy's unpackbits /
packbits), for reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from fedkb import strict_json, wire
from fedkb.secagg.messages import MaskedInput, pack_residues, unpack_residues
from fedkb.server.secure_round import parse_message


def median_ms(f: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def pack_bit_matrix(y: np.ndarray, k: int) -> bytes:
    w = y.dtype.itemsize
    bits = np.unpackbits(y.astype(f"<u{w}").view(np.uint8).reshape(-1, w), axis=1,
                         bitorder="little")[:, :k]
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=1_393_792)
    p.add_argument("--k", type=int, default=13)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    k, n, r = args.k, args.dim, args.repeats
    y = np.random.default_rng(0).integers(0, 2 ** k, n).astype(np.uint16 if k <= 16
                                                                  else np.uint32)
    data = pack_residues(y, k)
    mi = MaskedInput("r1", 1, k, n, data)
    scalars = dict(num_examples=800, loss=4.2, unclipped=True, clipped_values=0)

    def json_phone() -> bytes:
        sub = wire.SecAggSubmit(mi.to_dict(), **scalars)
        return json.dumps(sub.to_json()).encode("utf-8")

    def framed_phone() -> bytes:
        return wire.frame_secagg(wire.SecAggSubmit(mi.header(), **scalars), mi.data)

    json_body, framed_body = json_phone(), framed_phone()

    def json_server() -> np.ndarray:
        sub = wire.SecAggSubmit.from_json(strict_json.loads(json_body))
        m = parse_message(sub.message)
        return unpack_residues(m.data, m.k, m.length)

    def framed_server() -> np.ndarray:
        sub, payload = wire.split_secagg(framed_body)
        m = parse_message(sub.message, payload)
        return unpack_residues(m.data, m.k, m.length)

    assert np.array_equal(json_server(), y) and np.array_equal(framed_server(), y)
    rows = [("pack (shifts, now)", median_ms(lambda: pack_residues(y, k), r)),
            ("pack (bit matrix, before)", median_ms(lambda: pack_bit_matrix(y, k), r)),
            ("phone body, base64 JSON", median_ms(json_phone, r)),
            ("phone body, FKBS", median_ms(framed_phone, r)),
            ("server parse + unpack, base64 JSON", median_ms(json_server, r)),
            ("server parse + unpack, FKBS", median_ms(framed_server, r))]
    print(f"dim {n:,}, k {k}: body {len(json_body):,} B as base64 JSON, "
          f"{len(framed_body):,} B framed ({len(data):,} B packed)\n")
    print("| step | median ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
