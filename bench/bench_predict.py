"""Prediction benchmark (issue 6): ``POST /v1/predict`` latency and throughput on waitress.

    uv run python bench/bench_predict.py --model /tmp/m_small --data /tmp/ds
        [--clients 1 10 50] [--think-ms 150] [--seconds 8] [--max-requests 20000]
        [--cache-size N] [--json]
    uv run python bench/bench_predict.py --model /tmp/m_small --data /tmp/ds --flood 500
        [--seconds 20] [--ignore-retry-after] [--max-inflight N]

Starts ``fedkb server`` (waitress, fresh state dir) serving the exported artifact, then
runs a load generator on loopback: each client is a thread with its own keep-alive HTTP
connection (client threads spread over processes, at most 10 per process) that *types*
held-out users' sentences of ``--data`` one character at a time, one request per
keystroke (so most requests complete a partial word; one per word asks for the next
word), each client its own sentences. Two modes per client count:

- ``typing``: each client waits ``--think-ms`` between requests (a person typing sends
  about one request per keystroke; 150 ms = 6.7 keystrokes/s, a fast typist), so the
  offered load is ``clients * 1000 / think_ms`` requests/s. This is the latency target.
- ``saturated``: no think time; throughput is the server's maximum on this machine and
  latency follows Little's law (clients / throughput).

Every level runs against a fresh server (an empty cache) and is bounded in time
(``--seconds``) and in requests (``--max-requests``); ``--cache-size 0`` turns the
server's prefix cache off. The
baseline is a bare LiteRT ``Trainer.infer`` call on the same prefixes in this process
(``overhead_ratio`` = endpoint p50 with one client / bare infer p50); the in-process
``Engine.predict`` (tokenize + infer + rank, no HTTP) is reported too. No TensorFlow.

``--flood N`` (issue 19, load shedding): N ``typing`` clients at once against one server
while one phone checks in every 100 ms on its own connection; it reports p50/p99/max of
answered predictions, of shed ones (503 ``overloaded`` + ``Retry-After``, which clients
honour unless ``--ignore-retry-after``) and of the check-ins.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def typed_texts(data: Path, n_sentences: int, seed: int = 0) -> list[list[str]]:
    """Keystroke sequences: every prefix of ``n_sentences`` held-out sentences."""
    from fedkb.datasets.store import HELDOUT, Dataset
    from fedkb.datasets.vocab import NUM_SPECIAL

    ds = Dataset.open(data)
    words = ds.vocab.words
    windows = ds.all_windows(HELDOUT)
    rng = np.random.default_rng(seed)
    out = []
    for row in windows[rng.permutation(len(windows))[:n_sentences]]:
        sentence = " ".join(words[int(t)] for t in row if t >= NUM_SPECIAL)
        out.append([sentence[:i] for i in range(len(sentence) + 1)])
    return out


def _client(url: str, threads: int, seconds: float, max_requests: int, think_s: float,
            start: float, k: int, typing: list[list[str]], out: Any,
            honor_retry_after: bool = True) -> None:
    """One load-generator process: ``threads`` keep-alive clients until time or count.

    A 503 with ``Retry-After`` (shed by the server) is counted apart from errors, its
    latency apart from the answered ones; the client then waits ``Retry-After`` seconds
    (``honor_retry_after``) as a well-behaved client does, or goes on at once."""
    import http.client
    import random
    import threading
    from urllib.parse import urlparse

    u = urlparse(url)
    lock = threading.Lock()
    lat: list[float] = []
    shed_lat: list[float] = []
    errors = [0]
    count = [0]

    def worker(i: int) -> None:
        rnd = random.Random(i)
        texts = [t for seq in typing[i::threads] for t in seq] or ["#"]
        bodies = [json.dumps({"text": t, "k": k}).encode() for t in texts]
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        mine: list[float] = []
        shed: list[float] = []
        bad = 0
        while time.time() < start:
            time.sleep(0.001)
        end = start + seconds
        while time.time() < end:
            with lock:
                if count[0] >= max_requests:
                    break
                count[0] += 1
            body = bodies[(len(mine) + len(shed)) % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body,
                             headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
                continue
            dt = time.perf_counter() - t0
            retry = r.getheader("Retry-After")
            if r.status == 503 and retry is not None:
                shed.append(dt)
                if honor_retry_after:
                    time.sleep(min(float(retry), max(0.0, end - time.time())))
                continue
            mine.append(dt)
            bad += r.status != 200
            if think_s:
                time.sleep(think_s * rnd.uniform(0.5, 1.5))
        conn.close()
        with lock:
            lat.extend(mine)
            shed_lat.extend(shed)
            errors[0] += bad

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((lat, errors[0], time.time(), shed_lat))


def _ms(values: Any) -> dict[str, float | None]:
    lat = np.asarray(values, dtype=float)
    if not lat.size:
        return {"ms_p50": None, "ms_p99": None, "ms_max": None}
    return {"ms_p50": round(float(np.median(lat)) * 1e3, 2),
            "ms_p99": round(float(np.percentile(lat, 99)) * 1e3, 2),
            "ms_max": round(float(lat.max()) * 1e3, 2)}


def load(url: str, clients: int, seconds: float, max_requests: int, think_s: float,
         k: int, typing: list[list[str]], honor_retry_after: bool = True) -> dict[str, Any]:
    """Run ``clients`` concurrent clients; latency percentiles and throughput."""
    procs = max(1, math.ceil(clients / 10))
    per = [clients // procs + (i < clients % procs) for i in range(procs)]
    q: Any = mp.Queue()
    start = time.time() + 1.0 + clients / 200  # time for every process to start
    workers = [mp.Process(target=_client, args=(url, n, seconds, max_requests // procs,
                                                think_s, start, k, typing[i::procs], q,
                                                honor_retry_after))
               for i, n in enumerate(per)]
    for w in workers:
        w.start()
    results = [q.get() for _ in workers]
    for w in workers:
        w.join()
    wall = max(r[2] for r in results) - start
    lat = np.array([x for r in results for x in r[0]])
    shed = [x for r in results for x in r[3]]
    out = {"clients": clients, "think_ms": round(think_s * 1e3), "requests": int(lat.size),
           "errors": sum(r[1] for r in results), "req_per_s": round(lat.size / wall, 1),
           **_ms(lat)}
    if shed:
        out["shed"] = len(shed)
        out["shed_ms"] = _ms(shed)
    return out


def checkin_probe(url: str, start: float, seconds: float, every_s: float = 0.1,
                  ) -> dict[str, Any]:
    """One phone checking in every ``every_s`` on its own keep-alive connection from
    ``start`` for ``seconds``: check-in latency while the predictions flood the server."""
    import requests

    s = requests.Session()
    reg = s.post(f"{url}/v1/devices", json={"population": "train"}, timeout=30)
    reg.raise_for_status()
    auth = {"Authorization": f"Bearer {reg.json()['token']}"}
    body = {"conditions": {"charging": True, "unmetered": True, "idle": True, "battery": 0.9}}
    lat, bad = [], 0
    while time.time() < start:
        time.sleep(0.01)
    while time.time() < start + seconds:
        t0 = time.perf_counter()
        try:
            r = s.post(f"{url}/v1/checkin", json=body, headers=auth, timeout=30)
            bad += r.status_code != 200
        except requests.RequestException:
            bad += 1
        lat.append(time.perf_counter() - t0)
        time.sleep(every_s)
    return {"checkins": len(lat), "errors": bad, **_ms(lat)}


def flood(url: str, clients: int, seconds: float, think_s: float, k: int,
          typing: list[list[str]], honor_retry_after: bool) -> dict[str, Any]:
    """``clients`` typing clients on ``/v1/predict`` and one phone checking in meanwhile."""
    import threading

    probe: dict[str, Any] = {}
    start = time.time() + 1.0 + clients / 200
    t = threading.Thread(target=lambda: probe.update(
        checkin_probe(url, start + 1.0, seconds - 2.0)))
    t.start()
    out = load(url, clients, seconds, 10**9, think_s, k, typing, honor_retry_after)
    t.join()
    return {"predict": out, "checkin": probe, "honor_retry_after": honor_retry_after}


def bare(model: Path, texts: list[str], n: int = 2000) -> dict[str, Any]:
    """p50 of a bare LiteRT infer call and of the in-process Engine.predict, same texts."""
    from fedkb.server.config import PredictConfig
    from fedkb.server.predictor import Engine

    engine = Engine.from_dir(model, cfg=PredictConfig(interpreters=1, cache_size=0))
    trainer = engine.pool.get()
    prefixes = [engine.suggester.query(t).prefix for t in texts]
    infer, predict = [], []
    for i in range(n + 50):
        t0 = time.perf_counter()
        trainer.infer(prefixes[i % len(prefixes)])
        if i >= 50:
            infer.append(time.perf_counter() - t0)
    engine.pool.put(trainer)
    for i in range(n + 50):
        t0 = time.perf_counter()
        engine.predict(texts[i % len(texts)], 3)
        if i >= 50:
            predict.append(time.perf_counter() - t0)
    return {"infer_ms_p50": round(float(np.median(infer)) * 1e3, 3),
            "infer_ms_p99": round(float(np.percentile(infer, 99)) * 1e3, 3),
            "engine_predict_uncached_ms_p50": round(float(np.median(predict)) * 1e3, 3)}


def start_server(model: Path, threads: int, cache_size: int,
                 predict: dict[str, Any] | None = None) -> tuple[subprocess.Popen, str]:
    tmp = Path(tempfile.mkdtemp(prefix="fedkb-bench-predict-"))
    conf = tmp / "c.json"
    conf.write_text(json.dumps({"threads": threads,
                                "predict": {"cache_size": cache_size, **(predict or {})}}))
    proc = subprocess.Popen([sys.executable, "-m", "fedkb", "server", "--port", "0",
                             "--state-dir", str(tmp / "state"), "--model", str(model),
                             "--config", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    line = proc.stdout.readline().decode()  # type: ignore[union-attr]
    if "listening on " not in line:
        os.killpg(proc.pid, signal.SIGKILL)
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split("listening on ")[1].split()[0]


def main() -> None:
    import requests

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="exported artifact (small)")
    p.add_argument("--data", type=Path, required=True, help="prepared dataset (held-out text)")
    p.add_argument("--sentences", type=int, default=400, help="held-out sentences typed")
    p.add_argument("--cache-size", type=int, default=4096, help="server predict.cache_size")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--think-ms", type=float, default=150.0)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=8, help="waitress threads")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--flood", type=int, default=0, metavar="N",
                   help="instead: N typing clients on /v1/predict and one phone checking "
                        "in every 100 ms (load shedding, issue 19); --seconds each")
    p.add_argument("--ignore-retry-after", action="store_true",
                   help="with --flood: shed clients retry at once (hostile clients)")
    p.add_argument("--max-inflight", type=int, default=None,
                   help="server predict.max_inflight (default: the server's)")
    args = p.parse_args()
    typing = typed_texts(args.data, args.sentences)
    if args.flood:
        extra = {} if args.max_inflight is None else {"max_inflight": args.max_inflight}
        proc, url = start_server(args.model, args.threads, args.cache_size, extra)
        try:
            requests.post(f"{url}/v1/predict", json={"text": "#"}, timeout=60
                          ).raise_for_status()
            res = flood(url, args.flood, args.seconds, args.think_ms / 1e3, args.k, typing,
                        not args.ignore_retry_after)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        res["load_average"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(res, indent=None if args.json else 1))
        return
    flat = [t for seq in typing for t in seq]
    out: dict[str, Any] = {"cache_size": args.cache_size,
                           "keystrokes_per_sentence": round(len(flat) / len(typing), 1),
                           "bare": bare(args.model, flat[:500])}
    for mode, think_s in (("typing", args.think_ms / 1e3), ("saturated", 0.0)):
        out[mode] = []
        for clients in args.clients:  # a fresh server (and cache) for every level
            proc, url = start_server(args.model, args.threads, args.cache_size)
            try:
                warm = requests.post(f"{url}/v1/predict", json={"text": "#"}, timeout=60)
                warm.raise_for_status()  # the first request builds the engine
                out[mode].append(load(url, clients, args.seconds, args.max_requests, think_s,
                                      args.k, typing))
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    one = next((r for r in out["saturated"] if r["clients"] == 1), None)
    if one is not None:
        out["overhead_ratio"] = round(one["ms_p50"] / out["bare"]["infer_ms_p50"], 2)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
