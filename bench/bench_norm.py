"""The norm bound's cost per upload: global_norm64, against the float64 cast it replaced.

    uv run --frozen --no-sync python bench/bench_norm.py

200 calls on four random updates with the `small` model's shapes (about 1.1M float32
values), user/system CPU from getrusage. In this tight loop malloc reuses the freed
buffer, so the kernel's page zeroing (what the cast cost inside the server, where other
allocations come between uploads) barely shows: the figure is the arithmetic alone.
"""

from __future__ import annotations

import math
import resource
import time

import numpy as np

from fedkb.server.aggregate import global_norm64


def cast_norm(arrays: list[np.ndarray]) -> float:
    """The version before the eighth session: one float64 copy of every array."""
    return math.sqrt(sum(float(np.dot(a.ravel().astype(np.float64), a.ravel())) for a in arrays))


def main() -> None:
    rng = np.random.default_rng(0)
    shapes = [(10000, 96), (96, 512), (128, 512), (512,), (128, 96), (96,), (10000,)]
    ups = [[rng.normal(size=s).astype(np.float32) * 0.01 for s in shapes] for _ in range(4)]
    for name, f in (("cast", cast_norm), ("now", global_norm64)) * 2:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(200):
            f(ups[i % 4])
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
        print(f"{name}: {wall / 200 * 1e3:.2f} ms per call (user {r1.ru_utime - r0.ru_utime:.2f} s,"
              f" sys {r1.ru_stime - r0.ru_stime:.2f} s for 200)")


if __name__ == "__main__":
    main()
