"""A bad config value is refused at the edge (422 ``bad_config``) and never bricks the
server: not through an admin PATCH, not through an override read back at start."""

from __future__ import annotations

import logging

import pytest
from server_support import ADMIN, FakeClock, Harness, harness, make_config

from fedkb.server.app import create_app
from fedkb.server.config import ClientConfig, ConfigError, RoundConfig, ServerConfig, load_config

BAD_ROUND = ['{"report_goal": 1e400}', '{"report_goal": 5.5}', '{"report_goal": true}',
             '{"report_goal": 10000000000000}', '{"selection_window_s": 1e400}',
             '{"overselect": -1e400}', '{"pipeline": 1}', '{"max_rounds": 2.0}',
             '{"max_update_norm": 0}']
BAD_CLIENT = ['{"lr": 1e400}', '{"epochs": 2.0}', '{"max_steps": true}',
              '{"max_steps": 1e400}', '{"lr": "0.1"}']


def patch(h: Harness, path: str, raw: str):
    return h.client.patch(path, data=raw, headers={"Authorization": f"Bearer {ADMIN}",
                                                   "Content-Type": "application/json"})


def refused_config(r) -> None:
    """A PATCH the server cannot use: 422 ``bad_config`` from the config checks, or, for a
    number JSON cannot hold as a finite float (1e400), 400 ``bad_json`` from the strict
    JSON reader before the config ever sees it."""
    got = (r.status_code, r.get_json()["error"]["code"])
    assert got in {(422, "bad_config"), (400, "bad_json")}, r.data


def still_serving(h: Harness) -> None:
    assert h.client.get("/v1/status").status_code == 200
    d = h.register()
    assert "task" in d.checkin()


@pytest.mark.parametrize("raw", BAD_ROUND)
def test_a_round_config_patch_that_cannot_be_used_is_refused(tmp_path, raw):
    h = harness(tmp_path)
    before = h.admin("GET", "/v1/admin/round-config").get_json()
    refused_config(patch(h, "/v1/admin/round-config", raw))
    assert h.admin("GET", "/v1/admin/round-config").get_json() == before
    assert h.state.db.get("round_overrides", {}) == {}
    h.clock.advance(100)  # a round opens after the refused PATCH
    still_serving(h)


@pytest.mark.parametrize("raw", BAD_CLIENT)
def test_a_client_config_patch_that_cannot_be_used_is_refused(tmp_path, raw):
    h = harness(tmp_path)
    refused_config(patch(h, "/v1/admin/client-config", raw))
    assert h.state.db.get("client_overrides", {}) == {}
    still_serving(h)


def test_a_good_patch_still_applies(tmp_path):
    h = harness(tmp_path)
    r = patch(h, "/v1/admin/round-config", '{"report_goal": 3, "selection_window_s": 7}')
    assert r.status_code == 200 and r.get_json()["report_goal"] == 3
    assert patch(h, "/v1/admin/client-config", '{"lr": 2, "max_steps": 9}').status_code == 200


def test_a_bad_stored_override_is_refused_at_start_and_the_file_config_used(tmp_path, caplog):
    cfg = make_config(tmp_path)
    first = create_app(cfg, clock=FakeClock())
    db = first.extensions["fedkb"].db
    # what an older server stored before the values were checked
    db.put("round_overrides", {"report_goal": float("inf"), "eval_goal": 3})
    db.put("client_overrides", {"epochs": 1e400})
    first.extensions["fedkb"].close()
    with caplog.at_level(logging.WARNING, logger="fedkb.server.config"):
        app = create_app(cfg, clock=FakeClock())
    h = Harness(app, app.test_client(), FakeClock())
    assert h.state.machine.cfg == cfg.round
    assert h.state.machine.strategy.client == cfg.client
    assert "ignoring the stored [round] overrides" in caplog.text
    assert "ignoring the stored [client] overrides" in caplog.text
    assert h.state.db.get("round_overrides_refused")["eval_goal"] == 3  # kept, not lost
    assert h.state.db.get("round_overrides") == {}
    still_serving(h)


@pytest.mark.parametrize("kw", [{"report_goal": 5.5}, {"report_goal": True},
                                {"report_goal": 10**400}, {"reporting_deadline_s": 10**400},
                                {"min_battery": float("nan")}, {"require_idle": "yes"},
                                {"max_weight_abs": float("inf")}])
def test_round_config_checks_types_and_ranges(kw):
    with pytest.raises(ConfigError):
        RoundConfig(**kw)


def test_client_and_server_configs_check_types():
    for kw in ({"lr": float("inf")}, {"epochs": 1.5}, {"max_steps": False}):
        with pytest.raises(ConfigError):
            ClientConfig(**kw)
    for kw in ({"threads": 2.0}, {"token_ttl_s": float("inf")},
               {"registrations_per_minute": 0}, {"registrations_per_minute_per_address": 1.5}):
        with pytest.raises(ConfigError):
            ServerConfig(**kw)
    assert RoundConfig(selection_window_s=10).selection_window_s == 10  # ints are numbers


def test_a_config_file_goes_through_the_same_checks(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[round]\nreport_goal = true\n")
    with pytest.raises(ConfigError, match="report_goal"):
        load_config(p)
    p.write_text("[client]\nepochs = 2.5\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_config(p)
