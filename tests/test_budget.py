"""`fedkb demo --budget` (fedkb.simulation.budget): its cost model and sizing, exactly."""

from __future__ import annotations

import pytest

from fedkb.simulation.budget import (
    SAFETY,
    Workload,
    parse_budget,
    plan,
    predict,
    replan_rounds,
)

# the nominal demo on Shakespeare: 200 rounds of 20, 3.82 steps a client, 1,023 central
# steps, 606 held-out batches, 2 cores
DEMO = Workload(rounds=200, clients_per_round=20, mean_client_steps=3.815,
                central_steps=1023, heldout_batches=606, cores=2)


def test_budget_text():
    assert parse_budget("10m") == 600 and parse_budget("600s") == 600
    assert parse_budget("90") == 90 and parse_budget("1.5min") == 90
    assert parse_budget("off") == 0 and parse_budget("0") == 0
    with pytest.raises(ValueError):
        parse_budget("ten minutes")


def test_the_model_passes_through_the_two_measured_demos():
    for step_s, baselines, federated in ((0.0202, 100.8, 396.9), (0.0586, 175.0, 624.0)):
        b, f = predict(DEMO, step_s)
        assert b == pytest.approx(baselines, abs=1.5) and f == pytest.approx(federated, abs=4)


def test_a_fast_machine_runs_the_full_demo():
    p = plan(600, 0.0202, 16.0, DEMO)
    assert p.scale == 1.0 and p.rounds == 200 and p.central_steps == 1023
    assert "it fits" in p.describe(DEMO)


def test_a_slow_machine_scales_rounds_and_central_alike_to_fit():
    p = plan(600, 0.0586, 20.0, DEMO)  # the Xeon: 817 s unscaled
    assert 0.5 < p.scale < 0.8
    assert p.rounds == int(200 * p.scale) and p.central_steps == int(1023 * p.scale)
    assert p.elapsed_s + p.planned_s <= 600 * SAFETY + 1
    text = p.describe(DEMO)
    assert f"200 -> {p.rounds}" in text and f"1023 -> {p.central_steps}" in text


def test_a_hopeless_budget_keeps_a_minimum_demo():
    p = plan(60, 0.5, 20.0, DEMO)
    assert p.scale == pytest.approx(0.2) and p.rounds == 40


def test_baselines_on_time_keep_the_plan():
    p = plan(600, 0.0504, 21.0, DEMO)
    b, _ = predict(DEMO, p.step_s, p.rounds, p.central_steps)
    assert replan_rounds(p, DEMO, 21.0 + b, b) == (p.rounds, None)
    assert replan_rounds(p, DEMO, 21.0 + 0.5 * b, 0.5 * b)[0] == p.rounds  # never raised


def test_slow_baselines_cut_the_rounds_to_what_still_fits():
    # the tenth session's demo: 50.4 ms step, baselines 150.6 s against ~129 s predicted
    p = plan(600, 0.0504, 21.0, DEMO)
    b, _ = predict(DEMO, p.step_s, p.rounds, p.central_steps)
    elapsed, took = 21.0 + 1.164 * b, 1.164 * b
    rounds, why = replan_rounds(p, DEMO, elapsed, took)
    assert rounds < p.rounds and f"{p.rounds} -> {rounds} rounds" in why and "1.16x" in why
    _, f_new = predict(DEMO, p.step_s, rounds, p.central_steps)
    assert elapsed + 1.164 * f_new <= 600 * SAFETY + 1
    _, f_one_more = predict(DEMO, p.step_s, rounds + 1, p.central_steps)
    assert elapsed + 1.164 * f_one_more > 600 * SAFETY - 1  # the most that fits


def test_a_replan_keeps_the_minimum_demo():
    p = plan(600, 0.0504, 21.0, DEMO)
    assert replan_rounds(p, DEMO, 590.0, 500.0)[0] == 40
