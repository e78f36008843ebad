"""The fleet engine's server config and export reuse (no server, no fleet started)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil

import pytest

from fedkb.cli import build_parser
from fedkb.datasets.store import Dataset
from fedkb.errors import UserError
from fedkb.server.config import ClientConfig, ConfigError, RoundConfig, StrategyConfig, load_config
from fedkb.simulation.cli import NO_CAP, central_config, fleet_config, tff_config
from fedkb.simulation.fleet_config import (
    FLEET_ROUND,
    FleetRunConfig,
    rejoin_rounds,
    report_config,
    server_config,
    server_round,
    train_phones,
    write_server_config,
)
from fedkb.simulation.fleet_engine import default_artifact_dir, ensure_artifact
from fedkb.simulation.fleet_run import diverged, stall_diagnosis


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_phones_rest_a_quarter_of_the_rounds_needed_to_use_every_training_phone(tiny_data):
    cfg = FleetRunConfig(data=tiny_data, round=FLEET_ROUND.replace(report_goal=20,
                                                                   overselect=1.1))
    assert rejoin_rounds(cfg, 1277) == 1277 // 22 // 4 == 14
    assert rejoin_rounds(cfg, 10) == 0  # a small fleet: no rest, or rounds would starve
    assert rejoin_rounds(FleetRunConfig(data=tiny_data, rejoin_after_rounds=3), 1277) == 3


def test_server_config_is_a_valid_round_config_in_the_servers_clock(tiny_data):
    cfg = FleetRunConfig(data=tiny_data, devices=30, speedup=300.0,
                         strategy=StrategyConfig(clip_norm=4.0))
    phones = train_phones(Dataset.open(tiny_data), cfg)
    assert 0 < phones < 30  # held-out users' phones evaluate, they do not train
    doc = server_config(cfg, phones)
    rc = RoundConfig(**doc["round"])  # validated like a config file
    assert rc.ineligible_retry_s == 1.0  # 300 s of phone time at 300x
    assert StrategyConfig(**doc["strategy"]) == StrategyConfig(name="fedavg", server_lr=1.0,
                                                               clip_norm=4.0)
    decayed = fleet_config(_args("simulate", "--engine", "fleet", "--data", str(tiny_data),
                                 "--rounds", "200", "--lr-decay"))
    assert StrategyConfig(**server_config(decayed, phones)["strategy"]).decay_rounds == 200
    # rounds wait for the fleet to register: a round's target, at most a quarter of the
    # training phones (only the eligible ones register, so a small fleet must not wait)
    assert rc.min_registered == phones // 4
    assert server_config(cfg, 1277)["round"]["min_registered"] == 26  # 20 x 1.3


def test_a_small_fleet_asks_an_evaluation_round_for_a_quarter_of_its_heldout_phones(tiny_data):
    cfg = FleetRunConfig(data=tiny_data, round=FLEET_ROUND.replace(eval_goal=10))
    assert server_round(cfg, 100, 12).eval_goal == 3
    assert server_round(cfg, 100, 2).eval_goal == 1
    assert server_round(cfg, 100, 400).eval_goal == 10
    assert server_round(cfg, 100).eval_goal == 10


def test_the_server_config_file_is_what_load_config_reads_back(tiny_data, tmp_path):
    cfg = FleetRunConfig(data=tiny_data, devices=30, speedup=120.0,
                         round=FLEET_ROUND.replace(eval_every=2, max_rounds=7),
                         client=ClientConfig(lr=0.3, epochs=2, max_steps=9),
                         strategy=StrategyConfig(name="fedadam", server_lr=0.02, clip_norm=2.0,
                                                 decay_rounds=7))
    phones = train_phones(Dataset.open(tiny_data), cfg)
    path = write_server_config(cfg, tmp_path / "server.json", phones, 30 - phones)
    back = load_config(path)
    assert back.round == server_round(cfg, phones, 30 - phones)
    assert (back.client, back.strategy) == (cfg.client, cfg.strategy)
    assert json.loads(path.read_text()) == {
        "registrations_per_minute_per_address": back.registrations_per_minute_per_address,
        "registrations_per_minute": back.registrations_per_minute,
        "round": dataclasses.asdict(back.round), "client": dataclasses.asdict(back.client),
        "strategy": dataclasses.asdict(back.strategy),
        "compression": dataclasses.asdict(back.compression)}


def test_a_fleet_run_needs_its_number_of_rounds(tiny_data):
    with pytest.raises(ConfigError, match="max_rounds"):
        FleetRunConfig(data=tiny_data, round=RoundConfig())


def test_simulate_defaults_are_the_configs_defaults(tiny_data):
    from fedkb.model.central import CentralConfig
    from fedkb.model.config import get_preset
    from fedkb.simulation.engines import TffRunConfig

    args = _args("simulate", "--engine", "fleet", "--data", str(tiny_data))
    lr = get_preset("small").learning_rate  # --lr unset: the preset's
    assert fleet_config(args) == FleetRunConfig(
        data=tiny_data, artifact=default_artifact_dir(tiny_data, "small"),
        client=ClientConfig(lr=lr, max_steps=NO_CAP))  # no cap unless --max-steps
    assert fleet_config(args).round == FLEET_ROUND
    assert tff_config(args) == TffRunConfig(data=tiny_data, lr=lr)
    assert central_config(args) == CentralConfig(learning_rate=lr)


def test_simulate_and_demo_take_the_ray_fleets_shards_and_trainers(tiny_data):
    pytest.importorskip("ray")  # ray_options checks that Ray is installed
    from fedkb.device_runtime.ray_options import RayOptions

    for head in (["simulate", "--engine", "fleet", "--data", str(tiny_data)], ["demo"]):
        args = _args(*head, "--ray", "auto", "--ray-shards", "3", "--ray-trainers", "2")
        assert (args.ray, args.ray_shards, args.ray_trainers) == ("auto", 3, 2)
    args = _args("simulate", "--engine", "fleet", "--data", str(tiny_data), "--ray",
                 "--ray-shards", "3", "--ray-trainers", "2")
    assert fleet_config(args).ray == RayOptions(address="local", shards=3, trainers=2)


def test_uniform_weighting_reaches_the_fleet_server_and_tff_refuses_it(tiny_data):
    from fedkb.simulation.cli import _run

    args = _args("simulate", "--engine", "fleet", "--data", str(tiny_data), "--weighting",
                 "uniform")
    assert fleet_config(args).strategy.weighting == "uniform"
    assert report_config(fleet_config(args))["weighting"] == "uniform"  # in the report
    tff = _args("simulate", "--engine", "tff", "--data", str(tiny_data), "--weighting",
                "uniform")
    with pytest.raises(UserError, match="fleet engine"):
        _run(tff)


def test_demo_defaults_are_the_demo_recipe(tiny_data, tmp_path):
    from fedkb.simulation.demo import DEMO_CLIENT, DEMO_ROUND, DEMO_STRATEGY, demo_config

    a = _args("demo")
    assert (a.rounds, a.clients_per_round) == (None, None)  # the demo's own, or fitted
    cfg = demo_config(tiny_data, tmp_path, 40, DEMO_ROUND.max_rounds, DEMO_ROUND.report_goal,
                      a.workers,
                      a.preset, a.strategy, a.lr, a.server_lr)
    assert cfg.round == DEMO_ROUND.replace(eval_every=DEMO_ROUND.max_rounds // 8)
    assert cfg.client == DEMO_CLIENT
    assert cfg.strategy == DEMO_STRATEGY.replace(decay_rounds=DEMO_ROUND.max_rounds)
    assert (cfg.workers, cfg.preset) == (FleetRunConfig(data=tiny_data).workers, "small")


def _choices(command: str, flag: str) -> tuple[str, ...]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return tuple(action.choices)


def test_strategy_choices_are_the_servers_registry():
    from fedkb.server.strategy import STRATEGIES

    assert _choices("simulate", "--strategy") == _choices("demo", "--strategy") == \
        tuple(STRATEGIES)
    with pytest.raises(ConfigError, match=", ".join(STRATEGIES)):
        StrategyConfig(name="fedsgd")


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


def test_stall_diagnosis_names_updates_refused_as_too_large():
    rounds = [{"id": 1, "kind": "train", "state": "committed", "reason": None,
               "committed_version": 1, "metrics": {"loss": 5.0}},
              *({"id": i, "kind": "train", "state": "abandoned", "reason": "deadline",
                 "rejected": {"update_too_large": 3, "late_report": 1}} for i in (2, 3))]
    msg = stall_diagnosis(rounds)
    assert "6 updates were refused (update_too_large: 6)" in msg and "diverged" in msg


def test_a_loss_above_100_nats_or_not_finite_is_a_divergence():
    assert not diverged(None) and not diverged(9.2) and not diverged(99.9)
    assert diverged(100.0) and diverged(4e21) and diverged(float("nan"))
    assert diverged(float("inf"))


def test_a_fleet_reports_config_keeps_its_flat_fields(tiny_data):
    cfg = FleetRunConfig(data=tiny_data, strategy=StrategyConfig(decay_rounds=20))
    doc = report_config(cfg)
    assert list(doc) == [
        "data", "preset", "rounds", "clients_per_round", "epochs", "max_steps", "lr",
        "server_lr", "strategy", "devices", "workers", "speedup", "start_hour",
        "selection_window_s", "reporting_deadline_s", "pipeline", "claim_poll_s",
        "claim_hold_s", "overselect", "pace_margin", "clip_norm", "lr_decay", "eval_every",
        "eval_goal", "seed", "artifact", "rejoin_after_rounds", "faults", "dp", "uplink",
        "rotate", "downlink", "quantize_min", "weighting", "grad_clip", "ray"]
    assert (doc["rounds"], doc["clients_per_round"], doc["lr_decay"], doc["strategy"]) == \
        (20, 20, True, "fedavg")
    json.dumps(doc)  # plain JSON
    from fedkb.device_runtime.faults import parse_faults

    assert doc["faults"] is None  # honest phones; the --faults text otherwise
    faulty = FleetRunConfig(data=tiny_data, faults=parse_faults("nan=0.05,boost=0.1"))
    assert report_config(faulty)["faults"] == "nan=0.05,boost=0.1"


def test_one_blown_up_device_is_not_a_diverged_model():
    """A device whose local SGD exploded moves the round's mean loss past the divergence
    bound; the median (what the typical device saw) says the model is fine."""
    from fedkb.server.aggregate import ScalarMeans
    from fedkb.simulation.fleet_run import typical_loss

    s = ScalarMeans(medians=("loss",))
    for loss in [5.6] * 19 + [6e4]:  # 20 devices, one blew up
        s.accumulate({"loss": loss}, 100.0)
    metrics = s.result()
    assert diverged(metrics["loss"]) and metrics["loss_median"] == 5.6
    assert typical_loss(metrics) == 5.6 and not diverged(typical_loss(metrics))
    # every device starting from a diverged model: the median shows it
    bad = ScalarMeans(medians=("loss",))
    for loss in [3e3] * 15 + [5.0] * 5:
        bad.accumulate({"loss": loss}, 1.0)
    assert diverged(typical_loss(bad.result()))
    # rounds recorded before medians were kept: the mean decides, as it did
    assert typical_loss({"loss": 4e21}) == 4e21 and typical_loss({}) is None


def test_rounds_abandoned_with_blown_up_updates_say_the_devices_diverge():
    from fedkb.simulation.fleet_run import DIVERGED_ROUNDS, devices_diverging

    def rnd(i, state, rejected=None, kind="train"):
        return {"id": i, "kind": kind, "state": state, "rejected": rejected or {}}

    blown = [rnd(i, "abandoned", {"update_too_large": 2}) for i in range(2, 2 + DIVERGED_ROUNDS)]
    assert devices_diverging([rnd(1, "committed"), *blown, rnd(99, "training")])
    assert devices_diverging([*blown, rnd(50, "committed", kind="evaluate")])
    # one round among them abandoned for want of phones, or a commit: not (yet) diverging
    assert not devices_diverging([*blown[:-1], rnd(9, "abandoned")])
    assert not devices_diverging([*blown[1:], rnd(9, "committed")])
    assert not devices_diverging(blown[:-1])  # too few to tell
