"""The round machine's seams: phases as data, fold outcomes as data, measurements at commit."""

from __future__ import annotations

import json

import numpy as np
from server_support import deltas, harness

from fedkb.server.config import RoundConfig, StrategyConfig
from fedkb.server.phases import round_phases
from fedkb.server.reports import Outcome, Report
from fedkb.server.uploads import UploadLimits, upload_fingerprint
from fedkb.wire import UploadMetadata, encode_upload


def _body(task: dict, value: float) -> bytes:
    return encode_upload(UploadMetadata(task["task_id"], task["round_id"], 1, 1.0),
                         deltas(value))


def test_a_round_steps_through_its_phases_as_data(tmp_path):
    phases = round_phases(RoundConfig(report_goal=10, min_fraction=0.8,
                                      selection_window_s=30, reporting_deadline_s=120), 10)
    assert [(p.name, p.state, p.deadline_s, p.min_count, p.short) for p in phases] == [
        ("selection", "selecting", 30, 8, "too_few_devices"),
        ("reporting", "training", 120, 8, "deadline")]
    h = harness(tmp_path, pipeline=False)  # goal 2, target 3, window 10 s, deadline 20 s
    m = h.state.machine
    m.tick()  # the first round opens
    rnd = m.open[1]
    assert (rnd.phase.name, rnd.phase_deadline, rnd.deadline) == (
        "selection", h.clock.t + 10, None)
    tasks = [d.task() for d in [h.register() for _ in range(3)]]
    assert (rnd.phase.name, rnd.state) == ("reporting", "training")  # target selected
    assert rnd.phase_deadline == rnd.deadline == h.clock.t + 20
    assert tasks[-1]["deadline_s"] == 20.0
    h.clock.advance(20)
    m.tick()
    assert (rnd.state, rnd.reason) == ("abandoned", "deadline")  # reporting's min_count: 1
    assert set(rnd.stats.durations) == {"selection_s", "reporting_s"}


def test_the_reporter_returns_the_outcome_and_never_commits(tmp_path):
    h = harness(tmp_path, pipeline=False)  # goal 2
    m = h.state.machine
    tasks = [d.task() for d in [h.register() for _ in range(3)]]
    rnd = m.open[1]
    outcomes = []
    for t in tasks[:2]:
        body = _body(t, 1.0)
        task = m.tasks.get(t["task_id"])
        meta, arrays = m.reports.decode(task, body, m.artifact.specs,
                                        UploadLimits(m.update_norm_bound))
        with m.lock:
            got = m.reports.fold(task, rnd, meta, arrays, upload_fingerprint(body), h.clock.t)
        assert isinstance(got, Report) and got.answer.status == "accepted"
        outcomes.append(got.outcome)
    assert outcomes == [Outcome.FOLDED, Outcome.GOAL_REACHED]
    assert rnd.is_open and m.model.version == 0 and 1 in m.open  # nobody committed it


def test_the_machine_commits_on_goal_reached(tmp_path, monkeypatch):
    h = harness(tmp_path, pipeline=False)  # goal 2: a plain fold of one report is FOLDED
    m = h.state.machine
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    fold = m.reports.fold

    def goal_at_once(*args, **kw):
        return Report(Outcome.GOAL_REACHED, fold(*args, **kw).answer)

    monkeypatch.setattr(m.reports, "fold", goal_at_once)
    assert devs[0].upload(tasks[0], deltas(1.0)).status_code == 200
    r = h.client.get("/v1/rounds/1").get_json()
    assert (r["state"], r["reported"], r["committed_version"]) == ("committed", 1, 1)
    assert m.model.version == 1


