"""End to end: a real server process and real emulated phones (LiteRT) train the model.

- the `fedkb fleet` command (worker processes) against `fedkb server` commits rounds and
  changes the global model, then exits with a summary and leaves no process behind;
- fidelity: one round of our whole stack (LiteRT phones + HTTP + server aggregation)
  gives the same global weights as TensorFlow Federated's FedAvg round;
- fidelity over a whole run: `fedkb simulate --engine fleet` logs which users each round
  aggregated, and TFF replaying those clients (`--engine tff --schedule`) ends at the
  same held-out loss and recall.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from server_support import kill, start_server

from fedkb.codec import decode_arrays, encode_arrays
from fedkb.datasets.store import Dataset
from fedkb.device_runtime.clock import SimClock
from fedkb.device_runtime.profile import TIERS, DeviceProfile
from fedkb.device_runtime.traces import NETWORKS, Trace
from fedkb.device_runtime.worker import Worker
from fedkb.keyboard import FIGURES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ALWAYS = Trace(np.array([0.0]), np.array([True]), np.array([NETWORKS.index("wifi")]),
               np.array([True]), np.array([0.9]))


def _status(url: str) -> dict:
    return requests.get(f"{url}/v1/status", timeout=10).json()


def test_fleet_command_trains_rounds_against_a_real_server(tmp_path, tiny_data, tiny_artifact):
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"tick_s": 0.2, "round": {
        "report_goal": 5, "selection_window_s": 3, "reporting_deadline_s": 20,
        "eval_every": 2, "eval_goal": 2}, "client": {"max_steps": 10}}))
    proc, url = start_server(tmp_path / "state", tiny_artifact, config, tmp_path / "server.log")
    try:
        fleet = subprocess.run(
            [sys.executable, "-m", "fedkb", "fleet", "--server", url, "--data", str(tiny_data),
             "--devices", "50", "--workers", "2", "--rounds", "3", "--speedup", "60",
             "--start-hour", "1", "--json"],
            capture_output=True, text=True, timeout=240)
        assert fleet.returncode == 0, fleet.stderr[-3000:]
        summary = json.loads(fleet.stdout)
        status = _status(url)
        assert status["rounds_committed"] >= 3 and status["model_version"] >= 3
        assert summary["phones"] == 50
        assert summary["tasks"]["completed"] >= 15
        assert summary["bytes"]["down"] > 0 and summary["bytes"]["up"] > 0
        assert sum(summary["completed_by_tier"].values()) == summary["tasks"]["completed"]
        w0 = decode_arrays(requests.get(f"{url}/v1/models/0/weights", timeout=10).content)
        v = status["model_version"]
        wn = decode_arrays(requests.get(f"{url}/v1/models/{v}/weights", timeout=10).content)
        assert max(float(np.abs(a - b).max()) for a, b in zip(w0, wn, strict=True)) > 1e-3
    finally:
        kill(proc)


def test_one_round_of_our_stack_equals_tff_fedavg(tmp_path, tiny_data, tiny_artifact):
    from fedkb.simulation.tff_engine import run_tff_isolated

    ds = Dataset.open(tiny_data)
    users = ds.train_users[:4]
    lr = 0.3
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"tick_s": 0.1, "round": {
        "report_goal": len(users), "overselect": 1.0, "min_fraction": 1.0,
        "selection_window_s": 60, "reporting_deadline_s": 120, "pipeline": False,
        "eval_every": 0, "max_rounds": 1}, "client": {"lr": lr, "epochs": 1, "max_steps": 1000}}))
    proc, url = start_server(tmp_path / "state", tiny_artifact, config, tmp_path / "server.log")
    try:
        profiles = [DeviceProfile(f"phone-{i}", u, "train", TIERS[2], 1e9, 1e9, 0.0, ALWAYS)
                    for i, u in enumerate(users)]
        worker = Worker(url, str(tiny_data), profiles, SimClock(speedup=1.0))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while _status(url)["rounds_committed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        worker.stop()
        thread.join(timeout=30)
        assert worker.stats.counts["completed"] == len(users), worker.stats.snapshot()
        ours = decode_arrays(requests.get(f"{url}/v1/models/1/weights", timeout=10).content)
        w0 = decode_arrays(requests.get(f"{url}/v1/models/0/weights", timeout=10).content)
    finally:
        kill(proc)

    meta = json.loads((tiny_artifact / "metadata.json").read_text())
    (tmp_path / "w0.bin").write_bytes(encode_arrays(w0))
    run_tff_isolated({
        "data": str(tiny_data), "model": meta["config"], "weights": str(tmp_path / "w0.bin"),
        "rounds": [[[u, 0] for u in users]], "epochs": 1, "max_steps": 1000, "client_lr": lr,
        "server_lr": 1.0, "weights_out": str(tmp_path / "tff.bin")}, tmp_path / "tff")
    theirs = decode_arrays((tmp_path / "tff.bin").read_bytes())
    moved = max(float(np.abs(a - b).max()) for a, b in zip(ours, w0, strict=True))
    worst = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True))
    assert moved > 1e-3
    print(f"fidelity: max |ours - TFF| = {worst:.2e} (model moved {moved:.2e})")
    assert worst < 1e-4, worst


def test_tff_replaying_a_fleet_run_reaches_the_same_recall(tmp_path, tiny_data, tiny_artifact):
    # the demo's kind of server recipe (Nesterov momentum, clipped deltas, decayed server
    # lr) in both engines: TFF runs the server's update rules on the fleet's clients
    common = [sys.executable, "-m", "fedkb", "simulate", "--data", str(tiny_data), "--preset",
              "tiny", "--strategy", "fedavgm", "--server-lr", "0.5", "--clip-norm", "2",
              "--lr-decay", "--lr", "0.5", "--json"]
    fleet = subprocess.run(
        [*common, "--engine", "fleet", "--rounds", "3", "--clients-per-round", "3",
         "--devices", "24", "--workers", "1", "--speedup", "300", "--overselect", "1.0",
         "--selection-window", "2", "--artifact", str(tiny_artifact)],
        capture_output=True, text=True, timeout=300)
    assert fleet.returncode == 0, fleet.stderr[-3000:]
    (tmp_path / "fleet.json").write_text(fleet.stdout)
    ours = json.loads(fleet.stdout)
    train_users = set(Dataset.open(tiny_data).train_users)
    assert len(ours["rounds"]) >= 3
    for row in ours["rounds"]:
        assert len(row["participants"]) == row["clients"] > 0, row
        assert {u for u, _ in row["participants"]} <= train_users

    tff = subprocess.run([*common, "--engine", "tff", "--schedule", str(tmp_path / "fleet.json")],
                         capture_output=True, text=True, timeout=300)
    assert tff.returncode == 0, tff.stderr[-3000:]
    theirs = json.loads(tff.stdout)
    assert [r["participants"] for r in theirs["rounds"]] == \
        [r["participants"] for r in ours["rounds"]]
    # `--engine tff` reports the shared schema (the CLI's sampled path: test_schedule.py)
    assert theirs["engine"] == "tff"
    assert [r["round"] for r in theirs["rounds"]] == list(range(1, len(ours["rounds"]) + 1))
    assert all(r["clients"] > 0 and r["train_loss"] > 0 for r in theirs["rounds"])
    assert set(theirs["heldout"]) == {"users", "iv_targets", "top1_recall", "top3_recall",
                                      "loss", *FIGURES}
    a, b = ours["heldout"], theirs["heldout"]
    print(f"fleet {a}\nTFF replay {b}")
    assert abs(a["loss"] - b["loss"]) < 1e-3, (a, b)
    assert abs(a["top1_recall"] - b["top1_recall"]) <= 0.005
    assert abs(a["top3_recall"] - b["top3_recall"]) <= 0.005

    # a replay with other knobs would not be the same run: refused, with the reason
    bad = subprocess.run([*common[:-3], "--lr", "0.3", "--json", "--engine", "tff",
                          "--schedule", str(tmp_path / "fleet.json")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "lr 0.5" in bad.stderr, bad.stderr[-2000:]


def test_a_run_whose_rounds_keep_being_abandoned_stops_with_a_diagnosis(tmp_path, tiny_data,
                                                                         tiny_artifact):
    # 6 phones can never fill a round that wants 50: every round is abandoned, and after 25
    # in a row the engine stops (it used to wait forever) and says why
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fedkb", "simulate", "--engine", "fleet", "--data",
         str(tiny_data), "--preset", "tiny", "--rounds", "2", "--clients-per-round", "50",
         "--devices", "6", "--workers", "1", "--selection-window", "0.2",
         "--artifact", str(tiny_artifact), "--json"],
        capture_output=True, text=True, timeout=300)
    assert time.monotonic() - t0 < 120
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(r"training stalled at model version 0: the last (\d+) training rounds "
                     r"were abandoned \(too_few_devices: \1\)", proc.stderr), proc.stderr
    assert "eligible" in proc.stderr
    partial = json.loads(proc.stdout)  # failures as data: what the run did, replayable
    assert partial["error"] in proc.stderr and partial["rounds"] == []
    assert partial["heldout"] is None and partial["config"]["clients_per_round"] == 50


def test_a_run_whose_model_diverges_stops_at_once(tmp_path, tiny_data, tiny_artifact):
    # client lr 300 on `tiny`: the training loss passes 100 nats by round 3 (1e6, then
    # 1e13 ...); the engine stops at the first commit it sees with such a loss, long
    # before the 40 rounds asked, and says why. The server refuses the blown-up updates
    # (over its norm bound), so it may never commit such a model: then the rounds are
    # abandoned and the diagnosis names the refusals.
    proc = subprocess.run(
        [sys.executable, "-m", "fedkb", "simulate", "--engine", "fleet", "--data",
         str(tiny_data), "--preset", "tiny", "--rounds", "40", "--clients-per-round", "3",
         "--devices", "24", "--workers", "1", "--speedup", "300", "--overselect", "1.0",
         "--selection-window", "0.5", "--reporting-deadline", "3", "--lr", "300",
         "--artifact", str(tiny_artifact), "--json"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # (a round whose phones could no longer finish may have been abandoned meanwhile)
    assert re.search(r"training (stopped|stalled) at model version \d+.*; (the last committed "
                     r"round's training loss was \S+: the model diverged|\d+ updates were "
                     r"refused \(update_too_large: \d+.*\): the devices' training diverged)",
                     proc.stderr), proc.stderr
    partial = json.loads(proc.stdout)
    losses = [r["train_loss"] for r in partial["rounds"]]
    assert 1 <= len(losses) < 40
    assert losses[-1] > 100.0 or "update_too_large" in proc.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fleet_waits_for_a_missing_server_and_survives_a_kill9_restart(tmp_path, tiny_data,
                                                                       tiny_artifact):
    from fedkb.device_runtime.fleet import Fleet, FleetConfig

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"tick_s": 0.2, "round": {
        "report_goal": 3, "selection_window_s": 2, "reporting_deadline_s": 10,
        "eval_every": 0}, "client": {"max_steps": 5}}))
    fleet = Fleet(FleetConfig(url, tiny_data, devices=12, speedup=60, start_hour=1.0))
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(fleet.run()), daemon=True)
    thread.start()  # no server yet: phones back off
    time.sleep(3)
    proc = None
    try:
        proc, _ = start_server(tmp_path / "state", tiny_artifact, config, tmp_path / "s.log",
                               port=port)
        deadline = time.monotonic() + 90
        while _status(url)["rounds_committed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _status(url)["rounds_committed"] >= 1
        kill(proc)  # kill -9 mid-run
        time.sleep(2)
        proc, _ = start_server(tmp_path / "state", tiny_artifact, config, tmp_path / "s.log",
                               port=port)
        before = _status(url)["rounds_committed"]
        while _status(url)["rounds_committed"] < before + 2 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _status(url)["rounds_committed"] >= before + 2
    finally:
        fleet.stop()
        thread.join(timeout=60)
        if proc is not None:
            kill(proc)
    assert box["tasks"]["completed"] > 0
    assert box["tasks"]["received"] >= box["tasks"]["completed"]


def test_sigterm_stops_the_fleet_cleanly_with_a_summary(tmp_path, tiny_data, tiny_artifact):
    import signal

    config = tmp_path / "server.json"
    config.write_text(json.dumps({"tick_s": 0.2, "round": {"report_goal": 3,
                                                           "selection_window_s": 2}}))
    proc, url = start_server(tmp_path / "state", tiny_artifact, config, tmp_path / "s.log")
    fleet = None
    try:
        fleet = subprocess.Popen(
            [sys.executable, "-m", "fedkb", "fleet", "--server", url, "--data", str(tiny_data),
             "--devices", "20", "--workers", "2", "--duration", "600", "--start-hour", "1",
             "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        while sum(_status(url)["devices"].values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.3)
        fleet.send_signal(signal.SIGTERM)
        out, err = fleet.communicate(timeout=60)
        assert fleet.returncode == 0, err[-2000:]
        summary = json.loads(out)
        assert summary["phones"] == 20 and summary["checkins"] > 0
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.kill()
            fleet.communicate()
        kill(proc)
