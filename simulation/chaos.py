"""A chaos run: a faulty fleet trains while its server is killed (SIGKILL) and restarted.

:func:`run_chaos` runs `fedkb server` (its own process) and the fleet of a
:class:`~fedkb.simulation.fleet_config.FleetRunConfig` (with its ``faults``), and kills
the server ``kills`` times, each time restarting it on the same state directory and
port. The first kill lands during a commit: the checkpoint directory is watched for the
temporary file a commit writes (``.vNNNNNN.safetensors.tmp-PID``) and the server is
killed the moment one exists (if none is seen in ``commit_watch_s``, or two commits
slip past the watch, it is killed then, mid-round, and the report says so).
The other kills land mid-round. Around each kill it records what
:mod:`~fedkb.simulation.chaos_checks` needs: the versions the database held just before
(none may be lost), the temporary files left (the restart must remove them), and the
recovery time (kill -> the first successful check-in, by a probe device that checks in
every 20 ms, and the restart's own time). At the end it proves from the state directory
and the server's own counts that no bad update was folded and reports held-out recall.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedkb import wire
from fedkb.datasets.store import Dataset
from fedkb.simulation import chaos_checks as checks
from fedkb.simulation.fleet_config import FleetRunConfig, seats, train_phones, write_server_config

PROBE = wire.Conditions(charging=False, unmetered=True, idle=True, battery=0.9)  # never picked


@dataclasses.dataclass(frozen=True)
class ChaosConfig:
    """``kills`` SIGKILLs (the first during a commit), spread evenly over the run's rounds;
    ``timeout_s`` bounds the fleet; ``commit_watch_s`` how long to wait for a commit."""

    run: FleetRunConfig
    kills: int = 2
    timeout_s: float = 900.0
    commit_watch_s: float = 120.0


class _Server:
    """The server process, killed and restarted on one state dir and port."""

    def __init__(self, cfg: FleetRunConfig, workdir: Path, artifact: Path):
        from fedkb.simulation.server_process import ServerProcess

        ds = Dataset.open(cfg.data)
        trainers = train_phones(ds, cfg)
        config = write_server_config(cfg, workdir / "server-config.json", trainers,
                                     cfg.devices - trainers)
        self.state = workdir / "server-state"
        threads = max(8, seats(cfg.round) + 8) if cfg.claim_hold_s > 0 else None
        self.make = lambda port: ServerProcess(self.state, model=artifact, config=config,
                                               rounds=cfg.rounds, port=port, threads=threads)
        self.proc = self.make(0)
        self.url = self.proc.start()
        self.port = urlparse(self.url).port

    def kill(self) -> None:
        p = self.proc.proc
        assert p is not None
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        self.proc.proc = None

    def restart(self) -> None:
        for attempt in range(20):  # the port may linger a moment after the kill
            try:
                self.proc = self.make(self.port)
                assert self.proc.start() == self.url
                return
            except RuntimeError:
                if attempt == 19:
                    raise
                time.sleep(0.5)


def _status(client) -> dict[str, Any]:
    with contextlib.suppress(Exception):
        return client.status()
    return {}


def _wait(client, pred, timeout_s: float, stop: threading.Event) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not stop.is_set():
        st = _status(client)
        if st and pred(st):
            return st
        time.sleep(0.05)
    return {}


def _kill_during_commit(server: _Server, client, committed: int, watch_s: float) -> str:
    """Kill the server while it writes the next version (or right after, if not caught)."""
    ckpt = server.state / checks.CHECKPOINTS
    end = time.monotonic() + watch_s
    ask = time.monotonic() + 1.0
    while time.monotonic() < end:
        with contextlib.suppress(FileNotFoundError):
            for e in os.scandir(ckpt):
                if ".tmp-" in e.name:
                    server.kill()
                    return f"during_commit ({e.name})"
        time.sleep(0.0005)
        if time.monotonic() > ask:
            ask = time.monotonic() + 1.0
            if _status(client).get("rounds_committed", 0) > committed + 1:
                break  # two commits slipped past the watch: stop trying
    server.kill()
    return "mid_round (no checkpoint write caught in time)"


def _recover(server: _Server, client, token: str, t_kill: float) -> dict[str, float]:
    """Restart; time the restart and the first successful check-in after the kill."""
    from fedkb.device_runtime.client import ClientError

    done: dict[str, float] = {}

    def probe() -> None:
        while time.monotonic() - t_kill < 120:
            try:
                client.checkin(token, PROBE, None)
                done["first_checkin_s"] = time.monotonic() - t_kill
                return
            except ClientError:
                time.sleep(0.02)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    server.restart()
    done["restart_s"] = time.monotonic() - t_kill
    t.join(timeout=125)
    return done


def run_chaos(cc: ChaosConfig, workdir: Path, log=print) -> dict[str, Any]:
    """Run it (see the module docstring); returns the report (failures as data)."""
    from fedkb.device_runtime.client import DeviceClient
    from fedkb.device_runtime.fleet import Fleet, FleetConfig
    from fedkb.simulation.fleet_engine import ensure_artifact, heldout_eval
    from fedkb.simulation.fleet_run import get_json, get_weights

    cfg = cc.run
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    artifact = ensure_artifact(cfg.data, cfg.preset, cfg.artifact or workdir / "model")
    server = _Server(cfg, workdir, artifact)
    url, state = server.url, server.state
    client = DeviceClient(url, timeout_s=2.0)
    token = client.register("heldout", "chaos-probe").token
    fleet = Fleet(FleetConfig(url, cfg.data, cfg.devices, speedup=cfg.speedup,
                              start_hour=cfg.start_hour, workers=cfg.workers, rounds=cfg.rounds,
                              seed=cfg.seed, duration_s=cc.timeout_s,
                              claim_hold_s=cfg.claim_hold_s, faults=cfg.faults))
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(summary=fleet.run()), daemon=True)
    thread.start()
    stop = threading.Event()
    kills: list[dict[str, Any]] = []
    try:
        for i in range(cc.kills):
            at = max(1, math.ceil(cfg.rounds * (i + 1) / (cc.kills + 1)))
            if i == 0:
                st = _wait(client, lambda s, a=at: s.get("rounds_committed", 0) >= a - 1,
                           cc.timeout_s, stop)
                before = checks.committed_versions(state)
                how = _kill_during_commit(server, client, st.get("rounds_committed", 0),
                                          cc.commit_watch_s)
            else:
                st = _wait(client, lambda s, a=at: s.get("rounds_committed", 0) >= a,
                           cc.timeout_s, stop)
                time.sleep(1.0)  # into the next round's selection or reporting
                before = checks.committed_versions(state)
                server.kill()
                how = "mid_round"
            t_kill = time.monotonic()
            durable = checks.committed_versions(state)
            left = checks.stale_temporaries(state)
            rec = _recover(server, client, token, t_kill)
            kill = {"kill": i + 1, "when": how, "versions_before": max(before, default=None),
                    "versions_durable": max(durable, default=None),
                    "versions_lost": checks.versions_lost({**before, **durable}, state),
                    "temporaries_left": left,
                    "temporaries_after_restart": checks.stale_temporaries(state),
                    "version_after_restart": _status(client).get("model_version"),
                    **{k: round(v, 3) for k, v in rec.items()}}
            kills.append(kill)
            log(f"kill {i + 1}: {kill}")
        thread.join(timeout=cc.timeout_s)
        fleet.stop()
        thread.join(timeout=60)
        status = get_json(url, "/v1/status")
        rounds = get_json(url, "/v1/rounds?limit=1000")["rounds"]
        final = get_weights(url, status["model_version"])
    finally:
        stop.set()
        fleet.stop()
        client.close()
        server.proc.stop()
    summary = out.get("summary", {})
    train = [r for r in rounds if r["kind"] == "train"]
    abandoned: dict[str, int] = {}
    for r in train:
        if r["state"] == "abandoned":
            key = (r.get("reason") or "?").split(":")[0]
            abandoned[key] = abandoned.get(key, 0) + 1
    bound = cfg.strategy.clip_norm or cfg.round.max_update_norm or \
        _derived_bound(state)
    counts, _ = heldout_eval(artifact, final, Dataset.open(cfg.data))
    report = {
        "config": {"devices": cfg.devices, "rounds": cfg.rounds, "preset": cfg.preset,
                   "faults": cfg.faults.text() if cfg.faults else None, "seed": cfg.seed,
                   "kills": cc.kills},
        "wall_s": round(time.monotonic() - t0, 1),
        "rounds_committed": sum(r["state"] == "committed" for r in train),
        "rounds_abandoned": abandoned,
        "model_version": status["model_version"],
        "kills": kills,
        "versions_lost": sum(len(k["versions_lost"]) for k in kills),
        "accounting": checks.fault_accounting(summary.get("faults", {}), rounds),
        "replay": {k: v for k, v in checks.replay_commits(state, cfg.strategy, bound).items()
                   if k != "rows"},
        "heldout": {"top1_recall": round(counts.top1_recall, 5),
                    "top3_recall": round(counts.top3_recall, 5)},
        "fleet": {"tasks": summary.get("tasks"), "failed_by_code": summary.get(
            "failed_by_code"), "aborted_by_reason": summary.get("aborted_by_reason")},
    }
    report["orphans"] = checks.orphans(os.getpid(), state)
    return report


def _derived_bound(state: Path) -> float:
    from fedkb.artifact import Artifact
    from fedkb.server.aggregate import derived_update_norm

    return derived_update_norm(Artifact.load(state / "artifact").initial_weights())
