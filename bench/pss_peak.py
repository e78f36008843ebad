"""Run a command and report the peak memory of its whole process tree, as proportional
set size (PSS: a shared page counts once, split between the processes that map it, so
Ray's many workers that map one object store are not counted many times).

    uv run --frozen --no-sync python bench/pss_peak.py [--every 0.5] -- CMD ARG...

The command's own output passes through; at the end one JSON line on stderr: the peak
PSS of the tree in MB, the peak number of processes in it, the command's exit code and
wall seconds. ``bench/bench_flower_memory.py`` samples Flower's simulation the same way,
so the two figures compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time

import psutil


def pss_tree(pid: int) -> tuple[int, int]:
    """(PSS bytes, processes) of ``pid`` and all its descendants now."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_full_info().pss
    return total, len(procs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command given")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)
    peak = {"pss": 0, "procs": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, n = pss_tree(proc.pid)
            peak["pss"], peak["procs"] = max(peak["pss"], pss), max(peak["procs"], n)
            done.wait(args.every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        rc = proc.wait()
    done.set()
    sampler.join()
    print(json.dumps({"peak_pss_mb": round(peak["pss"] / 2**20, 1),
                      "peak_processes": peak["procs"], "exitcode": rc,
                      "wall_s": round(time.monotonic() - t0, 1)}), file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
