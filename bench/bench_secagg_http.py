"""One secure round over the real HTTP API (create_app + Flask's test client, the real
phone code of fedkb.device_runtime.secagg_client) at a real model's size: CPU seconds and
bytes per phone and for the server, against the plain q8 upload of the same updates.

No LiteRT training here (the updates are random, clipped like a phone's): this isolates
what the secure phases cost on top of a round, measured as thread CPU time, which a
loaded machine inflates far less than wall time.

    uv run --frozen --no-sync python bench/bench_secagg_http.py \\
        --artifact /work/fresh/runs/demo/model-small --n 20 --dropout 0 0.1 --json out.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from secagg_http_support import SecureHarness
from server_support import FakeClock, Harness, make_config

from fedkb.artifact import Artifact
from fedkb.device_runtime.secagg_client import WAIT, SecureTask
from fedkb.plan_codec import encode_delta
from fedkb.server.app import create_app
from fedkb.server.config import (
    CompressionConfig,
    SecAggConfig,
    StrategyConfig,
)
from fedkb.wire import Plan

CLIP = 4.0


def updates(shapes: list[tuple[int, ...]], n: int) -> list[list[np.ndarray]]:
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        out.append([rng.normal(0, 0.01, s).astype(np.float32) for s in shapes])
    return out


def run(artifact: Path, n: int, dropout: float, neighbours: int | None) -> dict:
    art = Artifact.load(artifact)
    shapes = [tuple(s.shape) for s in art.specs]
    ups = updates(shapes, n)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(Path(tmp), model=False, report_goal=n, overselect=1.0,
                          min_fraction=0.5, selection_window_s=10, reporting_deadline_s=60,
                          strategy=StrategyConfig(clip_norm=CLIP))
        cfg = cfg.replace(model=artifact, compression=CompressionConfig(uplink="q8"),
                          secagg=SecAggConfig(enabled=True, threshold=0.6,
                                              neighbours=neighbours, phase_deadline_s=30))
        clock = FakeClock()
        app = create_app(cfg, clock=clock)
        h = Harness(app, app.test_client(), clock)
        sh = SecureHarness(h, n)
        for i, m in enumerate(sh.members):
            m.secure = SecureTask(m.task, ups[i], 100, 1.0)
        cpu = [0.0] * n
        drop = set(range(n - round(dropout * n), n))
        t0 = time.perf_counter()
        for _ in range(40):
            if not sh.round.is_open:
                break
            moved = False
            for i, m in enumerate(sh.members):
                if m.state != WAIT or (i in drop and sh.phase() == "masked_input"):
                    continue
                c0 = time.thread_time()  # the phone's own work, its HTTP calls included
                m.state, _ = m.secure.advance(sh.transport, m.device.token)
                cpu[i] += time.thread_time() - c0
                moved = True
            if not moved or (sh.round.is_open and sh.phase() == "masked_input"
                             and len(sh.round.secure.answered("masked_input")) ==
                             n - len(drop)):
                clock.advance(sh.round.phase.deadline_s + 1)
                h.state.machine.tick()
        wall = time.perf_counter() - t0
        sa = sh.round.stats.secagg
        assert sh.round.state == "committed", sh.round.reason
        up = [sum(m.secure.sent.values()) for m in sh.members]
        # the plain q8 upload of the same update, and its encoding CPU
        plan = Plan("train", 1.0, 8, 1, 0, seed=1, uplink="q8")
        c0 = time.thread_time()
        body, _ = encode_delta(ups[0], plan)
        plain_cpu = time.thread_time() - c0
        alive = [i for i in range(n) if i not in drop]
        return {"n": n, "dropout": dropout, "neighbours": sa["neighbours"],
                "dim": sa["dim"], "modulus_bits": sa["modulus_bits"],
                "phone_cpu_s_median": float(np.median([cpu[i] for i in alive])),
                "phone_up_bytes_median": int(np.median([up[i] for i in alive])),
                "phone_down_bytes_mean": round(sa["bytes_down"] / n),
                "plain_q8_upload_bytes": len(body), "plain_q8_encode_cpu_s": plain_cpu,
                "expansion_vs_q8": round(float(np.median([up[i] for i in alive]))
                                         / len(body), 3),
                "server_cpu_s": sa["server_cpu_s"],
                "server_cpu_s_total": round(sum(sa["server_cpu_s"].values()), 4),
                "wall_s_whole_round_in_process": round(wall, 2),
                "dropouts": sa["dropouts"], "recovered": sa["recovered"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--n", type=int, nargs="+", default=[20])
    p.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--neighbours", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    for n in a.n:
        for d in a.dropout:
            row = run(a.artifact, n, d, a.neighbours)
            print(json.dumps(row), flush=True)
            if a.json is not None:
                with a.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
