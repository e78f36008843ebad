"""Memory of idle emulated phones: how many fit on this machine.

    uv run python bench/bench_fleet_memory.py --data DIR [--devices 10000]

Builds the phones a fleet worker holds (profile + 3-day availability trace + state) and
measures the process's resident memory before and after (psutil). No server is
needed: idle phones hold no model.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import psutil

from fedkb.device_runtime.fleet import FleetConfig, fleet_profiles
from fedkb.device_runtime.phone import Phone


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--devices", type=int, default=10_000)
    args = ap.parse_args()
    proc = psutil.Process()
    fleet_profiles(FleetConfig("http://unused", args.data, 1), range(1))  # warm imports
    gc.collect()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    phones = [Phone(p) for p in fleet_profiles(FleetConfig("http://unused", args.data,
                                                           args.devices), range(args.devices))]
    build_s = time.perf_counter() - t0
    gc.collect()
    rss1 = proc.memory_info().rss
    print(json.dumps({
        "devices": len(phones),
        "build_s": round(build_s, 2),
        "rss_delta_mb": round((rss1 - rss0) / 2**20, 1),
        "rss_per_device_kb": round((rss1 - rss0) / len(phones) / 1024, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
