"""A hostile phone's upload cannot poison or destroy the model with default settings:
updates over the norm bound and ``num_examples`` over the plan's budget are refused (422,
counted) before the fold; a fold and its task row happen together or not at all; a new
model that is not finite and sane is never served."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest
from server_support import SPECS, deltas, harness, initial_weights

from fedkb.server.aggregate import UPDATE_NORM_FACTOR, derived_update_norm, global_norm64
from fedkb.server.config import StrategyConfig
from fedkb.server.uploads import MAX_CLAIMED_EXAMPLES, examples_budget
from fedkb.wire import Plan

BOUND = UPDATE_NORM_FACTOR * global_norm64(initial_weights())  # the fake model's, derived
BUDGET = 4 * 50 * 1  # the fake artifact's batch 4 x ClientConfig's max_steps 50 x 1 epoch


def refused(resp, code: str) -> None:
    body = resp.get_json()
    if code == "malformed_upload":  # refused by the strict JSON reader of the upload header
        assert resp.status_code == 400 and body["error"]["code"] == code, body
        return
    assert resp.status_code == 422 and body["error"]["code"] == code, body


def open_round(h):
    return h.state.machine.open[1]


def task_row(h, task_id: str) -> dict:
    return dict(h.state.db.one("SELECT state, num_examples FROM tasks WHERE id = ?",
                               (task_id,)))


def untouched(h, task_id: str) -> None:
    rnd = open_round(h)
    assert rnd.aggregator.count == 0 and rnd.aggregator.total_weight == 0.0
    assert rnd.stats.reported == 0 and rnd.stats.num_examples == 0
    assert task_row(h, task_id) == {"state": "assigned", "num_examples": None}
    assert h.state.machine.tasks.get(task_id).state == "assigned"


def test_the_default_bound_is_derived_from_the_models_initial_weights(tmp_path):
    h = harness(tmp_path)
    assert h.state.machine.update_norm_bound == pytest.approx(BOUND)
    assert 40 < BOUND < 50  # far above the honest deltas the server tests upload (norm 6)
    h.state.machine.set_config(h.state.machine.cfg.replace(max_update_norm=3.0))
    assert h.state.machine.update_norm_bound == 3.0
    assert derived_update_norm([np.zeros(3, np.float32)]) == 1.0  # never zero


@pytest.mark.parametrize("value", [1e30, 1e19, 3e38])
def test_a_huge_finite_update_is_refused_and_counted(tmp_path, value):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    refused(d.upload(t, deltas(value)), "update_too_large")
    untouched(h, t["task_id"])
    assert open_round(h).stats.rejected == {"update_too_large": 1}
    assert d.upload(t, deltas(1.0)).status_code == 200  # the phone may still report
    assert 'fedkb_rejections_total{reason="update_too_large"} 1.0' in \
        h.client.get("/metrics").text


def test_the_bound_is_exact_and_configurable(tmp_path):
    h = harness(tmp_path)
    devs = [h.register() for _ in range(2)]
    tasks = [d.task() for d in devs]
    per_value = BOUND / math.sqrt(sum(np.prod(s) for _, s in SPECS))
    refused(devs[0].upload(tasks[0], deltas(per_value * 1.001)), "update_too_large")
    assert devs[1].upload(tasks[1], deltas(per_value * 0.999)).status_code == 200
    h2 = harness(tmp_path / "b", max_update_norm=1.0)
    d = h2.register()
    t = d.task()
    refused(d.upload(t, deltas(1.0)), "update_too_large")  # norm 6 > 1
    assert d.upload(t, deltas(0.1)).status_code == 200


# 10**30 is past int64: the upload header's strict JSON reader refuses it first
@pytest.mark.parametrize(("n", "code"), [(2**62, "too_many_examples"),
                                         (10**30, "malformed_upload"),
                                         (BUDGET + 1, "too_many_examples")])
def test_num_examples_over_the_plans_budget_is_refused_before_the_fold(tmp_path, n, code):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    refused(d.upload(t, deltas(1.0), n=n), code)
    untouched(h, t["task_id"])
    assert open_round(h).stats.rejected == {code: 1}
    assert h.status()["model_version"] == 0


def test_the_budget_itself_is_accepted_and_the_round_commits(tmp_path):
    h = harness(tmp_path)
    devs = [h.register() for _ in range(2)]
    tasks = [d.task() for d in devs]
    assert devs[0].upload(tasks[0], deltas(1.0), n=BUDGET).status_code == 200
    assert devs[1].upload(tasks[1], deltas(1.0), n=1).status_code == 200
    assert h.status()["model_version"] == 1
    assert np.isfinite(np.concatenate([w.ravel() for w in h.global_weights()])).all()


def test_the_budget_is_the_plans(tmp_path):
    plan = Plan(kind="train", lr=1.0, batch_size=16, epochs=2, max_steps=1_000_000)
    assert examples_budget(plan) == 32_000_000
    assert examples_budget(Plan(kind="evaluate", lr=1.0, batch_size=16, epochs=1,
                                max_steps=5)) == MAX_CLAIMED_EXAMPLES


def test_an_evaluation_report_cannot_claim_more_than_sqlite_can_store(tmp_path):
    h = harness(tmp_path, eval_every=1, eval_goal=1)
    d = h.register("heldout")
    t = d.task()
    assert t["plan"]["kind"] == "evaluate"
    refused(d.upload(t, None, n=2**62), "too_many_examples")  # past 2**53
    refused(d.upload(t, None, n=10**30), "malformed_upload")  # past int64
    assert d.upload(t, None, n=5).status_code == 200


def test_a_failed_task_row_write_leaves_the_aggregator_and_the_task_unchanged(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    db = h.state.db
    real_update = db.update

    def failing_update(table, key, key_value, changes):
        if table == "tasks" and changes.get("state") == "reported":
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return real_update(table, key, key_value, changes)

    db.update = failing_update
    try:
        r = d.upload(t, deltas(1.0))
    finally:
        db.update = real_update
    assert r.status_code == 500
    untouched(h, t["task_id"])
    r = d.upload(t, deltas(1.0))  # the retry is folded, once
    assert r.status_code == 200, r.get_json()
    assert open_round(h).aggregator.count == 1 and open_round(h).stats.reported == 1
    assert task_row(h, t["task_id"]) == {"state": "reported", "num_examples": 1}


def test_a_failed_fold_puts_the_task_row_back(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    rnd = open_round(h)

    def broken(arrays, weight):
        raise MemoryError("injected")

    real, rnd.aggregator.accumulate = rnd.aggregator.accumulate, broken
    try:
        assert d.upload(t, deltas(1.0)).status_code == 500
    finally:
        rnd.aggregator.accumulate = real
    assert task_row(h, t["task_id"]) == {"state": "assigned", "num_examples": None}
    assert h.state.machine.tasks.get(t["task_id"]).state == "assigned"
    assert d.upload(t, deltas(1.0)).status_code == 200


def commit_two(h, value: float):
    devs = [h.register() for _ in range(2)]
    tasks = [d.task() for d in devs]
    for d, tk in zip(devs, tasks, strict=True):
        assert d.upload(tk, deltas(value)).status_code == 200


def test_a_model_out_of_range_is_not_served_and_the_round_abandoned(tmp_path):
    # within the update bound, but a server learning rate that blows the model up
    h = harness(tmp_path, strategy=StrategyConfig(name="fedavgm", server_lr=1e6))
    before = h.global_weights()
    commit_two(h, 1.0)
    assert h.status()["model_version"] == 0 and h.status()["rounds_abandoned"] == 1
    row = h.client.get("/v1/rounds/1").get_json()
    assert row["state"] == "abandoned" and row["reason"].startswith("unsafe_model"), row
    assert all(np.array_equal(a, b) for a, b in zip(before, h.global_weights(), strict=True))
    assert h.state.machine.strategy.state() == []  # the momentum of the refused step undone
    assert not (tmp_path / "state" / "checkpoints" / "v000001.safetensors").exists()
    h.clock.advance(1)
    h.state.machine.set_config(h.state.machine.cfg.replace(max_weight_abs=1e12))
    commit_two(h, 1.0)  # the next round, with a looser bound, commits
    assert h.status()["model_version"] == 1


def test_a_non_finite_model_is_not_served(tmp_path, monkeypatch):
    h = harness(tmp_path)
    strategy = h.state.machine.strategy

    def nan_step(weights, result, version=1):
        return [np.full_like(w, np.nan) for w in weights]

    monkeypatch.setattr(strategy, "aggregate", nan_step)
    commit_two(h, 1.0)
    row = h.client.get("/v1/rounds/1").get_json()
    assert row["reason"] == "unsafe_model: has non-finite weights (array 0)", row
    assert h.status()["model_version"] == 0
    json.dumps(h.status(), allow_nan=False)
