"""The fleet on a Ray cluster: phone shards on long-lived actors, training on any core.

:func:`run_on_ray` is :class:`~fedkb.device_runtime.fleet.Fleet`'s third way to run (after
in-process and worker processes), used when its config has ``ray`` set. It connects to
the cluster (or starts a private one: ``address="local"``), then places

- one bounded job queue (``ray.util.queue.Queue``) on the driver's node;
- ``shards`` :class:`~fedkb.device_runtime.ray_actors.PhoneShard` actors, spread over the
  nodes, each owning a contiguous range of phones (the same split as worker processes);
- ``trainers`` :class:`~fedkb.device_runtime.ray_actors.TrainingWorker` actors, spread
  too, each declaring its CPUs, so Ray never puts more of them on a node than it has cores.

Every node reaches the server over HTTP itself (the server is unchanged). The driver polls
each actor's counters twice a second, as the parent of worker processes does, and stops
when the same rules say so. An actor whose node dies is restarted by Ray where resources
allow; a restarted shard's phones register again (the server saw the old ones' tasks
time out: dropouts). The driver keeps the last counters of every dead life, so the
summary counts what they did, and says how many lives ended and how many tasks were in
flight when they did (``summary["ray"]``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fedkb.device_runtime.ray_options import LOCAL, RayOptions

SNAPSHOT_TIMEOUT_S = 2.0
STOP_SILENT_WAIT_S = 15.0  # at the end, how long an actor that stopped answering may take

# Read when Ray is imported, so set before this module or anything else imports it. Under
# `uv run`, Ray would start every worker with `uv run` and ship the working tree as a
# runtime env; the fleet's nodes run the installed package instead (README: the cluster).
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# A raylet gives up when its agents take over 30 s to start, which a loaded machine
# exceeds (measured at load 20 on 2 cores): allow two minutes.
os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")


def connect(opts: RayOptions) -> bool:
    """Connect to (or start) the cluster; True when this call started Ray itself."""
    import ray

    if ray.is_initialized():
        return False
    # Ray's core worker installs a SIGTERM handler that aborts the process: keep the
    # caller's (`fedkb fleet` stops the phones and prints its summary on SIGTERM)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if opts.address == LOCAL:
        # "local" always starts a new instance: with no address, Ray would join the cluster
        # last started on this machine (another user's, a test's)
        ray.init(address=LOCAL, include_dashboard=False, **kwargs)
    else:
        ray.init(address=opts.address, **kwargs)
    if main and previous is not None:
        signal.signal(signal.SIGTERM, previous)
    return True


def _shares(n: int, parts: int) -> list[range]:
    from fedkb.device_runtime.fleet import _shares as shares

    return [r for r in shares(n, min(parts, n)) if len(r)]


class RayFleet:
    """The actors of one run; :meth:`close` always removes them."""

    def __init__(self, cfg: Any, wall0_epoch: float) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from fedkb.device_runtime.ray_actors import PhoneShard, TrainingWorker

        # actors run in Ray's own working directory: every path absolute (the same path
        # must hold the dataset on every node)
        cfg = dataclasses.replace(cfg, data=Path(cfg.data).resolve(), trace_file=None if
                                  cfg.trace_file is None else Path(cfg.trace_file).resolve())
        opts: RayOptions = cfg.ray
        self.opts = opts
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        shards = _shares(cfg.devices, opts.shards or max(1, len(nodes)))
        trainers = opts.trainers or max(1, math.floor(
            (cpus - len(shards) * opts.shard_cpus) / opts.trainer_cpus))
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                              soft=True)
        self.jobs = Queue(maxsize=opts.bounded_queue(trainers),
                          actor_options={"num_cpus": 0, "max_restarts": -1,
                                         "scheduling_strategy": here})
        self.shards = [
            PhoneShard.options(num_cpus=opts.shard_cpus,
                               memory=opts.shard_base_bytes + len(r) * opts.phone_bytes,
                               max_restarts=-1, max_concurrency=8,
                               scheduling_strategy="SPREAD")
            .remote(cfg, r, i, wall0_epoch, self.jobs)
            for i, r in enumerate(shards)]
        self.trainers = [
            TrainingWorker.options(num_cpus=opts.trainer_cpus, memory=opts.trainer_bytes,
                                   max_restarts=-1, max_concurrency=4,
                                   scheduling_strategy="SPREAD")
            .remote(cfg, wall0_epoch, self.jobs, self.shards)
            for _ in range(trainers)]
        self.nodes = len(nodes)
        # the newest counters of each actor's current life, and those of lives that ended
        self.latest: dict[tuple[str, int], dict[str, Any]] = {}
        self.ended: list[dict[str, Any]] = []
        self.accepted: dict[tuple[str, int, str], list[list]] = {}
        self.lives_ended = 0
        # each actor's current life as the driver knows it: from its ready() answer, then
        # from every snapshot (a shard killed before it ever answered a snapshot still
        # has one, so its restart counts)
        self.lives: dict[tuple[str, int], str] = {}
        self.silent: set[tuple[str, int]] = set()  # did not answer the last poll
        self.pending: dict[tuple[str, int], Any] = {}  # the call out to each actor
        self.timings: dict[str, float] = {}  # connecting, and the actors' start (phones built)
        self.lost_in_flight = 0

    def actors(self) -> list[tuple[tuple[str, int], Any]]:
        return [*((("shard", i), a) for i, a in enumerate(self.shards)),
                *((("trainer", i), a) for i, a in enumerate(self.trainers))]

    def wait_ready(self, stop: Any = None) -> list[dict[str, Any]]:
        """Block until every actor has started (placed, phones built); raise if they cannot.

        Waits a second at a time, so a Ctrl-C (``stop``, a threading.Event) ends it.
        """
        import ray

        refs = [a.ready.remote() for _, a in self.actors()]
        pending = refs
        give_up = time.monotonic() + self.opts.ready_timeout_s
        while pending and time.monotonic() < give_up and not (stop and stop.is_set()):
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=1.0)
        if stop is not None and stop.is_set():
            return []
        if pending:
            raise RuntimeError(
                f"{len(pending)} of {len(refs)} fleet actors did not start within "
                f"{self.opts.ready_timeout_s:g} s; the cluster has {ray.cluster_resources()} "
                f"({ray.available_resources()} free): declare less per actor (RayOptions) "
                f"or add nodes")
        infos = [ray.get(ref) for ref in refs]
        for (key, _), info in zip(self.actors(), infos, strict=True):
            if info.get("incarnation"):
                self.lives[key] = info["incarnation"]
        return infos

    def _call(self, key: tuple[str, int], actor: Any, method: str) -> Any:
        if key[0] == "trainer":
            return getattr(actor, method).remote()
        prev = self.latest.get(key, {})
        life = prev.get("incarnation", "")
        return getattr(actor, method).remote(life, len(self.accepted.get((*key, life), [])))

    def poll(self, method: str = "snapshot", timeout_s: float = SNAPSHOT_TIMEOUT_S,
             silent_wait_s: float = 0.0) -> None:
        """Collect every live actor's counters (a dead or slow one keeps its last ones).

        Waits up to ``timeout_s`` for the actors that answered last time; one that did not
        (dead, restarting, or pending for want of resources) is waited for only
        ``silent_wait_s`` more, and its call stays out: a later poll takes its answer
        when it comes (a restarted shard answers its first call only once its phones are
        built, which takes longer than one poll). One call per actor is out at a time, so
        no accepted report is counted twice. A ``stop`` supersedes the snapshots still out.
        """
        import ray

        if method != "snapshot":
            self.pending.clear()
        for key, actor in self.actors():
            if key not in self.pending:
                self.pending[key] = self._call(key, actor, method)
        awaited = [ref for key, ref in self.pending.items() if key not in self.silent]
        if awaited:
            ray.wait(awaited, num_returns=len(awaited), timeout=timeout_s)
        refs = list(self.pending.values())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=silent_wait_s)
        done = set(ready)
        for key, ref in list(self.pending.items()):
            if ref not in done:
                self.silent.add(key)
                continue
            del self.pending[key]
            try:
                snap = ray.get(ref)
            except ray.exceptions.RayError:
                self.silent.add(key)  # its node or process died: Ray restarts it, or not
                continue
            self.silent.discard(key)
            self._take(key, snap)

    def _take(self, key: tuple[str, int], snap: dict[str, Any]) -> None:
        prev = self.latest.get(key)
        life = snap.get("incarnation", "")
        known = self.lives.get(key, prev.get("incarnation") if prev is not None else None)
        if known is not None and known != life:
            self.lives_ended += 1  # it died and Ray restarted it
        if prev is not None and prev.get("incarnation", "") != life:
            # keep what the ended life had done
            self.lost_in_flight += int(prev.get("training", 0))
            self.ended.append({**prev, "training": 0, "eligible": 0, "phones": 0})
        self.lives[key] = life
        self.accepted.setdefault((*key, life), []).extend(snap.pop("accepted", []))
        self.latest[key] = snap

    def total(self) -> dict[str, Any]:
        from fedkb.device_runtime.fleet import merge

        total = merge([*self.ended, *self.latest.values()])
        total["accepted"] = [a for log in self.accepted.values() for a in log]
        return total

    def _count(self, name: str) -> int:
        return sum(s.get("counts", {}).get(name, 0) for s in [*self.ended, *self.latest.values()])

    def report(self) -> dict[str, Any]:
        """What the summary says about the cluster (``summary["ray"]``)."""
        by_node: Counter = Counter()
        trainers_by_node: Counter = Counter()
        for (kind, _), snap in self.latest.items():
            if kind == "shard":
                by_node[snap["node"]] += snap.get("phones", 0)
            else:
                trainers_by_node[snap["node"]] += 1
        shard_mem = [(s["rss_with_phones"] - s["rss_before_phones"]) / max(1, s["phones"])
                     for (kind, _), s in self.latest.items() if kind == "shard"]
        return {**self.timings, "nodes": self.nodes, "shards": len(self.shards),
                "trainers": len(self.trainers), "phones_by_node": dict(by_node),
                "trainers_by_node": dict(trainers_by_node),
                "actor_lives_ended": self.lives_ended,
                "tasks_in_flight_lost": self.lost_in_flight,
                "jobs_given_up": self._count("lost_jobs"),
                "jobs_unqueued": {"full": self._count("queue_full"),
                                  "unreachable": self._count("queue_unreachable")},
                "bytes_per_phone_built": round(sum(shard_mem) / len(shard_mem))
                if shard_mem else None,
                "jobs_taken": sum(s.get("jobs_taken", 0) for (k, _), s in self.latest.items()
                                  if k == "trainer")}

    def stop(self) -> None:
        """Stop every actor's loop and collect its final counters (bounded in time)."""
        self.poll("stop", timeout_s=60.0, silent_wait_s=STOP_SILENT_WAIT_S)

    def close(self) -> None:
        import ray

        for _, actor in self.actors():
            ray.kill(actor, no_restart=True)
        ray.kill(self.jobs.actor, no_restart=True)


