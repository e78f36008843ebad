"""`fedkb privacy audit` (simulation/audit.py, simulation/audit_cli.py): canaries in the
data, exposure out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedkb.datasets.store import Dataset
from fedkb.errors import UserError
from fedkb.simulation.audit import (
    CanaryConfig,
    canary_window,
    exposure,
    insert_canaries,
    make_canaries,
)


def test_exposure_is_log_candidates_minus_log_rank():
    others = np.array([-5.0, -1.0, -3.0, -2.0, -9.0, -7.0, -8.0])  # 7 + the canary = 8
    assert exposure(0.0, others) == (3.0, 1)  # the most likely: log2(8) - log2(1)
    assert exposure(-2.5, others) == (pytest.approx(3.0 - 1.584963), 3)
    assert exposure(-10.0, others) == (0.0, 8)  # the least likely
    assert exposure(-3.0, others)[1] == 4  # a tie ranks against the canary


def test_canaries_go_into_their_users_training_rows_only(tiny_data, tmp_path):
    src = Dataset.open(tiny_data)
    cfg = CanaryConfig(canaries=2, repeats=7, candidates=10)
    prefix, canaries = make_canaries(src, 40, cfg, src.train_users)
    inserted = [c for c in canaries if c.user is not None]
    assert len(canaries) == 4 and len(inserted) == 2
    assert all(c.text.startswith("my pin is ") for c in canaries)
    out = Dataset.open(insert_canaries(tiny_data, tmp_path / "d", prefix, canaries, 7))
    for u in src.users:
        before, after = src.shard(u), out.shard(u)
        np.testing.assert_array_equal(after.eval, before.eval)
        mine = [c for c in inserted if c.user == u]
        added = after.train[len(before.train):]
        np.testing.assert_array_equal(after.train[:len(before.train)], before.train)
        assert len(added) == 7 * len(mine)
        for c in mine:
            row = canary_window(prefix, c.secret, src.seq_len)[0]
            assert (added == row).all(axis=1).sum() == 7
    with pytest.raises(ValueError, match="training users"):
        make_canaries(src, 40, CanaryConfig(canaries=99), src.train_users)


def test_a_canary_trained_on_is_exposed_and_a_control_is_not(tiny_data, tmp_path):
    from fedkb.simulation.audit_cli import AuditConfig, run_audit

    cfg = AuditConfig(data=tiny_data, workdir=tmp_path / "audit", engine="central",
                      preset="tiny", canary=CanaryConfig(canaries=2, repeats=20,
                                                         candidates=127),
                      central_epochs=20, central_lr=0.05)
    doc = run_audit(cfg)
    rows = doc["canaries"]
    assert [r["inserted"] for r in rows] == [True, True, False, False]
    assert all(r["max_exposure"] == 7.0 and r["candidates"] == 128 for r in rows)
    inserted = [r["exposure"] for r in rows if r["inserted"]]
    controls = [r["exposure"] for r in rows if not r["inserted"]]
    assert min(inserted) >= 6.0  # rank 1 or 2 of 128
    assert max(controls) < min(inserted) and np.mean(controls) < 5.0
    assert doc["summary"]["inserted"]["exposure_mean"] == pytest.approx(np.mean(inserted),
                                                                       abs=1e-3)
    assert math.isfinite(rows[0]["log_likelihood"])


def test_dp_audits_train_on_the_fleet_only(tiny_data, tmp_path):
    from fedkb.server.config import PrivacyConfig
    from fedkb.simulation.audit_cli import AuditConfig, run_audit

    with pytest.raises(UserError, match="fleet engine"):
        run_audit(AuditConfig(data=tiny_data, workdir=tmp_path, engine="central",
                              preset="tiny", privacy=PrivacyConfig(mechanism="ftrl")))


def test_the_audit_sits_beside_the_plan_in_the_cli():
    from fedkb.cli import build_parser

    args = build_parser().parse_args(["privacy", "audit", "--data", "d", "--canaries", "3",
                                      "--dp", "ftrl", "--dp-noise", "0.5", "--json"])
    assert (args.canaries, args.dp, args.dp_noise, args.engine) == (3, "ftrl", 0.5, "fleet")
    from fedkb.simulation.dp_flags import privacy_config

    assert privacy_config(args).mechanism == "ftrl"
    plan = build_parser().parse_args(["privacy", "plan", "--population", "10",
                                      "--clients-per-round", "2", "--rounds", "3",
                                      "--noise", "1"])
    assert plan.privacy_command == "plan"


def test_fleet_canaries_go_to_the_phones_eligible_longest(tiny_data, tmp_path):
    """On the fleet the canaries go to users a phone holds, those whose phones are
    eligible the longest over the run's span (they check in most, so they train)."""
    from fedkb.device_runtime.fleet import FleetConfig, fleet_profiles
    from fedkb.device_runtime.worker import BATTERY_NOT_LOW
    from fedkb.simulation.audit_cli import ROUND_WALL_S, AuditConfig, _training_users

    ds = Dataset.open(tiny_data)
    cfg = AuditConfig(data=tiny_data, workdir=tmp_path, devices=6, rounds=4,
                      canary=CanaryConfig(canaries=2))
    users = _training_users(cfg, ds)
    fc = FleetConfig("", tiny_data, 6, start_hour=22.0)
    start = 22.0 * 3600
    end = start + 4 * ROUND_WALL_S * 60.0
    eligible: dict[str, float] = {}
    for p in fleet_profiles(fc, range(6)):
        if p.role == "train":
            e = p.trace.eligible_seconds(start, end, BATTERY_NOT_LOW)
            eligible[p.user] = max(e, eligible.get(p.user, 0.0))
    assert len(users) == 2 and set(users) <= set(eligible)
    assert len(set(eligible.values())) > 1  # a ranking that can be wrong
    rest = [eligible[u] for u in eligible if u not in users]
    assert rest and min(eligible[u] for u in users) >= max(rest)
    assert _training_users(AuditConfig(data=tiny_data, workdir=tmp_path,
                                       engine="central"), ds) == ds.train_users
