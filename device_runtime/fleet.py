"""The fleet: N emulated phones spread over worker processes, with progress and a summary.

Phone i holds the shard of user i of a seeded shuffle of the dataset's users (training
users train, held-out users evaluate); with more phones than users, users repeat on
phones of their own (distinct phones, same text). Each worker process builds its phones'
profiles itself (nothing large crosses process boundaries), runs a
:class:`~fedkb.device_runtime.worker.Worker`, and sends its counters to the parent twice
a second. The parent shows live progress, polls the server's ``/v1/status`` and stops
the workers when the server has committed the wanted rounds, the duration is over, or on
Ctrl-C / SIGTERM; then it prints a summary. ``workers=0`` runs one worker in-process (for
tests and the notebook): no extra processes at all.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.datasets.store import Dataset
from fedkb.device_runtime.clock import SimClock
from fedkb.device_runtime.faults import FaultSpec, injector
from fedkb.device_runtime.profile import DeviceProfile, make_profile
from fedkb.device_runtime.ray_options import RayOptions
from fedkb.device_runtime.traces import load_traces


@dataclass(frozen=True)
class FleetConfig:
    server: str
    data: Path
    devices: int
    speedup: float = 60.0
    start_hour: float = 22.0  # UTC hour at which the simulated clock starts
    workers: int = 0  # 0: in-process
    rounds: int | None = None  # stop once the server has committed this many rounds
    duration_s: float | None = None  # or after this many wall seconds
    trace_file: Path | None = None  # replay these traces instead of generating
    seed: int = 0
    # wall seconds a phone selected ahead of its round's model keeps a check-in open
    # (the server holds it until the task exists); 0: it asks again when told to
    claim_hold_s: float = 0.0
    # phones that misbehave on purpose (fedkb.device_runtime.faults); None: all honest
    faults: FaultSpec | None = None
    # run the phones on a Ray cluster instead of worker processes (fedkb...ray_fleet);
    # None: ``workers`` as above, and Ray is never imported
    ray: RayOptions | None = None


def phone_users(cfg: FleetConfig, ds: Dataset | None = None) -> list[tuple[str, str]]:
    """(user, role) of every phone: user i of a seeded shuffle of all users, repeating."""
    ds = ds or Dataset.open(cfg.data)
    users = [(u, "train") for u in ds.train_users] + [(u, "heldout") for u in ds.heldout_users]
    order = np.random.default_rng(cfg.seed).permutation(len(users))
    return [users[order[i % len(users)]] for i in range(cfg.devices)]


def fleet_profiles(cfg: FleetConfig, indices: range | list[int]) -> list[DeviceProfile]:
    """Profiles of phones ``indices`` (reproducible from ``cfg.seed``, any process)."""
    users = phone_users(cfg)
    traces = load_traces(cfg.trace_file) if cfg.trace_file else None
    keys = sorted(traces) if traces else []
    out = []
    for i in indices:
        user, role = users[i]
        name = f"phone-{i:05d}"
        trace = traces[keys[i % len(keys)]] if traces else None
        out.append(make_profile(user, role, cfg.seed, trace=trace, name=name))
    return out


def _shares(n: int, parts: int) -> list[range]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def _worker_main(cfg: FleetConfig, indices: range, wall0: float, stop: Any, out: Any,
                 owner: int, jobs: Any, results: list[Any]) -> None:
    """Entry point of a worker process (worker ``owner`` of the shared compute pool)."""
    from fedkb.device_runtime.compute import SharedCompute
    from fedkb.device_runtime.worker import Worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    clock = SimClock(cfg.speedup, cfg.start_hour)
    clock._wall0 = wall0  # every worker shares the parent's simulated clock
    worker = Worker(cfg.server, str(cfg.data), fleet_profiles(cfg, indices), clock,
                    seed=cfg.seed + indices.start,
                    compute=SharedCompute(owner, jobs, results), owner=owner,
                    hold_s=cfg.claim_hold_s, faults=injector(cfg.faults, cfg.seed))

    parent = os.getppid()

    def report() -> None:
        while not stop.wait(0.5):
            if os.getppid() != parent:  # the fleet's process died without stopping us
                break
            worker.refresh_gauges()
            out.put({**worker.stats.snapshot(), "worker": indices.start})
        worker.stop()

    threading.Thread(target=report, daemon=True).start()
    worker.run()
    worker.refresh_gauges()
    out.put({**worker.stats.snapshot(accepted=True), "worker": indices.start, "final": True})


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {"counts": Counter(), "aborted": Counter(), "failed": Counter(),
                             "completed_by_tier": Counter(), "eligible": 0, "training": 0,
                             "phones": 0, "accepted": []}
    for s in snapshots:
        total["accepted"].extend(s.get("accepted", []))
        for k in ("counts", "aborted", "failed", "completed_by_tier"):
            total[k].update(s.get(k, {}))
        for k in ("eligible", "training", "phones"):
            total[k] += s.get(k, 0)
    return total


def summarize(total: dict[str, Any], status: dict[str, Any] | None, wall_s: float,
              sim_s: float) -> dict[str, Any]:
    """The fleet's end-of-run summary, with Bonawitz et al.'s shares side by side."""
    c = total["counts"]
    received = c.get("tasks_received", 0)
    aborted = sum(total["aborted"].values())
    failed = sum(total["failed"].values())
    late = c.get("late", 0)
    completed = c.get("completed", 0)
    ended = completed + aborted + late + failed

    def share(x: int) -> float | None:
        return round(x / ended, 4) if ended else None

    return {
        "phones": total["phones"],
        "wall_s": round(wall_s, 2),
        "simulated_hours": round(sim_s / 3600, 2),
        "checkins": c.get("checkins", 0),
        "tasks": {"received": received, "completed": completed, "aborted": aborted,
                  "late": late, "failed": failed, "unfinished": received - ended},
        "aborted_by_reason": dict(total["aborted"]),
        "failed_by_code": dict(total["failed"]),
        "bytes": {"down": c.get("bytes_down", 0), "up": c.get("bytes_up", 0)},
        "completed_by_tier": dict(total["completed_by_tier"]),
        "training": {"steps": c.get("train_steps", 0),
                     "busy_s": round(c.get("train_busy_s", 0.0), 3),
                     "wall_per_step_ms": round(1000 * c.get("train_busy_s", 0.0)
                                               / max(1, c.get("train_steps", 0)), 3)},
        "mean_device_phase_sim_s": {
            k: round(c.get(f"sim_{k}", 0.0) / completed, 3) if completed else None
            for k in ("download_s", "compute_s", "upload_s")},
        "shares": {"completed": share(completed), "late": share(late),
                   "interrupted": share(aborted), "dropout": share(aborted + late + failed)},
        "bonawitz_2019": {"completed": 0.75, "late": 0.22, "interrupted": 0.02,
                          "dropout": "0.06-0.10"},
        "server": status or {},
        # the phones' side of secure rounds: exchanges held by the server (held_steps),
        # protocols completed, stopped, and unplugged mid-protocol; empty without secagg
        "secure_steps": {k.removeprefix("secagg_"): v for k, v in sorted(c.items())
                         if k.startswith("secagg_")},
        # what the injected faults were and how the server answered them (fault_<kind>,
        # fault_<kind>:<answer>); empty without --faults
        "faults": {k: v for k, v in sorted(c.items()) if k.startswith("fault_")},
    }


class Fleet:
    """Run the fleet described by ``cfg``; :meth:`run` blocks until it stops."""

    def __init__(self, cfg: FleetConfig,
                 on_progress: Callable[[dict[str, Any], dict[str, Any] | None, float], None]
                 | None = None,
                 stop_when: Callable[[dict[str, Any]], bool] | None = None):
        """``stop_when(status)`` replaces the ``rounds`` rule when given (parent side only)."""
        self.cfg = cfg
        self.on_progress = on_progress
        self.stop_when = stop_when
        self._stop = threading.Event()
        # after run(): every accepted training report, [round_id, user, batch_seed]
        self.accepted: list[list] = []

    def stop(self) -> None:
        self._stop.set()

    def _server_status(self, client) -> dict[str, Any] | None:
        try:
            return client.status()
        except Exception:  # the server may be down for a while: the fleet carries on
            return None

    def _should_stop(self, status: dict[str, Any] | None, t0: float) -> bool:
        if self._stop.is_set():
            return True
        if self.cfg.duration_s is not None and time.monotonic() - t0 >= self.cfg.duration_s:
            return True
        if status and self.stop_when is not None:
            return self.stop_when(status)
        return bool(self.cfg.rounds is not None and status
                    and status.get("rounds_committed", 0) >= self.cfg.rounds)

    def run(self) -> dict[str, Any]:
        from fedkb.device_runtime.client import DeviceClient

        cfg = self.cfg
        if cfg.devices < 1:
            raise ValueError("a fleet needs at least one device")
        t0 = time.monotonic()
        status_client = DeviceClient(cfg.server, timeout_s=5.0)
        clock = SimClock(cfg.speedup, cfg.start_hour)
        status: dict[str, Any] | None = None
        cluster: dict[str, Any] | None = None
        if cfg.ray is not None:
            from fedkb.device_runtime.ray_fleet import run_on_ray

            total, status, cluster = run_on_ray(self, clock, status_client, t0)
        elif cfg.workers <= 0:
            total, status = self._run_inprocess(clock, status_client, t0)
        else:
            total, status = self._run_processes(clock, status_client, t0)
        status = self._server_status(status_client) or status
        status_client.close()
        self.accepted = total["accepted"]
        summary = summarize(total, status, time.monotonic() - t0,
                            clock.now() - cfg.start_hour * 3600)
        if cluster is not None:
            summary["ray"] = cluster
        return summary

    def _run_inprocess(self, clock: SimClock, status_client, t0: float):
        from fedkb.device_runtime.worker import Worker

        worker = Worker(self.cfg.server, str(self.cfg.data),
                        fleet_profiles(self.cfg, range(self.cfg.devices)), clock,
                        seed=self.cfg.seed, hold_s=self.cfg.claim_hold_s,
                        faults=injector(self.cfg.faults, self.cfg.seed))
        thread = threading.Thread(target=worker.run, name="fedkb-fleet-worker", daemon=True)
        thread.start()
        status = None
        try:
            while thread.is_alive():
                status = self._server_status(status_client) or status
                worker.refresh_gauges()
                snap = merge([worker.stats.snapshot()])
                if self.on_progress:
                    self.on_progress(snap, status, clock.now())
                if self._should_stop(status, t0):
                    break
                self._stop.wait(0.5)
        finally:
            worker.stop()
            thread.join(timeout=60)
        return merge([worker.stats.snapshot(accepted=True)]), status

    def _run_processes(self, clock: SimClock, status_client, t0: float):
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        out = ctx.Queue()
        parts = [r for r in _shares(self.cfg.devices, min(self.cfg.workers, self.cfg.devices))
                 if len(r)]
        # one compute pool: every worker trains any worker's phones (fedkb...compute)
        jobs, results = ctx.Queue(), [ctx.Queue() for _ in parts]
        procs = [ctx.Process(target=_worker_main,
                             args=(self.cfg, r, clock._wall0, stop, out, i, jobs, results),
                             name=f"fedkb-fleet-worker-{i}", daemon=True)
                 for i, r in enumerate(parts)]
        for p in procs:
            p.start()
        latest: dict[int, dict[str, Any]] = {}
        status = None
        finals = 0
        try:
            while True:
                status = self._server_status(status_client) or status
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    with contextlib.suppress(Exception):
                        snap = out.get(timeout=max(0.01, deadline - time.monotonic()))
                        latest[snap["worker"]] = snap
                total = merge(list(latest.values()))
                if self.on_progress:
                    self.on_progress(total, status, clock.now())
                if self._should_stop(status, t0) or not any(p.is_alive() for p in procs):
                    break
        finally:
            stop.set()
            end = time.monotonic() + 30
            while finals < len(procs) and time.monotonic() < end:
                with contextlib.suppress(Exception):
                    snap = out.get(timeout=0.5)
                    latest[snap["worker"]] = snap
                    finals += bool(snap.get("final"))
            for p in procs:
                p.join(timeout=max(0.1, end - time.monotonic()))
                if p.is_alive():
                    p.kill()
                    p.join()
        return merge(list(latest.values())), status


def default_workers() -> int:
    return os.cpu_count() or 1
