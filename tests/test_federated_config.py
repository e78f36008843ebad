"""The fleet engine's server config and export reuse (no server, no fleet started)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from fedkb.datasets.store import Dataset
from fedkb.server.config import RoundConfig, StrategyConfig
from fedkb.simulation.fleet_engine import (
    FleetRunConfig,
    default_artifact_dir,
    ensure_artifact,
    rejoin_rounds,
    server_config,
    train_phones,
)
from fedkb.simulation.fleet_run import diverged, stall_diagnosis


def test_phones_rest_a_quarter_of_the_rounds_needed_to_use_every_training_phone(tiny_data):
    cfg = FleetRunConfig(data=tiny_data, clients_per_round=20, overselect=1.1)
    assert rejoin_rounds(cfg, 1277) == 1277 // 22 // 4 == 14
    assert rejoin_rounds(cfg, 10) == 0  # a small fleet: no rest, or rounds would starve
    assert rejoin_rounds(FleetRunConfig(data=tiny_data, rejoin_after_rounds=3), 1277) == 3


def test_server_config_is_a_valid_round_config_in_the_servers_clock(tiny_data):
    cfg = FleetRunConfig(data=tiny_data, devices=30, speedup=300.0, clip_norm=4.0)
    phones = train_phones(Dataset.open(tiny_data), cfg)
    assert 0 < phones < 30  # held-out users' phones evaluate, they do not train
    doc = server_config(cfg, 0.5, phones)
    rc = RoundConfig(**doc["round"])  # validated like a config file
    assert rc.ineligible_retry_s == 1.0  # 300 s of phone time at 300x
    assert doc["strategy"] == {"name": "fedavg", "server_lr": 1.0, "clip_norm": 4.0}
    decayed = server_config(replace(cfg, lr_decay=True, rounds=200), 0.5, phones)
    assert StrategyConfig(**decayed["strategy"]).decay_rounds == 200  # over the whole run
    # rounds wait for the fleet to register: a round's target, at most a quarter of the
    # training phones (only the eligible ones register, so a small fleet must not wait)
    assert rc.min_registered == phones // 4
    assert server_config(cfg, 0.5, 1277)["round"]["min_registered"] == 26  # 20 x 1.3


def test_export_is_reused_and_redone_when_the_preset_no_longer_matches(tiny_data, tiny_artifact,
                                                                       tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    out = default_artifact_dir(data, "tiny")
    shutil.copytree(tiny_artifact, out)
    stamp = (out / "model.tflite").stat().st_mtime_ns
    assert ensure_artifact(data, "tiny", out) == out
    assert (out / "model.tflite").stat().st_mtime_ns == stamp  # reused as is
    meta = json.loads((out / "metadata.json").read_text())
    meta["config"]["units"] += 1  # as if the preset had changed since the export
    (out / "metadata.json").write_text(json.dumps(meta))
    ensure_artifact(data, "tiny", out)
    assert json.loads((out / "metadata.json").read_text())["config"]["units"] == \
        meta["config"]["units"] - 1


def test_heldout_eval_in_two_halves_sums_like_one_pass(tiny_data, tiny_artifact):
    from fedkb.device_runtime.trainer import Trainer
    from fedkb.simulation.fleet_engine import heldout_eval

    ds = Dataset.open(tiny_data)
    trainer = Trainer(tiny_artifact)
    weights = trainer.artifact.initial_weights()
    whole = trainer.evaluate(weights, ds.all_windows("heldout", "eval"))
    counts, loss = heldout_eval(tiny_artifact, weights, ds)
    assert counts == whole.counts and counts.iv_count > 0
    assert loss == pytest.approx(whole.mean_loss, rel=1e-6)


def test_stall_diagnosis_names_the_reasons_and_a_diverged_loss():
    def rnd(i, state, reason=None, loss=5.0):
        return {"id": i, "kind": "train", "state": state, "reason": reason,
                "committed_version": i if state == "committed" else None,
                "metrics": {"loss": loss}}

    rounds = [rnd(1, "committed"), rnd(2, "abandoned", "deadline"), rnd(3, "committed", loss=4e21),
              rnd(4, "abandoned", "deadline"), rnd(5, "abandoned", "deadline"),
              rnd(6, "abandoned", "too_few_devices")]
    msg = stall_diagnosis(rounds)
    assert "version 3" in msg and "last 3 training rounds" in msg
    assert "deadline: 2, too_few_devices: 1" in msg and "4e+21" in msg and "diverged" in msg
    calm = stall_diagnosis(rounds[:2])
    assert "version 1" in calm and "diverged" not in calm and "eligible" in calm
    # stopped at once by a diverged commit: nothing abandoned since
    at_once = stall_diagnosis(rounds[:3])
    assert at_once.startswith("training stopped at model version 3;") and "diverged" in at_once


def test_a_loss_above_100_nats_or_not_finite_is_a_divergence():
    assert not diverged(None) and not diverged(9.2) and not diverged(99.9)
    assert diverged(100.0) and diverged(4e21) and diverged(float("nan"))
    assert diverged(float("inf"))
