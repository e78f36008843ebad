"""Connection exhaustion (issue 19, item 5): check-ins while idle sockets hold the server.

    uv run python bench/bench_connections.py [--idle 1010] [--probes 5] [--json]

Starts ``fedkb server`` (fake 3-tensor model, fresh state dir, default config: 15 s idle
timeout, ``connection_limit`` 1000), registers one phone, opens ``--idle`` sockets to it
(half send a partial request line and stall, half send nothing), then times
``--probes`` check-ins of that phone, each on a fresh connection (timeout 60 s), one
second apart, and one ``GET /v1/status``. Everything runs on loopback; the sockets are
closed and the server stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_support import ELIGIBLE, write_artifact

from fedkb.simulation.server_process import ServerProcess


def timed(fn) -> tuple[float, int | str]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    try:
        status: int | str = fn().status_code
    except requests.RequestException as exc:
        status = type(exc).__name__
    return round(time.perf_counter() - t0, 3), status


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=int, default=1010)
    p.add_argument("--probes", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="fedkb-bench-conn-"))
    sp = ServerProcess(tmp / "state", model=write_artifact(tmp / "artifact"))
    out: dict = {"idle_sockets": args.idle}
    with sp as url:
        port = int(url.rsplit(":", 1)[1])
        reg = requests.post(f"{url}/v1/devices", json={"population": "train"}, timeout=10)
        auth = {"Authorization": f"Bearer {reg.json()['token']}"}
        checkin = {"conditions": ELIGIBLE}
        out["checkin_before_s"] = timed(lambda: requests.post(
            f"{url}/v1/checkin", json=checkin, headers=auth, timeout=60))
        held = []
        t0 = time.perf_counter()
        for i in range(args.idle):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 2:
                s.sendall(b"POST /v1/checkin HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        out["open_s"] = round(time.perf_counter() - t0, 2)
        time.sleep(0.5)
        probes = []
        for _ in range(args.probes):
            probes.append(timed(lambda: requests.post(
                f"{url}/v1/checkin", json=checkin, headers=auth, timeout=60)))
            time.sleep(1.0)
        out["checkins_under_attack"] = probes
        out["status_under_attack"] = timed(lambda: requests.get(f"{url}/v1/status",
                                                                timeout=60))
        for s in held:
            s.close()
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
