"""The round protocol through the Flask test client, with a fake clock (no sleeping)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from server_support import ADMIN, ELIGIBLE, deltas, harness, initial_weights

from fedkb.server.config import StrategyConfig
from fedkb.server.strategy import adam_step


def test_first_round_selects_with_overselection_and_commits_weighted_mean(tmp_path):
    h = harness(tmp_path, pipeline=False)  # goal 2, target 3
    devs = [h.register() for _ in range(4)]
    tasks = [d.checkin() for d in devs]
    assert [("task" in t) for t in tasks] == [True, True, True, False]
    assert tasks[3]["reason"] == "no_round"
    r = h.client.get("/v1/rounds/1").get_json()
    assert (r["state"], r["selected"], r["target"], r["goal"]) == ("training", 3, 3, 2)
    assert devs[0].upload(tasks[0]["task"], deltas(1.0), n=1, loss=4.0).status_code == 200
    assert devs[1].upload(tasks[1]["task"], deltas(3.0), n=3, loss=2.0).status_code == 200
    r = h.client.get("/v1/rounds/1").get_json()
    assert (r["state"], r["committed_version"], r["reported"], r["num_examples"]) == (
        "committed", 1, 2, 4)
    assert r["metrics"]["loss"] == 2.5  # (4 * 1 + 2 * 3) / 4
    for got, w0 in zip(h.global_weights(), initial_weights(), strict=True):
        np.testing.assert_allclose(got, w0 + 2.5)  # (1 * 1 + 3 * 3) / 4
    s = h.status()
    assert (s["model_version"], s["rounds_committed"], s["rounds_abandoned"]) == (1, 1, 0)
    assert s["current_round"]["id"] == 2 and s["current_round"]["state"] == "selecting"


def test_straggler_after_commit_is_refused_as_late_and_counted(tmp_path):
    h = harness(tmp_path)
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    for d, t in zip(devs[:2], tasks[:2], strict=True):
        d.upload(t, deltas(1.0))
    before = h.global_weights()
    r = devs[2].upload(tasks[2], deltas(100.0))
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "late_report"
    assert h.client.get("/v1/rounds/1").get_json()["late"] == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, h.global_weights(), strict=True))
    assert "fedkb_late_reports_total 1.0" in h.client.get("/metrics").text


def test_ineligible_devices_are_told_to_come_back_later(tmp_path):
    h = harness(tmp_path, ineligible_retry_s=300)
    d = h.register()
    for cond, why in [({"charging": False}, "not_charging"), ({"unmetered": False},
                      "metered_network"), ({"idle": False}, "not_idle"),
                      ({"battery": 0.05}, "low_battery")]:
        body = d.checkin(**cond)
        assert body == {"retry_after_s": 300.0, "reason": why}
    assert h.client.get("/v1/rounds/1").get_json()["selected"] == 0


def test_pace_steering_spreads_population_over_the_selection_window(tmp_path):
    h = harness(tmp_path, pipeline=False, retry_min_s=1, retry_max_s=1000, pace_margin=1.0)
    devs = [h.register() for _ in range(30)]
    answers = [d.checkin() for d in devs]
    waits = [a["retry_after_s"] for a in answers if "retry_after_s" in a]
    # target 3 devices per 10 s window -> 0.3 check-ins/s wanted; 30 devices -> 100 s each
    assert len(waits) == 27 and set(waits) == {100.0}


def test_pace_margin_brings_phones_back_sooner(tmp_path):
    h = harness(tmp_path, pipeline=False, retry_min_s=1, retry_max_s=1000, pace_margin=4.0)
    devs = [h.register() for _ in range(30)]
    waits = {a["retry_after_s"] for a in (d.checkin() for d in devs) if "retry_after_s" in a}
    assert waits == {25.0}  # four times the check-in rate a round needs


def test_pace_steering_jitter_stays_within_bounds(tmp_path):
    h = harness(tmp_path, pipeline=False, retry_jitter=0.2, retry_min_s=1, retry_max_s=1000,
                pace_margin=1.0)
    devs = [h.register() for _ in range(30)]
    waits = [a["retry_after_s"] for a in (d.checkin() for d in devs) if "retry_after_s" in a]
    assert all(80.0 <= w <= 120.0 for w in waits) and len(set(waits)) > 1


def test_reporting_deadline_commits_with_min_fraction(tmp_path):
    h = harness(tmp_path)  # goal 2, min_reports 1
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    devs[0].upload(tasks[0], deltas(2.0), n=5)
    h.clock.advance(20.001)
    r = h.client.get("/v1/rounds/1").get_json()
    assert (r["state"], r["reported"], r["committed_version"]) == ("committed", 1, 1)
    np.testing.assert_allclose(h.global_weights()[0], initial_weights()[0] + 2.0)


def test_reporting_deadline_abandons_below_min_fraction(tmp_path):
    h = harness(tmp_path, min_fraction=1.0, pipeline=False)
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    devs[0].upload(tasks[0], deltas(2.0))
    h.clock.advance(25)
    s = h.status()
    r = h.client.get("/v1/rounds/1").get_json()
    assert (r["state"], r["reason"]) == ("abandoned", "deadline")
    assert (s["model_version"], s["rounds_abandoned"]) == (0, 1)
    assert np.array_equal(h.global_weights()[0], initial_weights()[0])
    assert devs[1].upload(tasks[1], deltas(1.0)).get_json()["error"]["code"] == "late_report"
    assert h.client.get("/v1/rounds/1").get_json()["late"] == 1


def test_selection_window_without_enough_devices_abandons_and_opens_next(tmp_path):
    h = harness(tmp_path, min_fraction=1.0)  # needs 2 selected
    h.register().task()
    h.clock.advance(10)
    s = h.status()
    assert h.client.get("/v1/rounds/1").get_json()["reason"] == "too_few_devices"
    assert s["current_round"]["id"] == 2 and s["rounds_abandoned"] == 1


def test_pipelining_selects_ahead_and_trains_the_committed_model(tmp_path):
    h = harness(tmp_path)  # goal 2, target 3, claim_poll_s 1
    r1 = [h.register() for _ in range(3)]
    t1 = [d.task() for d in r1]
    r2 = [h.register() for _ in range(3)]
    wait = r2[0].checkin()  # round 2 selects while round 1 trains, but has no model yet
    assert wait["reason"] == "selected_waiting" and wait["retry_after_s"] <= 1.2
    states = {r["id"]: r["state"] for r in h.status()["open_rounds"]}
    assert states == {1: "training", 2: "selecting"}
    assert r2[0].checkin()["reason"] == "selected_waiting"  # still its seat, still waiting
    r1[0].upload(t1[0], deltas(1.0))
    r1[1].upload(t1[1], deltas(1.0))  # round 1 commits -> v1: round 2 is configured
    t2 = [r2[0].task(), r2[1].task()]
    assert [t["round_id"] for t in t2] == [2, 2]
    assert [t["model_version"] for t in t2] == [1, 1]  # selected before or after: v1
    r2[0].upload(t2[0], deltas(1.0))
    r2[1].upload(t2[1], deltas(1.0))
    assert h.status()["model_version"] == 2
    np.testing.assert_allclose(h.global_weights()[2], initial_weights()[2] + 2.0)


def test_pipelining_no_show_and_released_seats(tmp_path):
    h = harness(tmp_path, report_goal=2, overselect=1.5)  # target 3
    r1 = [h.register() for _ in range(3)]
    t1 = [d.task() for d in r1]
    early = [h.register() for _ in range(3)]
    assert all(d.checkin()["reason"] == "selected_waiting" for d in early)
    gone = early[2].checkin(charging=False)  # unplugged: seat given back
    assert gone["reason"] == "not_charging"
    late_comer = h.register()
    assert late_comer.checkin()["reason"] == "selected_waiting"  # took the freed seat
    r1[0].upload(t1[0], deltas(1.0))
    r1[1].upload(t1[1], deltas(1.0))  # round 1 commits: round 2 waits 5 s for its devices
    t2 = [early[0].task(), late_comer.task()]
    h.clock.advance(6.5)  # early[1] never came back (asked back at +1 s): a no-show
    rnd = h.client.get("/v1/rounds/2").get_json()
    assert rnd["state"] == "training" and rnd["selected"] == 3
    assert rnd["aborted"] == {"no_show": 1}
    early[0].upload(t2[0], deltas(1.0))
    late_comer.upload(t2[1], deltas(1.0))
    assert h.client.get("/v1/rounds/2").get_json()["state"] == "committed"
    assert early[1].task()["round_id"] == 3  # its seat went with round 2; round 3 may pick it


def test_pipelining_off_waits_for_commit(tmp_path):
    h = harness(tmp_path, pipeline=False)
    [h.register().task() for _ in range(3)]
    assert [r["id"] for r in h.status()["open_rounds"]] == [1]


def test_abort_is_counted_by_reason_and_blocks_later_upload(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    r = d.abort(t["task_id"], "not_charging")
    assert r.status_code == 200 and r.get_json() == {"task_id": t["task_id"], "status": "aborted"}
    assert h.client.get("/v1/rounds/1").get_json()["aborted"] == {"not_charging": 1}
    assert d.upload(t, deltas(1.0)).get_json()["error"]["code"] == "task_aborted"
    assert 'fedkb_aborts_total{reason="not_charging"} 1.0' in h.client.get("/metrics").text
    assert "task" not in d.checkin()  # not selected twice in the same round


def test_checkin_while_holding_a_task_returns_the_same_task(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    t = d.task()
    h.clock.advance(3)
    again = d.task()
    assert again["task_id"] == t["task_id"] and again["deadline_s"] == pytest.approx(27.0)


def test_evaluation_rounds_on_heldout_devices_record_metrics_per_version(tmp_path):
    h = harness(tmp_path, eval_every=1, eval_goal=1)
    train = [h.register() for _ in range(3)]
    held = [h.register("heldout") for _ in range(2)]
    ev = held[0].task()
    assert ev["plan"]["kind"] == "evaluate" and ev["model_version"] == 0
    assert all(t["plan"]["kind"] == "train" for t in (d.task() for d in train))
    assert held[0].upload(ev, None, n=10, loss=3.0, top1_recall=0.1,
                          top3_recall=0.2).status_code == 200
    for d in train[:2]:
        d.upload(d.task(), deltas(0.5))
    ev1 = held[1].task()
    assert ev1["model_version"] == 1
    held[1].upload(ev1, None, n=30, loss=1.0, top1_recall=0.3, top3_recall=0.4)
    evals = h.client.get("/v1/evaluations").get_json()["evaluations"]
    assert [(e["model_version"], e["loss"], e["top1_recall"], e["top3_recall"]) for e in evals] \
        == [(0, 3.0, 0.1, 0.2), (1, 1.0, 0.3, 0.4)]
    assert h.status()["evaluation_rounds_committed"] == 2
    assert h.status()["model_version"] == 1  # evaluation never changes the model


def test_max_rounds_stops_training_but_keeps_serving(tmp_path):
    h = harness(tmp_path, max_rounds=1, pipeline=True)
    devs = [h.register() for _ in range(4)]
    tasks = [d.checkin() for d in devs]
    assert "task" not in tasks[3]  # no second round is opened: R=1 is already in flight
    for d, t in zip(devs[:2], tasks[:2], strict=True):
        d.upload(t["task"], deltas(1.0))
    s = h.status()
    assert (s["model_version"], s["training"], s["current_round"]) == (1, "finished", None)
    assert h.client.get("/v1/models/1/weights").status_code == 200


def test_the_last_version_of_a_run_is_evaluated_even_off_the_eval_every_grid(tmp_path):
    # 2 rounds, an evaluation every 5 versions: without a final one, a run's last model
    # would never be evaluated on held-out phones (the demo then waited 120 s for it)
    h = harness(tmp_path, max_rounds=2, eval_every=5, eval_goal=1, pipeline=False)
    train = [h.register() for _ in range(2)]
    held = h.register("heldout")
    first = held.task()
    assert first["plan"]["kind"] == "evaluate" and first["model_version"] == 0
    held.upload(first, None, n=10, loss=3.0, top1_recall=0.1, top3_recall=0.2)
    for _ in range(2):
        for d in train:
            d.upload(d.task(), deltas(0.5))
    assert h.status()["training"] == "finished" and h.status()["model_version"] == 2
    last = held.task()
    assert last["plan"]["kind"] == "evaluate" and last["model_version"] == 2


def test_admin_stops_starts_and_reconfigures(tmp_path):
    h = harness(tmp_path, pipeline=False)
    assert h.client.post("/v1/admin/training", json={"enabled": False}).status_code == 401
    r = h.client.post("/v1/admin/training", json={"enabled": False},
                      headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    h.clock.advance(10)  # round 1 abandoned (nobody came); training stopped: no round 2
    assert h.admin("POST", "/v1/admin/training", json={"enabled": False}).get_json() == {
        "training": "stopped"}
    assert h.status()["open_rounds"] == []
    r = h.admin("PATCH", "/v1/admin/round-config", json={"report_goal": 5})
    assert r.status_code == 200 and r.get_json()["report_goal"] == 5
    bad = h.admin("PATCH", "/v1/admin/round-config", json={"report_goal": "many"})
    assert bad.status_code == 422
    r = h.admin("PATCH", "/v1/admin/client-config", json={"lr": 0.1})
    assert r.status_code == 200 and r.get_json()["lr"] == 0.1
    h.admin("POST", "/v1/admin/training", json={"enabled": True})
    t = h.register().task()
    assert t["plan"]["lr"] == 0.1
    assert h.client.get(f"/v1/rounds/{t['round_id']}").get_json()["target"] == 8  # 5 * 1.5


def test_admin_publishes_initial_model(tmp_path):
    from server_support import write_artifact

    h = harness(tmp_path, model=False)
    assert h.status()["training"] == "no_model"
    d = h.register()
    assert d.checkin()["reason"] == "no_model"
    art = write_artifact(tmp_path / "art2")
    r = h.admin("POST", "/v1/admin/model", json={"path": str(art)})
    assert r.status_code == 201 and r.get_json() == {"model_version": 0}
    assert "task" in d.checkin()
    again = h.admin("POST", "/v1/admin/model", json={"path": str(art)})
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "model_exists"
    bad = h.admin("POST", "/v1/admin/model", json={"path": str(tmp_path / "nothing")})
    assert bad.status_code in (409, 422)


def test_the_loop_calls_the_configured_strategy(tmp_path):
    cfg = StrategyConfig(name="fedadam", server_lr=0.1)
    h = harness(tmp_path, strategy=cfg)
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs]
    devs[0].upload(tasks[0], deltas(0.5))
    devs[1].upload(tasks[1], deltas(0.5))
    zeros = [np.zeros_like(w) for w in initial_weights()]
    want, _, _ = adam_step(initial_weights(), deltas(0.5), zeros, zeros, 0.1, 0.9, 0.99, 1e-3)
    for got, w in zip(h.global_weights(), want, strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-6)
    assert h.status()["strategy"] == "fedadam"


def test_status_and_rounds_listing(tmp_path):
    h = harness(tmp_path)
    s = h.status()
    for key in ("model_version", "rounds_committed", "rounds_abandoned", "current_round",
                "training", "devices"):
        assert key in s
    h.clock.advance(10)
    h.status()
    rounds = h.client.get("/v1/rounds?limit=5").get_json()["rounds"]
    assert [r["id"] for r in rounds] == [2, 1] and rounds[1]["state"] == "abandoned"
    assert rounds[1]["durations"]["selection_s"] == 10.0
    assert h.client.get("/v1/rounds?limit=x").status_code == 400
    assert h.client.get("/v1/rounds/99").get_json()["error"]["code"] == "unknown_round"
    text = h.client.get("/metrics").text
    assert 'fedkb_rounds_total{kind="train",outcome="abandoned"} 1.0' in text
    assert "fedkb_round_phase_seconds_bucket" in text
    assert ADMIN not in text


def test_concurrent_uploads_fold_exactly_once_each(tmp_path):
    import threading

    n = 12
    # deltas up to 11 everywhere (norm 66) are over the fake model's derived bound (48)
    h = harness(tmp_path, report_goal=n, overselect=1.0, pipeline=False, max_update_norm=100.0)
    devs = [h.register() for _ in range(n)]
    tasks = [d.task() for d in devs]
    codes: list[int] = []

    def send(i: int) -> None:
        client = h.app.test_client()
        d = type(devs[i])(type(h)(h.app, client, h.clock), devs[i].id, devs[i].token)
        codes.append(d.upload(tasks[i], deltas(float(i)), n=i + 1).status_code)
        codes.append(d.upload(tasks[i], deltas(float(i)), n=i + 1).status_code)  # retry

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert codes == [200] * (2 * n)
    want = sum(i * (i + 1) for i in range(n)) / sum(i + 1 for i in range(n))
    np.testing.assert_allclose(h.global_weights()[1], initial_weights()[1] + want, rtol=1e-6)
    r = h.client.get("/v1/rounds/1").get_json()
    assert (r["state"], r["reported"], r["rejected"]) == ("committed", n, {})


def test_a_device_that_trained_rests_for_rejoin_after_rounds_versions(tmp_path):
    h = harness(tmp_path, pipeline=False, overselect=1.0, rejoin_after_rounds=2)  # goal 2
    devs = [h.register() for _ in range(4)]
    first = [devs[0].task(), devs[1].task()]
    for d, t in zip(devs[:2], first, strict=True):
        d.upload(t, deltas(1.0))
    assert h.status()["model_version"] == 1
    # version 1 < 0 + 2: the two that trained from version 0 are told to come back later
    assert [devs[0].checkin()["reason"], devs[1].checkin()["reason"]] == [
        "recently_trained", "recently_trained"]
    second = [devs[2].task(), devs[3].task()]
    for d, t in zip(devs[2:], second, strict=True):
        d.upload(t, deltas(1.0))
    assert h.status()["model_version"] == 2
    assert "task" in devs[0].checkin()  # 2 >= 0 + 2: it may train again
    assert devs[2].checkin()["reason"] == "recently_trained"  # trained from version 1


def test_round_short_of_its_goal_commits_once_every_selected_device_answered(tmp_path):
    h = harness(tmp_path, pipeline=False, report_goal=3, overselect=1.0, min_fraction=0.5)
    devs = [h.register() for _ in range(3)]
    tasks = [devs[0].task(), devs[1].task()]
    h.clock.advance(11)  # the 10 s selection window ends with 2 of 3 selected
    assert devs[2].checkin()["reason"] == "no_round"
    devs[0].upload(tasks[0], deltas(1.0))
    assert h.client.get("/v1/rounds/1").get_json()["state"] == "training"
    r = devs[1].upload(tasks[1], deltas(1.0))
    assert r.status_code == 200
    r1 = h.client.get("/v1/rounds/1").get_json()  # long before the 20 s deadline
    assert (r1["state"], r1["reported"]) == ("committed", 2)


def test_an_abandoned_evaluation_of_the_latest_model_is_tried_again(tmp_path):
    h = harness(tmp_path, pipeline=False, eval_every=1, eval_goal=1)
    h.status()  # version 0 is published and its evaluation round opens
    h.clock.advance(11)  # its selection window passes without a held-out phone
    open_rounds = h.status()["open_rounds"]
    evals = [r for r in open_rounds if r["kind"] == "evaluate"]
    assert len(evals) == 1 and evals[0]["base_version"] == 0 and evals[0]["id"] > 1
    phone = h.register("heldout")
    assert "task" in phone.checkin()


def test_device_selected_ahead_is_asked_back_when_the_running_round_may_end(tmp_path):
    h = harness(tmp_path)  # goal 2, target 3, claim_poll_s 1, retry_jitter 0.2
    first = [h.register() for _ in range(3)]
    t1 = [d.task() for d in first]
    h.clock.advance(4)
    first[0].upload(t1[0], deltas(1.0))
    first[1].upload(t1[1], deltas(1.0))  # round 1 took 4 s from selection to commit
    second = [h.register() for _ in range(3)]
    [d.task() for d in second]  # round 2 trains from now; round 3 selects ahead
    h.clock.advance(1)
    ahead = h.register().checkin()
    assert ahead["reason"] == "selected_waiting"
    assert 3 * 0.8 <= ahead["retry_after_s"] <= 3.0  # ~4 s after round 2 started, not later


def test_the_server_lr_schedule_follows_the_committed_version(tmp_path):
    h = harness(tmp_path, pipeline=False, overselect=1.0,
                strategy=StrategyConfig(server_lr=1.0, decay_rounds=3))  # goal 2
    for _ in range(2):
        devices = [h.register() for _ in range(2)]
        tasks = [d.task() for d in devices]
        for d, t in zip(devices, tasks, strict=True):
            d.upload(t, deltas(1.0))
    # version 1 at lr 1.0, version 2 at lr 0.55 (halfway down the cosine to 0.1)
    np.testing.assert_allclose(h.global_weights()[2], initial_weights()[2] + 1.55, rtol=1e-6)


def test_no_training_round_opens_before_min_registered_devices_exist(tmp_path):
    h = harness(tmp_path, pipeline=False, min_registered=3)  # goal 2, target 3
    devs = [h.register() for _ in range(2)]
    assert [d.checkin().get("reason") for d in devs] == ["no_round", "no_round"]
    h.clock.advance(60)  # a window would have closed by now: still nothing opened
    assert devs[0].checkin().get("reason") == "no_round"
    assert h.status()["current_round"] is None and h.status()["rounds_abandoned"] == 0
    devs.append(h.register())
    assert all("task" in d.checkin() for d in devs)  # round 1 opens and fills at once
    assert h.client.get("/v1/rounds/1").get_json()["selected"] == 3


def _held_checkin(h, device, wait_s: float, out: list) -> threading.Thread:
    """A check-in that asks the server to hold it open, on its own thread and client."""
    def run() -> None:
        r = h.app.test_client().post("/v1/checkin", headers=device.auth,
                                     json={"conditions": ELIGIBLE, "wait_s": wait_s})
        out.append((time.monotonic(), r.status_code, r.get_json()))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_held_checkin_gets_its_task_the_moment_the_model_exists(tmp_path):
    h = harness(tmp_path)  # goal 2, target 3; 8 WSGI threads: 4 may hold a check-in
    r1 = [h.register() for _ in range(3)]
    t1 = [d.task() for d in r1]
    ahead = h.register()
    out: list = []
    held = _held_checkin(h, ahead, 20.0, out)
    time.sleep(0.3)
    assert out == []  # selected ahead: held open, not "come back soon"
    r1[0].upload(t1[0], deltas(1.0))
    committed = time.monotonic()
    r1[1].upload(t1[1], deltas(1.0))  # round 1 commits -> round 2 is configured
    held.join(timeout=10)
    (when, code, body), = out
    assert code == 200 and body["task"]["round_id"] == 2 and body["task"]["model_version"] == 1
    assert when - committed < 5.0  # released by the commit, not by its 20 s


def test_a_held_checkin_times_out_as_selected_waiting_and_threads_are_kept_free(tmp_path):
    h = harness(tmp_path)
    r1 = [h.register() for _ in range(3)]
    [d.task() for d in r1]
    ahead = h.register()
    out: list = []
    _held_checkin(h, ahead, 0.3, out).join(timeout=10)
    assert out[0][2]["reason"] == "selected_waiting"  # nothing committed within 0.3 s
    # with 4 WSGI threads none may hold: the answer comes at once
    h4 = harness(tmp_path / "four", threads=4)
    busy = [h4.register() for _ in range(3)]
    [d.task() for d in busy]
    ahead4 = h4.register()
    out4: list = []
    t0 = time.monotonic()
    _held_checkin(h4, ahead4, 20.0, out4).join(timeout=10)
    assert out4[0][2]["reason"] == "selected_waiting" and out4[0][0] - t0 < 5.0


def test_a_checkin_wait_beyond_the_limit_is_refused(tmp_path):
    h = harness(tmp_path)
    d = h.register()
    r = h.client.post("/v1/checkin", headers=d.auth,
                      json={"conditions": ELIGIBLE, "wait_s": 31.0})
    assert r.status_code == 400 and "wait_s" in r.get_json()["error"]["message"]