def run_on_ray(fleet: Any, clock: Any, status_client: Any, t0: float
               ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Run ``fleet`` (a :class:`~fedkb.device_runtime.fleet.Fleet`) on its Ray cluster.

    Returns the merged counters, the server's last status and the cluster's report.
    """
    import ray

    t_connect = time.monotonic()
    started = connect(fleet.cfg.ray)
    run: RayFleet | None = None
    status = None
    try:
        # the simulated clock's zero as a wall-clock instant, the same on every node
        wall0_epoch = time.time() - (time.monotonic() - clock._wall0)
        t_build = time.monotonic()
        run = RayFleet(fleet.cfg, wall0_epoch)
        run.wait_ready(fleet._stop)
        run.timings = {"connect_s": round(t_build - t_connect, 2),
                       "actors_ready_s": round(time.monotonic() - t_build, 2)}
        while True:
            tick = time.monotonic() + 0.5
            status = fleet._server_status(status_client) or status
            run.poll()
            if fleet.on_progress:
                fleet.on_progress(run.total(), status, clock.now())
            if fleet._should_stop(status, t0):
                break
            fleet._stop.wait(max(0.0, tick - time.monotonic()))
        run.stop()
        return run.total(), status, run.report()
    finally:
        if run is not None:
            run.close()
        if started:
            ray.shutdown()
