"""The DP flags of `fedkb simulate` / `fedkb demo`: one path from the command line to the
server's [privacy] table, refusals, and the report's privacy object (no fleet started)."""

from __future__ import annotations

import argparse

import pytest

from fedkb.cli import build_parser
from fedkb.errors import UserError
from fedkb.server.config import ConfigError, PrivacyConfig, load_config
from fedkb.simulation.cli import _run, fleet_config
from fedkb.simulation.dp_flags import epsilon_text, privacy_report
from fedkb.simulation.fleet_config import write_server_config

DP = ("--dp", "fedavg", "--dp-noise", "0.7", "--dp-clip", "0.5", "--dp-adaptive",
      "--dp-target-epsilon", "8", "--dp-noise-cohort", "1000")


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_dp_flags_reach_the_servers_privacy_table(tiny_data, tmp_path):
    args = _args("simulate", "--engine", "fleet", "--data", str(tiny_data),
                 "--clients-per-round", "5", "--strategy", "fedavgm", *DP)
    cfg = fleet_config(args)
    assert cfg.privacy == PrivacyConfig(mechanism="fedavg", noise_multiplier=0.7, clip=0.5,
                                        adaptive=True, target_epsilon=8.0, noise_cohort=1000)
    path = write_server_config(cfg, tmp_path / "server.json", train_phones=200)
    server = load_config(path)
    assert server.privacy == cfg.privacy.replace(population=200)  # N: the training phones
    assert server.strategy.name == "fedavgm"
    off = fleet_config(_args("simulate", "--engine", "fleet", "--data", str(tiny_data)))
    assert not off.privacy.enabled
    assert not load_config(write_server_config(off, tmp_path / "o.json", 200)).privacy.enabled


def test_demo_takes_the_same_dp_flags():
    args = _args("demo", *DP)
    assert (args.dp, args.dp_noise, args.dp_clip, args.dp_adaptive, args.dp_target_epsilon,
            args.dp_noise_cohort) == ("fedavg", 0.7, 0.5, True, 8.0, 1000)


@pytest.mark.parametrize("engine", ["tff", "central", "ngram"])
def test_engines_without_a_dp_stage_refuse_dp(engine, tiny_data):
    with pytest.raises(UserError, match="--dp runs on the fleet engine"):
        _run(_args("simulate", "--engine", engine, "--data", str(tiny_data), "--dp", "fedavg"))


def test_dp_settings_without_dp_or_out_of_range_are_refused(tiny_data):
    base = ("simulate", "--engine", "fleet", "--data", str(tiny_data))
    with pytest.raises(UserError, match="--dp-adaptive needs --dp"):
        fleet_config(_args(*base, "--dp-adaptive"))
    with pytest.raises(ConfigError, match="noise_multiplier must be >= 0"):
        fleet_config(_args(*base, "--dp", "fedavg", "--dp-noise", "-1"))
    with pytest.raises(ConfigError, match="clip must be positive"):
        fleet_config(_args(*base, "--dp", "fedavg", "--dp-clip", "0"))
    # adaptive clipping with 5 clients: sigma_b = 0.25, z must stay under 0.5
    cfg = fleet_config(_args(*base, "--dp", "fedavg", "--dp-adaptive", "--dp-noise", "1",
                             "--clients-per-round", "5"))
    with pytest.raises(ConfigError, match="2 x count std"):
        load_config_from(cfg)


def load_config_from(cfg):
    from fedkb.server.config import ServerConfig

    return ServerConfig(round=cfg.round, strategy=cfg.strategy, privacy=cfg.privacy)


def test_report_privacy_object_and_table_line():
    status = {"privacy": {"mechanism": "fedavg", "noise_multiplier": 1.0, "clip": 0.5,
                          "adaptive": False, "epsilon": 3.2, "delta": 1e-5, "rounds": 20,
                          "accountant": "rdp", "stopped": None,
                          "hypothetical_population": {"label": "hypothetical population",
                                                      "noise_cohort": 1000,
                                                      "epsilon": 0.4}}}
    rep = privacy_report(status)
    assert {"mechanism", "noise_multiplier", "clip", "epsilon", "delta", "rounds"} <= set(rep)
    line = epsilon_text(rep)
    assert "epsilon 3.2 at delta 1e-05" in line and "hypothetical population" in line
    assert privacy_report({}) is None and epsilon_text(None) == "no differential privacy"
    assert "inf (no guarantee)" in epsilon_text({**rep, "epsilon": None})
