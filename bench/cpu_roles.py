"""CPU seconds of a command tree by role (bench/README.md, issue 22).

    uv run --frozen --no-sync python bench/cpu_roles.py .venv/bin/python -m fedkb simulate ...

Every 0.25 s it reads every descendant's CPU times (the last reading of each process is
kept); at the end it prints them summed by role: the `fedkb server` child, the fleet's
worker processes (multiprocessing spawn), the command itself. A process that lives
under 0.25 s is missed; the command's stdout is discarded.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time

import psutil


def role(cmd: str) -> str:
    if "fedkb" in cmd and " server" in cmd:
        return "server"
    if "multiprocessing" in cmd:
        return "worker"
    return "command" if "fedkb" in cmd else cmd[:60]


def main() -> int:
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
    top = psutil.Process(proc.pid)
    seen: dict[int, tuple[float, float, str]] = {}
    t0 = time.monotonic()
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                ct = p.cpu_times()
                seen[p.pid] = (ct.user, ct.system, " ".join(p.cmdline()))
            except psutil.Error:
                pass
        time.sleep(0.25)
    wall = time.monotonic() - t0
    roles: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for user, system, cmd in seen.values():
        r = roles[role(cmd)]
        r[0] += user
        r[1] += system
        r[2] += 1
    print(f"wall {wall:.1f} s, exit {proc.returncode}")
    for name, (user, system, n) in sorted(roles.items(), key=lambda kv: -sum(kv[1][:2])):
        print(f"{name:10s} processes {n:2d}  user {user:7.1f}  sys {system:6.1f}  "
              f"total {user + system:7.1f}")
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
