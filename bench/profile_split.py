"""Where a fleet run's CPU goes: a ``py-spy record --subprocesses --format raw`` profile,
split by process role and by kind of work.

    py-spy record --subprocesses --rate 40 --format raw -o PROF.raw -- \\
        .venv/bin/python -m fedkb simulate --engine fleet ... --json
    uv run --frozen --no-sync python bench/profile_split.py PROF.raw

Roles, from each sample's innermost process: ``server`` (the ``fedkb server`` child),
``worker`` (a fleet worker, ``multiprocessing.spawn``), ``parent`` (the ``fedkb
simulate`` orchestrator and its held-out evaluation), ``other``. Kinds, by the first
rule that matches any frame of the sample's stack (in the order of :data:`KINDS`):
LiteRT training, evaluation, imports (start-up), serialisation (codecs, update encoding,
pickling between processes), aggregation (the server's decode, checks and fold), HTTP
(sockets, http.client, waitress, Flask), waiting (locks, queues, sleeps, socket reads:
py-spy counts a thread blocked in Python code as active, so a stack whose innermost frame
blocks is waiting whatever called it), the phones' trace simulation, other.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("training", ("step (device_runtime/trainer.py",)),
    ("evaluation", ("evaluate (device_runtime/trainer.py", "heldout_eval")),
    ("imports", ("<frozen importlib._bootstrap>",)),
    ("serialisation", ("fedkb/codec.py", "fedkb/plan_codec.py", "fedkb/compression/",
                       "frame_upload", "multiprocessing/queues.py", "pickle",
                       "fedkb/tensorfile.py", "safetensors")),
    ("aggregation", ("server/aggregate.py", "server/uploads.py", "fedkb/weights.py",
                     "server/reports.py", "server/privacy/", "fedkb/clipping.py")),
    ("HTTP", ("socket.py", "http/client.py", "waitress/", "flask/", "werkzeug/",
              "ssl.py", "selectors.py", "server/wsgi.py")),
    ("waiting", ("threading.py", "Queue.get", "queue.py", "time.sleep", "select",
                 "Event.wait", "connection.py")),
    ("phone traces", ("device_runtime/traces.py", "device_runtime/clock.py")),
]


def role(frames: list[str]) -> str:
    procs = [f for f in frames if f.startswith("process ")]
    cmd = procs[-1] if procs else ""
    if "fedkb server" in cmd or "fedkb.server" in cmd or " server " in cmd:
        return "server"
    # py-spy keeps the command line a child had when it was forked: the server, started
    # by the parent with subprocess, shows the parent's; it is the parent's one non-spawn
    # child
    if len(procs) >= 2 and "multiprocessing" not in cmd:
        return "server"
    if "multiprocessing.spawn" in cmd:
        return "worker"
    if "multiprocessing.resource_tracker" in cmd:
        return "other"
    if "fedkb simulate" in cmd or "fedkb demo" in cmd:
        return "parent"
    return "other"


WAIT_LEAVES = ("Condition.wait", "Event.wait", "Lock.acquire", "sleep", "select", "poll",
               "Queue.get", "_recv", "readinto", "accept", "Thread.join", "_wait_for_tstate_lock")


def kind(frames: list[str]) -> str:
    """The first matching kind; a stack whose innermost frame blocks (a lock, a sleep, a
    socket read) is waiting, whatever called it: py-spy samples such threads as active."""
    calls = [f for f in frames if not f.startswith("process ")]
    for name, needles in KINDS[:2]:  # training and evaluation include their waits
        if any(n in f for f in calls for n in needles):
            return name
    if calls and any(calls[-1].startswith(w) or f" {w} " in calls[-1] or
                     calls[-1].split(" (")[0].endswith(w) for w in WAIT_LEAVES):
        return "waiting"
    for name, needles in KINDS:
        if any(n in f for f in frames for n in needles):
            return name
    return "other"


def split(path: Path) -> tuple[collections.Counter, collections.Counter]:
    by = collections.Counter()
    roles = collections.Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        r, k = role(frames), kind(frames)
        by[r, k] += int(n)
        roles[r] += int(n)
    return by, roles


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path)
    args = p.parse_args()
    by, roles = split(args.profile)
    total = sum(roles.values()) or 1
    kinds = [k for k, _ in KINDS] + ["other"]
    print("| role | share of samples | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for r, n in roles.most_common():
        cells = [f"{100 * by[r, k] / total:.1f}%" for k in kinds]
        print(f"| {r} | {100 * n / total:.1f}% | " + " | ".join(cells) + " |")
    cells = [f"{100 * sum(by[r, k] for r in roles) / total:.1f}%" for k in kinds]
    print("| **all** | 100% | " + " | ".join(cells) + " |")
    print(f"({total} samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
