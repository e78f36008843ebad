"""Server benchmarks (issue 4): updates folded per second, and check-ins per second.

    uv run python bench/bench_server.py fold [--preset small gboard] [--updates 300]
    uv run python bench/bench_server.py checkin [--devices 2000] [--clients 32] [--seconds 10]
    uv run python bench/bench_server.py all [--json]

``fold`` drives the real upload path of :class:`fedkb.server.round_machine.RoundMachine` (replay
fingerprint, ownership, decode, shape/dtype/finite validation, fold into the streaming
weighted sum) in one thread, without HTTP, for weights shaped like the ``small`` and
``gboard`` presets; it samples the process RSS as updates accumulate to show that server
memory stays flat. ``checkin`` starts ``fedkb server`` (waitress) as a child process and
hits ``POST /v1/checkin`` from worker processes with keep-alive connections on loopback.
Neither imports TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fake_artifact(path: Path, preset: str) -> Path:
    """An artifact directory with the preset's weight shapes (no TensorFlow)."""
    from fedkb.artifact import MODEL_FILE, WEIGHTS_FILE, initial_weights_file, write_artifact
    from fedkb.model.config import PRESETS
    from fedkb.model.weights import initial_weights, weight_specs

    cfg = PRESETS[preset]
    specs = weight_specs(cfg)
    files = {MODEL_FILE: b"dummy", WEIGHTS_FILE: initial_weights_file(specs, initial_weights(cfg))}
    meta = {"preset": preset, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
            "vocab_size": cfg.vocab_size, "weights": [s.to_json() for s in specs]}
    write_artifact(path, meta, files)
    return path


def bench_fold(preset: str, updates: int) -> dict[str, Any]:
    """Updates/s through RoundMachine.report for one preset, and RSS as updates accumulate."""
    from fedkb.server.app import create_app
    from fedkb.server.config import RoundConfig, ServerConfig
    from fedkb.wire import Conditions, UploadMetadata, encode_upload

    tmp = Path(tempfile.mkdtemp(prefix="fedkb-bench-"))
    cfg = ServerConfig(state_dir=tmp / "state", model=fake_artifact(tmp / "art", preset),
                       admin_token="x", round=RoundConfig(
                           report_goal=updates + 1, overselect=1.0, eval_every=0,
                           selection_window_s=1e9, reporting_deadline_s=1e9))
    state = create_app(cfg).extensions["fedkb"]
    machine, specs = state.machine, state.machine.artifact.specs
    n_params = sum(int(np.prod(s.shape)) for s in specs)
    cond = Conditions(True, True, True, 1.0)
    rng = np.random.default_rng(0)
    base = [rng.standard_normal(s.shape).astype(np.float32) * 0.01 for s in specs]
    times, rss = [], []
    rss0 = rss_mb()
    for i in range(updates):
        device = state.devices.register("train")
        task = machine.checkin(device, cond).task
        base[-1][0] = i  # each update differs
        body = encode_upload(UploadMetadata(task.task_id, task.round_id, 10, 1.0), base)
        t0 = time.perf_counter()
        machine.report(device, task.task_id, body)
        times.append(time.perf_counter() - t0)
        del body
        if i in (9, updates // 2, updates - 1):
            rss.append((i + 1, round(rss_mb() - rss0, 1)))
    state.close()
    t = np.array(times[5:])
    return {"preset": preset, "params": n_params, "update_bytes": n_params * 4,
            "updates": updates, "updates_per_s": round(1 / t.mean(), 1),
            "ms_p50": round(float(np.median(t)) * 1e3, 2),
            "ms_p99": round(float(np.percentile(t, 99)) * 1e3, 2),
            "rss_growth_mb_after_n": rss}


# --- check-in load -------------------------------------------------------------------------


def _client(url: str, tokens: list[str], seconds: float, out: Any, start: float) -> None:
    import http.client
    import threading
    from urllib.parse import urlparse

    u = urlparse(url)
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    body = json.dumps({"conditions": {"charging": True, "unmetered": True, "idle": True,
                                      "battery": 0.9}})

    def worker(my_tokens: list[str]) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        mine: list[float] = []
        bad = 0
        rnd = random.Random(len(my_tokens))
        while time.time() < start:
            time.sleep(0.001)
        end = start + seconds
        while time.time() < end:
            tok = rnd.choice(my_tokens)
            t0 = time.perf_counter()
            conn.request("POST", "/v1/checkin", body=body, headers={
                "Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            mine.append(time.perf_counter() - t0)
            bad += r.status != 200
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker, args=(tokens[i::8] or tokens,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    out.put((lat, errors[0]))


def bench_checkin(devices: int, clients: int, seconds: float, threads: int) -> dict[str, Any]:
    import requests

    tmp = Path(tempfile.mkdtemp(prefix="fedkb-bench-"))
    art = fake_artifact(tmp / "art", "small")
    conf = tmp / "c.json"
    # a benchmark's devices all register from one address at once: lift the limits
    conf.write_text(json.dumps({"threads": threads, "round": {"report_goal": 50},
                                "registrations_per_minute_per_address": devices + 1,
                                "registrations_per_minute": devices + 1}))
    proc = subprocess.Popen([sys.executable, "-m", "fedkb", "server", "--port", "0",
                             "--state-dir", str(tmp / "state"), "--model", str(art),
                             "--config", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        line = proc.stdout.readline().decode()  # type: ignore[union-attr]
        url = line.split("listening on ")[1].split()[0]
        s = requests.Session()
        tokens = [s.post(f"{url}/v1/devices", json={}).json()["token"] for _ in range(devices)]
        procs = max(1, clients // 8)
        q: Any = mp.Queue()
        start = time.time() + 1.0
        workers = [mp.Process(target=_client, args=(url, tokens[i::procs], seconds, q, start))
                   for i in range(procs)]
        [w.start() for w in workers]
        results = [q.get() for _ in workers]
        [w.join() for w in workers]
        status = s.get(f"{url}/v1/status").json()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    lat = np.array([x for r in results for x in r[0]])
    return {"devices": devices, "clients": procs * 8, "server_threads": threads,
            "seconds": seconds, "requests": int(lat.size), "errors": sum(r[1] for r in results),
            "checkins_per_s": round(lat.size / seconds, 1),
            "ms_p50": round(float(np.median(lat)) * 1e3, 2),
            "ms_p99": round(float(np.percentile(lat, 99)) * 1e3, 2),
            "rounds_committed": status["rounds_committed"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["fold", "checkin", "all"])
    p.add_argument("--preset", nargs="+", default=["small", "gboard"])
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out: dict[str, Any] = {}
    if args.what in ("fold", "all"):
        out["fold"] = [bench_fold(preset, args.updates) for preset in args.preset]
    if args.what in ("checkin", "all"):
        out["checkin"] = bench_checkin(args.devices, args.clients, args.seconds, args.threads)
    print(json.dumps(out, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
