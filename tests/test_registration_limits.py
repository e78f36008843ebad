"""Registration is limited per client address and in total over any minute (429
``rate_limited`` with ``Retry-After``), so an attacker cannot take seats at will."""

from __future__ import annotations

import pytest
from server_support import FakeClock, harness

from fedkb.server.config import ServerConfig
from fedkb.server.devices import RegistrationLimiter
from fedkb.server.errors import TooManyRequests


def register(h, address: str = "127.0.0.1"):
    return h.client.post("/v1/devices", json={"population": "train"},
                         environ_base={"REMOTE_ADDR": address})


def test_one_address_gets_its_limit_a_minute_then_429_with_retry_after(tmp_path):
    limit = ServerConfig().registrations_per_minute_per_address
    assert limit is not None and limit <= 60  # limited by default
    h = harness(tmp_path)
    for _ in range(limit):
        assert register(h).status_code == 201
    h.clock.advance(20)
    r = register(h)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    assert r.headers["Retry-After"] == "40"  # the oldest of the minute's seats frees then
    assert h.state.devices.count() == limit  # the refused attempt created nothing
    assert register(h, "10.0.0.2").status_code == 201  # another address is not held up
    assert 'fedkb_rejections_total{reason="rate_limited"} 1.0' in \
        h.client.get("/metrics").text
    h.clock.advance(40)
    assert register(h).status_code == 201  # the window slides


def test_the_total_limit_holds_across_addresses(tmp_path):
    h = harness(tmp_path)
    h.state.devices.limiter = RegistrationLimiter(None, 5, h.clock)
    for i in range(5):
        assert register(h, f"10.0.0.{i}").status_code == 201
    r = register(h, "10.0.1.1")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 60
    h.clock.advance(60)
    assert register(h, "10.0.1.1").status_code == 201


def test_a_burst_at_attack_rate_gets_only_the_limit(tmp_path):
    h = harness(tmp_path)
    codes = [register(h).status_code for _ in range(650)]  # 650 in one (fake) second
    assert codes.count(201) == ServerConfig().registrations_per_minute_per_address
    assert set(codes) == {201, 429}


def test_limits_can_be_lifted_and_in_process_registration_is_not_limited():
    clock = FakeClock()
    open_door = RegistrationLimiter(None, None, clock)
    for _ in range(10_000):
        open_door.admit("127.0.0.1")
    one = RegistrationLimiter(1, None, clock)
    one.admit("a")
    with pytest.raises(TooManyRequests) as exc:
        one.admit("a")
    assert exc.value.status == 429 and exc.value.retry_after_s == 60


def test_the_config_takes_the_limits(tmp_path):
    h = harness(tmp_path)
    cfg = h.state.config
    assert h.state.devices.limiter.per_address == cfg.registrations_per_minute_per_address
    assert h.state.devices.limiter.total == cfg.registrations_per_minute
    for _ in range(40):  # the registry's own callers (benchmarks, tests) are trusted
        h.state.devices.register("train")


def test_the_fleet_engine_raises_the_limits_so_its_whole_fleet_registers_at_once(tmp_path):
    from fedkb.server.config import load_config
    from fedkb.simulation.fleet_config import FleetRunConfig, write_server_config

    cfg = FleetRunConfig(data=tmp_path, devices=1419)
    path = write_server_config(cfg, tmp_path / "server.json", train_phones=1277)
    server = load_config(path)
    assert server.registrations_per_minute_per_address >= 1419
    assert server.registrations_per_minute >= 1419
    h = harness(tmp_path / "h")
    h.state.devices.limiter = RegistrationLimiter(server.registrations_per_minute_per_address,
                                                  server.registrations_per_minute, h.clock)
    assert all(register(h).status_code == 201 for _ in range(1419))