def test_round_json_carries_the_aggregators_measurements(tmp_path):
    h = harness(tmp_path, pipeline=False, strategy=StrategyConfig(clip_norm=1.0))
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    n = sum(int(np.prod(a.shape)) for a in deltas(0.0))  # 36 weights
    devs[0].upload(tasks[0], deltas(1.0), n=1)  # norm 6: clipped to 1
    devs[1].upload(tasks[1], deltas(0.1), n=3)  # norm 0.6: untouched
    r = h.client.get("/v1/rounds/1").get_json()
    assert r["state"] == "committed" and r["clipped"] == 1
    m = r["measurements"]
    assert (m["count"], m["total_weight"], m["clipped"]) == (2, 4.0, 1)
    assert m["update_norm_max"] == np.sqrt(n) * np.float32(1.0)
    assert abs(m["update_norm_mean"] - (np.sqrt(n) + np.sqrt(n) * 0.1) / 2) < 1e-6


def test_every_task_gets_a_seed_of_its_own_and_keeps_it(tmp_path):
    h = harness(tmp_path, report_goal=4, overselect=1.5)  # target 6
    devs = [h.register() for _ in range(6)]
    tasks = [d.task() for d in devs]
    seeds = [t["plan"]["seed"] for t in tasks]
    assert len(set(seeds)) == 6 and all(0 <= s < 2**31 for s in seeds)
    assert {t["plan"]["lr"] for t in tasks} == {0.5}  # the rest is the round's plan
    assert devs[0].task()["plan"]["seed"] == seeds[0]  # asked again: the same task, seed
    row = h.state.db.one("SELECT plan FROM tasks WHERE id = ?", (tasks[1]["task_id"],))
    assert json.loads(row["plan"])["seed"] == seeds[1]  # recorded as it was sent


def test_admin_client_config_is_validated_persisted_and_applies_to_new_rounds(tmp_path):
    h = harness(tmp_path, pipeline=False)
    devs = [h.register() for _ in range(3)]
    first = devs[0].task()  # round 1 is configured with lr 0.5
    assert h.admin("GET", "/v1/admin/client-config").get_json() == {
        "lr": 0.5, "epochs": 1, "max_steps": 50, "grad_clip": 5.0}
    for bad in ({"lr": "fast"}, {"epochs": 1.5}, {"max_steps": True}, {"lr": -1},
                {"batch_size": 8}, {"grad_clip": 0}, {"grad_clip": "5"}):
        r = h.admin("PATCH", "/v1/admin/client-config", json=bad)
        assert r.status_code == 422 and r.get_json()["error"]["code"] == "bad_config", bad
    r = h.admin("PATCH", "/v1/admin/client-config", json={"lr": 0.2, "epochs": 3})
    assert r.get_json() == {"lr": 0.2, "epochs": 3, "max_steps": 50, "grad_clip": 5.0}
    assert devs[1].task()["plan"]["lr"] == 0.5  # the open round keeps its plan
    for d in devs[:2]:
        d.upload(d.task(), deltas(1.0))
    assert first["round_id"] == 1 and h.status()["rounds_committed"] == 1
    plan = h.register().task()["plan"]  # round 2 opened after the change
    assert (plan["lr"], plan["epochs"], plan["max_steps"]) == (0.2, 3, 50)
    again = harness(tmp_path, pipeline=False)  # a restart on the same state dir keeps it
    assert again.admin("GET", "/v1/admin/client-config").get_json()["lr"] == 0.2



def test_a_committed_round_carries_its_devices_median_training_loss(tmp_path):
    """What the fleet's divergence check reads: the median of the reports' losses, beside
    the weighted mean (one device's blow-up moves only the mean)."""
    h = harness(tmp_path, pipeline=False, report_goal=3, overselect=1.0)
    devs = [h.register() for _ in range(3)]
    tasks = [d.checkin()["task"] for d in devs]
    for dev, task, loss in zip(devs, tasks, (4.0, 5.0, 9000.0), strict=True):
        assert dev.upload(task, deltas(0.0), n=1, loss=loss).status_code == 200
    r = h.client.get(f"/v1/rounds/{tasks[0]['round_id']}").get_json()
    assert r["state"] == "committed"
    assert r["metrics"]["loss"] == 3003.0 and r["metrics"]["loss_median"] == 5.0
