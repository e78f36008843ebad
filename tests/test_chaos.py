"""The chaos run, short: a faulty fleet of tiny-model phones trains against a real server
that is SIGKILLed once during a commit and restarted on its state directory. Nothing
committed is lost, no bad update is folded (by the server's own refusal counts and by
replaying every committed round from its checkpoints), the server is back within
seconds, and no process is left behind. The full run is bench/bench_faults.py."""

from __future__ import annotations

import pytest

from fedkb.device_runtime.faults import EXPECTED_REFUSAL, parse_faults
from fedkb.server.config import ClientConfig, StrategyConfig
from fedkb.simulation.chaos import ChaosConfig, run_chaos
from fedkb.simulation.fleet_config import FLEET_ROUND, FleetRunConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAULTS = "nan=0.06,huge=0.06,shape=0.06,replay=0.06,examples=0.06,unplug=0.06,boost=0.05"


def test_a_faulty_fleet_survives_a_kill_during_commit(tmp_path, tiny_data, tiny_artifact):
    cfg = FleetRunConfig(
        data=tiny_data, preset="tiny", devices=40, workers=0, speedup=60, start_hour=1.0,
        claim_hold_s=0.0, artifact=tiny_artifact, faults=parse_faults(FAULTS),
        # phones come back within 1-10 s (not the default 5-600): a tiny fleet, quick
        # rounds; a round closes as soon as it has its devices and its reports, so the long
        # window and deadline cost nothing unless the machine is loaded (then they save it)
        round=FLEET_ROUND.replace(report_goal=3, max_rounds=3, selection_window_s=15.0,
                                  reporting_deadline_s=30.0, pipeline=False, retry_min_s=1.0,
                                  retry_max_s=10.0),
        client=ClientConfig(lr=0.5, max_steps=5), strategy=StrategyConfig(clip_norm=4.0))
    r = run_chaos(ChaosConfig(cfg, kills=1, timeout_s=300, commit_watch_s=60), tmp_path)
    assert r["rounds_committed"] >= 3 and r["model_version"] >= 3, r
    (kill,) = r["kills"]
    assert kill["versions_lost"] == [] and r["versions_lost"] == 0
    assert kill["version_after_restart"] >= kill["versions_durable"]
    assert kill["temporaries_after_restart"] == []  # a half-written checkpoint is removed
    assert kill["first_checkin_s"] < 30, kill
    acc = r["accounting"]
    assert acc["bad_updates_folded"] == 0
    injected = sum(acc["kinds"][k]["injected"] for k in EXPECTED_REFUSAL)
    assert injected > 0, acc
    for kind in EXPECTED_REFUSAL:  # every refusal the fleet saw, the server counted
        row = acc["kinds"][kind]
        assert row["server_rejected"] >= row["refused_as_expected"], (kind, acc)
        assert set(row["answers"]) <= {EXPECTED_REFUSAL[kind], "late_report",
                                       "round_abandoned"}, (kind, row)
    rep = r["replay"]
    assert rep["replayable"] and rep["bad"] == [] and rep["versions"] >= 3, rep
    assert rep["max_mean_update_norm"] <= 4.0 * 1.001
    assert r["orphans"] == []
