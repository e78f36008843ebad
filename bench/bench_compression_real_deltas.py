"""Relative L2 error of each uplink encoding on real phone deltas (issue 17).

Trains the ``small`` artifact from its initial weights on the first four training users
of a prepared dataset (one epoch, client lr 1.0, LiteRT), then encodes and decodes each
delta with q8/q4/q2, with and without the Hadamard rotation, and prints
``|decode(encode(d)) - d| / |d|`` (median of 3 rounding seeds) and the share of nonzero
embedding entries. Synthetic Gaussian deltas (``bench_compression_wire.py``) have no
outliers; real ones do, which is what the rotation is for.

    uv run --frozen --no-sync python bench/bench_compression_real_deltas.py runs/demo/data
"""

from __future__ import annotations

import json
import sys

import numpy as np

from fedkb.compression.encoding import Encoding, decode_update, encode_update
from fedkb.datasets.store import Dataset
from fedkb.device_runtime.trainer import Trainer


def rel_l2(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    num = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a, b, strict=True))
    return (num / sum(float(np.sum(x.astype(np.float64) ** 2)) for x in a)) ** 0.5


def main(argv: list[str]) -> int:
    data = argv[1] if len(argv) > 1 else "runs/demo/data"
    ds = Dataset.open(data)
    trainer = Trainer(f"{data}/models/small")
    w0 = trainer.artifact.initial_weights()
    shapes = [w.shape for w in w0]
    for i, user in enumerate(ds.train_users[:4]):
        windows = ds.shard(user).train
        session = trainer.start_training(w0, windows, epochs=1, max_steps=None, lr=1.0, seed=i)
        for _ in session:
            pass
        delta = session.result().delta
        row: dict = {"user": user, "windows": len(windows),
                     "embedding_nonzero": round(float(np.mean(delta[0] != 0)), 4)}
        for name in ("q8", "q4", "q2"):
            for rot in (False, True):
                enc = Encoding(name, rot)
                errs = [rel_l2(delta, decode_update(
                    encode_update(delta, enc, 7 + s, np.random.default_rng(s)), shapes, enc,
                    7 + s)) for s in range(3)]
                row[name + ("+rotate" if rot else "")] = round(float(np.median(errs)), 4)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
