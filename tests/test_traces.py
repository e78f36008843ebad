"""Device availability: eligibility rules, trace lookup, generator, plain-text files."""

from __future__ import annotations

import numpy as np
import pytest

from fedkb.device_runtime.traces import (
    DAY,
    NETWORKS,
    State,
    Trace,
    diurnal_trace,
    load_traces,
    save_traces,
)


def _trace(rows):
    t, c, n, i, b = zip(*rows, strict=True)
    return Trace(np.array(t), np.array(c), np.array([NETWORKS.index(x) for x in n]),
                 np.array(i), np.array(b))


FIXED = [  # t, charging, network, idle, battery (a fraction)
    (0, False, "cell", False, 0.5),
    (100, True, "cell", True, 0.55),
    (200, True, "wifi", False, 0.6),
    (300, True, "wifi", True, 0.65),
    (400, False, "wifi", True, 0.7),
]


@pytest.mark.parametrize(("state", "eligible", "reason"), [
    (State(True, "wifi", True, 0.5), True, None),
    (State(False, "wifi", True, 0.5), False, "not_charging"),
    (State(True, "cell", True, 0.5), False, "metered_network"),
    (State(True, "offline", True, 0.5), False, "offline"),
    (State(True, "wifi", False, 0.5), False, "not_idle"),
])
def test_eligibility_needs_charging_unmetered_and_idle(state, eligible, reason):
    assert state.eligible is eligible
    assert state.why_not() == reason


def test_trace_lookup_is_piecewise_constant():
    tr = _trace(FIXED)
    assert tr.state_at(-1).network == "offline" and not tr.state_at(-1).eligible
    assert tr.state_at(0) == State(False, "cell", False, 0.5)
    assert tr.state_at(299.9).why_not() == "not_idle"
    assert tr.state_at(300).eligible
    assert tr.state_at(10_000).why_not() == "not_charging"  # last state holds
    assert tr.next_change(300) == 400 and tr.next_change(400) is None
    assert tr.next_eligible(0) == 300 and tr.next_eligible(350) == 350
    assert tr.next_eligible(401) is None
    assert tr.next_ineligible(300) == 400 and tr.next_ineligible(50) == 50


def test_unsorted_or_bad_rows_are_refused():
    with pytest.raises(ValueError):
        _trace([(10, True, "wifi", True, 0.01), (5, True, "wifi", True, 0.01)])
    with pytest.raises(ValueError):
        Trace(np.array([0.0]), np.array([True]), np.array([7]), np.array([True]), np.array([0.01]))


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_trace_files_round_trip(tmp_path, suffix):
    traces = {"phone-a": _trace(FIXED), "phone-b": diurnal_trace(np.random.default_rng(3))}
    path = tmp_path / f"traces{suffix}"
    save_traces(traces, path)
    back = load_traces(path)
    assert set(back) == {"phone-a", "phone-b"}
    for dev, tr in traces.items():
        np.testing.assert_allclose(back[dev].t, tr.t)
        for t in (0, 150, 310, 3600 * 3, 3600 * 13):
            a, b = tr.state_at(t), back[dev].state_at(t)
            assert (a.charging, a.network, a.idle) == (b.charging, b.network, b.idle)
            assert abs(a.battery - b.battery) < 0.006


def test_trace_file_errors_name_the_problem(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("device,t,charging,network,idle,battery\nx,0,1,satellite,1,50\n")
    with pytest.raises(ValueError, match="unknown network 'satellite'"):
        load_traces(p)
    p.write_text("device,t\nx,0\n")
    with pytest.raises(ValueError, match="not a valid trace file"):
        load_traces(p)


def test_diurnal_generator_is_seeded_and_available_mostly_at_night():
    a, b = diurnal_trace(np.random.default_rng(7)), diurnal_trace(np.random.default_rng(7))
    np.testing.assert_array_equal(a.t, b.t)
    np.testing.assert_array_equal(a.flags, b.flags)
    traces = [diurnal_trace(np.random.default_rng(s), days=2) for s in range(40)]
    grid = np.arange(0, 2 * DAY, 900)
    hours = (grid / 3600) % 24
    el = np.array([[tr.state_at(t).eligible for t in grid] for tr in traces])
    night = el[:, (hours >= 1) & (hours < 5)].mean()
    day = el[:, (hours >= 10) & (hours < 18)].mean()
    assert night > 0.6 and day < 0.1
    # a time zone shifts the pattern: +12 h makes the UTC night the local day
    shifted = [diurnal_trace(np.random.default_rng(s), tz_hours=12) for s in range(40)]
    el2 = np.array([[tr.state_at(t).eligible for t in grid] for tr in shifted])
    assert el2[:, (hours >= 1) & (hours < 5)].mean() < 0.1


@pytest.mark.parametrize(("state", "reason"), [
    (State(False, "wifi", True, 0.5), "not_charging"),
    (State(True, "cell", True, 0.5), "metered_network"),
    (State(True, "wifi", False, 0.5), "not_idle"),
])
def test_the_phone_and_the_server_name_each_failing_condition_alike(state, reason):
    from fedkb.server.config import RoundConfig
    from fedkb.server.pacing import ineligibility

    assert state.why_not() == reason
    assert ineligibility(state.conditions(), RoundConfig()) == reason


def test_a_low_battery_is_low_battery_to_the_phones_scheduler_and_the_server():
    from fedkb.device_runtime.worker import BATTERY_NOT_LOW
    from fedkb.server.config import RoundConfig
    from fedkb.server.pacing import ineligibility

    assert RoundConfig().min_battery == BATTERY_NOT_LOW  # the same fraction on both sides
    low = State(True, "wifi", True, 0.1).conditions()
    assert low.ineligibility(min_battery=BATTERY_NOT_LOW) == "low_battery"
    assert ineligibility(low, RoundConfig()) == "low_battery"
    assert State(True, "wifi", True, 0.1).why_not() is None  # a task is not aborted for it


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_trace_files_hold_a_percentage_and_phones_report_a_fraction(tmp_path, suffix):
    from fedkb import wire

    path = tmp_path / f"traces{suffix}"
    if suffix == ".csv":
        path.write_text("device,t,charging,network,idle,battery\nx,0,1,wifi,1,40\n"
                        "x,60,1,wifi,1,47.5\n")
    else:
        path.write_text('{"devices": {"x": [[0, 1, "wifi", 1, 40], [60, 1, "wifi", 1, 47.5]]}}')
    trace = load_traces(path)["x"]
    assert [trace.state_at(t).battery for t in (0, 60)] == [0.4, 0.475]
    sent = trace.state_at(0).conditions()
    assert wire.Conditions.from_json(sent.to_json()) == sent  # valid on the wire: 0..1
    save_traces({"x": trace}, tmp_path / f"again{suffix}")
    assert "47.5" in (tmp_path / f"again{suffix}").read_text()  # written back in percent


def test_eligible_seconds_sums_the_eligible_rows_within_the_span():
    wifi = NETWORKS.index("wifi")
    # eligible 100-300 (battery 0.5), 300-400 at a low battery, 400-: not charging
    tr = Trace(np.array([0.0, 100.0, 300.0, 400.0]), np.array([True, True, True, False]),
               np.full(4, wifi), np.array([False, True, True, True]),
               np.array([0.9, 0.5, 0.1, 0.9]))
    assert tr.eligible_seconds(0, 1000) == 300.0
    assert tr.eligible_seconds(0, 1000, min_battery=0.2) == 200.0
    assert tr.eligible_seconds(150, 350, min_battery=0.2) == 150.0
    assert tr.eligible_seconds(500, 900) == 0.0
