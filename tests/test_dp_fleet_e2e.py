"""End to end with DP: `fedkb simulate --engine fleet --dp fedavg` (real server, LiteRT
phones that clip) reports its privacy, and a budget ends the run cleanly early."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedkb.datasets.store import Dataset
from fedkb.server.privacy.accounting import RoundEvent, default_delta, epsilon
from fedkb.simulation.fleet_config import FleetRunConfig, train_phones

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _simulate(tiny_data, tiny_artifact, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "fedkb", "simulate", "--engine", "fleet", "--data",
         str(tiny_data), "--preset", "tiny", "--clients-per-round", "5", "--devices", "50",
         "--selection-window", "5", "--reporting-deadline", "60", "--max-steps", "5",
         "--artifact", str(tiny_artifact),  # never an export into the shared tiny_data
         "--json", "--dp", "fedavg", *extra], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_dp_fleet_run_reports_epsilon_and_adapts_the_clip(tiny_data, tiny_artifact):
    rep = _simulate(tiny_data, tiny_artifact, "--rounds", "3", "--dp-noise", "0.3",
                    "--dp-clip", "0.05",
                    "--dp-adaptive")
    p = rep["privacy"]
    n = train_phones(Dataset.open(tiny_data), FleetRunConfig(data=tiny_data, devices=50))
    assert (p["mechanism"], p["noise_multiplier"], p["rounds"], p["population"]) == (
        "fedavg", 0.3, 3, n)
    events = [RoundEvent("fixed", 0.3, 1.0, population=n, clients_per_round=5)] * 3
    assert p["epsilon"] == pytest.approx(epsilon(events, p["delta"]).epsilon, rel=1e-9)
    assert p["delta"] == default_delta(n)
    eps = [r["epsilon"] for r in rep["rounds"]]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(p["epsilon"])
    clips = [r["clip"] for r in rep["rounds"]]
    assert clips[0] == 0.05 and clips[-1] > 0.05  # tiny updates all clipped at 0.05: grows


def test_dp_target_epsilon_ends_the_fleet_run_before_the_round_over_it(tiny_data,
                                                                      tiny_artifact):
    n = train_phones(Dataset.open(tiny_data), FleetRunConfig(data=tiny_data, devices=50))
    one = RoundEvent("fixed", 1.0, 1.0, population=n, clients_per_round=5)
    e1, e2 = (epsilon([one] * k, default_delta(n)).epsilon for k in (1, 2))
    rep = _simulate(tiny_data, tiny_artifact, "--rounds", "5", "--dp-noise", "1.0",
                    "--dp-clip", "0.5",
                    "--dp-target-epsilon", str((e1 + e2) / 2))
    p = rep["privacy"]
    assert p["rounds"] == len(rep["rounds"]) == 1
    assert p["stopped"]["reason"] == "target_epsilon"
    assert p["epsilon"] == pytest.approx(e1) and rep["heldout"]["users"] > 0
