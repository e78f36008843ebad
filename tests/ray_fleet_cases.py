"""Cases run by tests/test_ray_fleet.py, each in its own pytest process: the fleet on a
real two-node Ray cluster on this machine (loopback only).

A ``ray.cluster_utils.Cluster`` with two nodes (a head and one more, each its own raylet,
few CPUs and a small object store declared) runs a tiny-preset fleet against a real
server: rounds are committed with phones on both nodes. Then one node is killed mid-round
(its raylet and workers, no graceful shutdown): the round is abandoned or completes
without it, the restarted shard registers its phones again, the run finishes, and the
summary counts the lost life. The job queue's actor (on the head) is killed too: the
shards give back what they cannot queue, the jobs it held are given up at their
deadlines, Ray restarts it, and rounds commit again (the tiny model's jobs are taken at
once, so the dead queue seldom held one: ``tests/test_ray_compute.py`` covers jobs given
up). No Ray process is left afterwards.

Skipped only where Ray is not installed (``uv sync --extra ray``; CI installs it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from server_support import kill, start_server

# Loopback only: Ray otherwise binds every node to the default route's address (and
# rewrites 127.0.0.1 to it); read when Ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"  # workers run the installed package
os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")  # a loaded CI machine
ray = pytest.importorskip("ray")

from fedkb.device_runtime.fleet import Fleet, FleetConfig  # noqa: E402
from fedkb.device_runtime.ray_options import RayOptions  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MB = 1024 * 1024
NODE = {"num_cpus": 2, "object_store_memory": 80 * MB, "node_ip_address": "127.0.0.1"}
OTHER_IP = "127.0.0.2"  # the second node's (Linux routes all of 127/8 to loopback)
# tests/test_ray_fleet.py gives each attempt a short temp dir of its own (Ray's sockets
# live under it: a Unix socket path has ~107 bytes), and waits for the marker file that
# says the cluster is up before it gives the case time to run
TEMP_DIR = os.environ.get("FEDKB_RAY_TEMP_DIR")
UP_MARKER = os.environ.get("FEDKB_RAY_UP_MARKER")


def _status(url: str) -> dict:
    return requests.get(f"{url}/v1/status", timeout=10).json()


def _ray_processes() -> set[psutil.Process]:
    return set(psutil.Process().children(recursive=True))


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    before = _ray_processes()
    node = {**NODE, **({"temp_dir": TEMP_DIR} if TEMP_DIR else {})}
    # Cluster writes the address file under $RAY_TMPDIR/ray (default /tmp/ray) even when
    # the nodes have a temp_dir of their own, and does not create that folder itself
    from ray._common.utils import get_ray_temp_dir
    os.makedirs(get_ray_temp_dir(), exist_ok=True)
    c = Cluster(initialize_head=True,
                head_node_args={**node, "include_dashboard": False})
    try:
        # the other node on a loopback address of its own, so that a driver told the
        # head's IP can take only the head's raylet (the node-kill case)
        c.other = c.add_node(**{**node, "node_ip_address": OTHER_IP})
        c.wait_for_nodes()
        if UP_MARKER:
            Path(UP_MARKER).write_text(c.address)
        yield c
    finally:
        started = _ray_processes() - before
        c.shutdown()
        _, alive = psutil.wait_procs(list(started), timeout=20)
        for p in alive:
            p.kill()
        assert not alive, f"Ray processes left: {alive}"


@pytest.fixture
def server(tmp_path, tiny_artifact):
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"tick_s": 0.2, "round": {
        "report_goal": 3, "selection_window_s": 2, "reporting_deadline_s": 8,
        "eval_every": 0}, "client": {"max_steps": 5}}))
    proc, url = start_server(tmp_path / "state", tiny_artifact, config, tmp_path / "server.log")
    try:
        yield url
    finally:
        kill(proc)


def _fleet(cluster, url: str, data, rounds: int | None, trainers: int = 2) -> Fleet:
    opts = RayOptions(address=cluster.address, shards=2, trainers=trainers, phone_bytes=16_000,
                      shard_base_bytes=50 * MB, trainer_bytes=100 * MB, ready_timeout_s=120)
    return Fleet(FleetConfig(url, data, 24, speedup=60, start_hour=1, rounds=rounds,
                             duration_s=300, seed=3, ray=opts))


def test_a_two_node_cluster_commits_rounds_with_phones_on_both_nodes(cluster, server,
                                                                      tiny_data):
    summary = _fleet(cluster, server, tiny_data, rounds=3).run()
    print(json.dumps({"ray": summary["ray"], "tasks": summary["tasks"]}))
    status = _status(server)
    assert status["rounds_committed"] >= 3
    ray_part = summary["ray"]
    assert ray_part["nodes"] == 2 and ray_part["shards"] == 2 and ray_part["trainers"] == 2
    # the phones live on both nodes, and so do the training workers
    assert len(ray_part["phones_by_node"]) == 2, ray_part
    assert sum(ray_part["phones_by_node"].values()) == 24
    assert summary["phones"] == 24
    assert summary["tasks"]["completed"] >= 9
    assert ray_part["jobs_taken"] >= summary["tasks"]["completed"]
    assert ray_part["actor_lives_ended"] == 0
    assert not ray.is_initialized()  # the fleet disconnected from the cluster


def _registered(status: dict) -> int:
    return sum(status.get("devices", {}).values())


def test_killing_a_node_mid_round_loses_its_tasks_and_the_run_goes_on(cluster, server,
                                                                       tiny_data):
    # The driver (this process) must hang off the head's raylet, not the doomed node's:
    # a driver takes a raylet of its node IP, which Ray reads from a file the last node
    # started wrote (here the other's), so it is told the head's IP. Killing the node a
    # driver hangs off kills the driver (exit 1, nothing printed: 1 run in 4 before).
    ray.init(address=cluster.address, _node_ip_address=NODE["node_ip_address"],
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        _kill_the_other_node_mid_round(cluster, server, tiny_data)
    finally:
        ray.shutdown()


def _kill_the_other_node_mid_round(cluster, server, tiny_data) -> None:
    assert ray.get_runtime_context().get_node_id() == cluster.head_node.node_id
    fleet = _fleet(cluster, server, tiny_data, rounds=None)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(summary=fleet.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 150
        # mid-round: a round committed already, the next one has tasks out
        while time.monotonic() < deadline and thread.is_alive():
            s = _status(server)
            if s["rounds_committed"] >= 2:
                break
            time.sleep(0.3)
        assert thread.is_alive(), out
        before = _registered(s)
        doomed = {p.pid for p in psutil.Process(cluster.other.all_processes[
            "raylet"][0].process.pid).children(recursive=True)}
        cluster.remove_node(cluster.other, allow_graceful=False)
        # the run goes on: more rounds commit, and the restarted shard's phones register
        # again (new devices on the server)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and thread.is_alive():
            s = _status(server)
            if s["rounds_committed"] >= 5 and _registered(s) > before:
                break
            time.sleep(0.5)
        fleet.stop()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the fleet did not finish after losing a node"
    finally:
        fleet.stop()
        thread.join(timeout=60)
    summary = out["summary"]
    print(json.dumps({"ray": summary["ray"], "tasks": summary["tasks"]}))
    status = _status(server)
    assert status["rounds_committed"] >= 5
    assert _registered(status) > before
    # the killed node's shard was restarted on the head: its phones registered again
    assert summary["ray"]["actor_lives_ended"] >= 1, summary["ray"]
    assert summary["phones"] == 24
    assert len(summary["ray"]["phones_by_node"]) == 1
    assert not [pid for pid in doomed if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def _queue_actor() -> psutil.Process | None:
    """The job queue's actor process: Ray titles an actor's worker ``ray::_QueueActor``
    (``ray::_QueueActor.get`` while it runs a method)."""
    for p in _ray_processes():
        with contextlib.suppress(psutil.Error):
            if (p.cmdline() or [""])[0].startswith("ray::_QueueActor"):
                return p
    return None


def test_killing_the_job_queue_mid_round_and_the_run_goes_on(cluster, server, tiny_data):
    # one trainer for a round's three jobs, so the queue likely holds some when it dies
    fleet = _fleet(cluster, server, tiny_data, rounds=None, trainers=1)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(summary=fleet.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and thread.is_alive():
            s = _status(server)
            if s["rounds_committed"] >= 2:
                break
            time.sleep(0.3)
        assert thread.is_alive(), out
        doomed = _queue_actor()
        assert doomed is not None, [p.cmdline()[:1] for p in _ray_processes()]
        doomed.kill()  # SIGKILL: its queued jobs are gone with it
        doomed.wait(timeout=30)
        committed = s["rounds_committed"]
        # Ray restarts the queue (max_restarts=-1) empty; phones whose jobs it held are
        # freed at their deadlines, and rounds commit again
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and thread.is_alive():
            s = _status(server)
            if s["rounds_committed"] >= committed + 3:
                break
            time.sleep(0.5)
        reborn = _queue_actor()
        fleet.stop()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the fleet did not finish after losing its queue"
    finally:
        fleet.stop()
        thread.join(timeout=60)
    summary = out["summary"]
    print(json.dumps({"ray": summary["ray"], "tasks": summary["tasks"]}))
    assert _status(server)["rounds_committed"] >= committed + 3
    assert reborn is not None and reborn.pid != doomed.pid
    assert summary["phones"] == 24
