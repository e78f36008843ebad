"""Flower's simulation at fedkb's fleet sizes: memory and round rate, to set beside
``bench_ray_fleet.py scale`` (issue 20: "compare the memory with Flower's simulation at
the same client count").

Flower is not a fedkb dependency, so this runs in its own virtual environment:

    uv venv -p 3.11 /tmp/flwr-venv
    VIRTUAL_ENV=/tmp/flwr-venv uv pip install "flwr[simulation]==1.42.0" psutil numpy
    /tmp/flwr-venv/bin/python bench/bench_flower_memory.py --nodes 1000,10000,100000 \
        [--rounds 5] [--per-round 20] [--params 7531] [--timeout 900]

Each size is one ``flwr.simulation.run_simulation`` (its Ray backend, one local node)
in a child process: a message-API ServerApp running FedAvg over ``--rounds`` rounds of
``--per-round`` sampled nodes (no evaluation), and a ClientApp that returns the arrays it
got (``--params`` float32 values: fedkb's ``tiny`` preset has 7,531), so the figure is
the runtime's, not a model's. A sampler thread reads the proportional set size (PSS:
shared pages split between the processes that map them, so Ray's workers are not
counted many times) of the child and all its descendants every 0.5 s. Printed per size:
peak PSS, the wall time to the end, and the rounds per minute once the first round
began (the simulation's own log timestamps are not used: wall time of the whole run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import threading
import time


def run_one(nodes: int, rounds: int, per_round: int, params: int, out: mp.Queue) -> None:
    import numpy as np
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        return Message(RecordDict({"arrays": arrays,
                                   "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=msg)

    server = ServerApp()
    marks: dict[str, float] = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        marks["first_round"] = time.time()
        strategy = FedAvg(fraction_train=per_round / nodes, fraction_evaluate=0.0,
                          min_train_nodes=per_round, min_available_nodes=nodes)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(
            [np.zeros(params, np.float32)]), num_rounds=rounds)
        marks["end"] = time.time()

    t0 = time.time()
    run_simulation(server_app=server, client_app=client, num_supernodes=nodes,
                   backend_config={"client_resources": {"num_cpus": 1}})
    out.put({"nodes": nodes, "wall_s": round(time.time() - t0, 1),
             "start_s": round(marks.get("first_round", t0) - t0, 1),
             "rounds_per_min": round(60 * rounds / max(1e-9, marks["end"]
                                                       - marks["first_round"]), 1)
             if "end" in marks else None})


def pss_tree(pid: int) -> int:
    import psutil

    total = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_full_info().pss
    return total


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (Ray's included)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="1000,10000,100000")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--params", type=int, default=7531)
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds a size may run; then its process tree is killed")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    for nodes in (int(n) for n in args.nodes.split(",")):
        out: mp.Queue = ctx.Queue()
        child = ctx.Process(target=run_one, args=(nodes, args.rounds, args.per_round,
                                                  args.params, out))
        child.start()
        peak = [0]
        done = threading.Event()

        def sample(pid: int = child.pid, peak: list[int] = peak,
                   done: threading.Event = done) -> None:
            while not done.is_set():
                peak[0] = max(peak[0], pss_tree(pid))
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        child.join(args.timeout)
        timed_out = child.is_alive()
        if timed_out:
            kill_tree(child.pid)
            child.join()
        done.set()
        sampler.join()
        row = out.get(timeout=5) if not out.empty() else {"nodes": nodes, "failed": True}
        row.update(peak_pss_mb=round(peak[0] / 2**20, 1), exitcode=child.exitcode,
                   **({"timed_out_s": args.timeout} if timed_out else {}))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
