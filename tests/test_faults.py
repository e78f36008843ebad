"""The fleet's fault injection (fedkb.device_runtime.faults): strict parsing, a choice that
depends only on (seed, phone, round, kind), and faulty uploads that a server with
default settings refuses by its own checks, each with the code the fault must meet."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from server_support import deltas, harness

from fedkb import wire
from fedkb.codec import decode_arrays
from fedkb.device_runtime.faults import (
    EXPECTED_REFUSAL,
    FAULT_KINDS,
    FaultError,
    FaultInjector,
    FaultSpec,
    parse_faults,
    record_answer,
)
from fedkb.device_runtime.phone import Outcome
from fedkb.wire import UploadMetadata, encode_upload

ISSUE_FAULTS = "nan=0.05,huge=0.02,shape=0.02,replay=0.02,examples=0.02,unplug=0.15"


def test_parse_reads_the_issues_example_and_writes_it_back():
    spec = parse_faults(ISSUE_FAULTS + ",boost=0.05")
    assert spec.rate("nan") == 0.05 and spec.rate("unplug") == 0.15 and spec.rate("x") == 0
    assert parse_faults(spec.text()) == spec
    assert spec.boost_gamma == pytest.approx(20.0)  # clients per round / attackers = 1/rate
    assert parse_faults("boost=0.1,gamma=7").boost_gamma == 7.0
    assert parse_faults("") == FaultSpec()


@pytest.mark.parametrize("text, words", [
    ("flood=0.1", "unknown fault 'flood'"), ("nan=1.5", "outside [0, 1]"),
    ("nan=-0.1", "outside [0, 1]"), ("nan=nan", "outside [0, 1]"),
    ("nan", "KIND=RATE"), ("nan=lots", "not a number"), ("nan=0.1,nan=0.2", "twice"),
    ("nan=0.6,unplug=0.6", "more than 1"), ("boost=0.1,gamma=0", "positive")])
def test_parse_refuses_what_it_cannot_read(text, words):
    with pytest.raises(FaultError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_faults(text)


def test_the_choice_is_a_function_of_seed_phone_round_and_kind_with_the_given_rates():
    spec = parse_faults(ISSUE_FAULTS)
    keys = [(f"phone-{i:05d}", r) for i in range(200) for r in range(50)]
    picks = [spec.choose(3, p, r, "train") for p, r in keys]
    assert picks == [spec.choose(3, p, r, "train") for p, r in keys]
    assert picks != [spec.choose(4, p, r, "train") for p, r in keys]
    n = Counter(picks)
    for kind, rate in spec.rates:  # 10,000 draws: within 5 standard deviations
        sd = (rate * (1 - rate) * len(keys)) ** 0.5
        assert abs(n[kind] - rate * len(keys)) < 5 * sd, (kind, n)
    assert parse_faults("nan=1").choose(0, "p", 1, "train") == "nan"
    again = [spec.choose(3, p, r, "train", nth=1) for p, r in keys]  # a second task draws anew
    assert again != picks and abs(Counter(again)["unplug"] - 0.15 * len(keys)) < 200
    assert FaultSpec().choose(0, "p", 1, "train") is None


def _outcome(task: dict, delta: list[np.ndarray], n: int = 8) -> Outcome:
    t = wire.Task.from_json(task)
    meta = UploadMetadata(t.task_id, t.round_id, n, 1.0)
    return Outcome(t, 100.0, "upload", body=encode_upload(meta, delta),
                   timings={"download_s": 1.0, "compute_s": 5.0, "upload_s": 1.0})


@pytest.mark.parametrize("kind", sorted(EXPECTED_REFUSAL))
def test_each_bad_update_is_refused_by_the_servers_own_check(tmp_path, kind):
    h = harness(tmp_path, report_goal=3)
    phones = [h.register() for _ in range(3)]
    tasks = [p.task() for p in phones]
    inject = FaultInjector(FaultSpec(((kind, 1.0),)), seed=0)
    counts: Counter = Counter()
    if kind == "replay":  # it needs an earlier upload: phone 0's, sent honestly first
        honest = FaultInjector(FaultSpec(), seed=0)
        first = honest.apply("p0", _outcome(tasks[0], deltas(0.1)), counts)
        assert phones[0].upload_raw(tasks[0]["task_id"], first.body).status_code == 200
        inject._last_upload = dict(honest._last_upload)
    bad = inject.apply("p1", _outcome(tasks[1], deltas(0.1)), counts)
    assert bad.fault == kind and counts[f"fault_{kind}"] == 1
    resp = phones[1].upload_raw(tasks[1]["task_id"], bad.body)
    assert resp.status_code in (400, 422), resp.get_json()
    code = resp.get_json()["error"]["code"]
    assert code == EXPECTED_REFUSAL[kind]
    record_answer(bad, code, counts)
    assert counts[f"fault_{kind}:{code}"] == 1
    rnd = h.state.machine.open[1]
    assert rnd.stats.rejected == {code: 1}  # the server's own accounting says why,
    row = h.state.db.one("SELECT stats FROM rounds WHERE id = 1")  # durably (a kill now
    assert json.loads(row["stats"])["rejected"] == {code: 1}  # would not erase it)
    assert rnd.stats.reported == (1 if kind == "replay" else 0)


def test_boost_is_a_valid_update_gamma_times_longer_and_accepted(tmp_path):
    h = harness(tmp_path, report_goal=2)
    phone = h.register()
    task = phone.task()
    out = FaultInjector(parse_faults("boost=1,gamma=4"), seed=0).apply(
        "p", _outcome(task, deltas(0.1)), Counter())
    meta, payload = wire.split_upload(out.body)
    got = decode_arrays(payload)
    for a, b in zip(got, deltas(0.1), strict=True):
        np.testing.assert_allclose(a, 4.0 * b, rtol=1e-6)
    assert meta.num_examples == 8  # the claim is honest: only the update is boosted
    assert phone.upload_raw(task["task_id"], out.body).status_code == 200


def test_unplug_aborts_mid_task_and_leaves_other_tasks_and_evaluations_alone(tmp_path):
    h = harness(tmp_path, report_goal=2)
    task = h.register().task()
    honest = _outcome(task, deltas(0.1))
    out = FaultInjector(parse_faults("unplug=1"), seed=0).apply("p", honest, Counter())
    assert out.kind == "abort" and out.reason == "not_charging" and out.fault == "unplug"
    assert 100.0 - 7.0 <= out.due < 100.0  # somewhere within the task's simulated time
    # an abort stays an abort; an update fault never touches an evaluation's metrics
    aborted = Outcome(honest.task, 50.0, "abort", reason="offline")
    assert FaultInjector(parse_faults("nan=1"), 0).apply("p", aborted, Counter()) is aborted
    ev = Outcome(wire.Task.from_json({**task, "plan": {**task["plan"], "kind": "evaluate"}}),
                 10.0, "upload", body=b"metrics")
    assert FaultInjector(parse_faults("nan=1"), 0).apply("p", ev, Counter()) is ev


def test_every_kind_is_handled():
    assert set(FAULT_KINDS) == {*EXPECTED_REFUSAL, "unplug", "boost"}


@pytest.mark.parametrize("argv", [
    ["fleet", "--server", "http://127.0.0.1:9", "--devices", "1", "--faults", "nan=2"],
    ["simulate", "--engine", "fleet", "--faults", "flood=0.1"],
    ["simulate", "--engine", "ngram", "--faults", "nan=0.1"]])
def test_both_commands_refuse_bad_faults_before_running_anything(argv, tmp_path, capsys):
    from fedkb.cli import main

    assert main([*argv, "--data", str(tmp_path)]) == 2
    assert "--faults" in capsys.readouterr().err
