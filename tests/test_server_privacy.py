"""DP-FedAvg through the real server (Flask test client, fake clock): the plan's clip,
the unweighted mean over the report goal, recorded events, the budget, status, metrics,
and the settings refused at start."""

from __future__ import annotations

import math

import numpy as np
import pytest
from server_support import FakeClock, Harness, deltas, initial_weights, make_config

from fedkb.clipping import clip_update
from fedkb.errors import UserError
from fedkb.server.app import create_app
from fedkb.server.config import ConfigError, PrivacyConfig, StrategyConfig
from fedkb.server.privacy.accounting import epsilon
from fedkb.server.privacy.dp_rounds import recorded_events
from fedkb.wire import UploadMetadata, encode_upload


def dp_harness(tmp, privacy: PrivacyConfig, strategy: StrategyConfig | None = None,
               **round_kw) -> Harness:
    clock = FakeClock()
    round_kw.setdefault("pipeline", False)
    cfg = make_config(tmp, strategy=strategy, **round_kw)
    app = create_app(cfg.replace(privacy=privacy), clock=clock)
    return Harness(app, app.test_client(), clock)


def upload(h: Harness, dev, task, delta, unclipped=None, n: int = 1):
    meta = UploadMetadata(task["task_id"], task["round_id"], n, 1.0, {}, {}, unclipped)
    return dev.upload_raw(task["task_id"], encode_upload(meta, delta))


def test_dp_round_clips_and_takes_the_unweighted_mean_over_the_report_goal(tmp_path):
    h = dp_harness(tmp_path, PrivacyConfig(mechanism="fedavg", noise_multiplier=0.0,
                                           clip=2.0, population=10), min_fraction=0.5)
    devs = [h.register() for _ in range(3)]
    tasks = [d.task() for d in devs[:2]]
    assert all(t["plan"]["clip"] == 2.0 for t in tasks)
    long = deltas(3.0)  # a phone that did not clip: the server clips it and counts it
    short = deltas(0.1)
    assert upload(h, devs[0], tasks[0], long, None, n=150).status_code == 200
    assert upload(h, devs[1], tasks[1], short, True, n=1).status_code == 200
    r = h.client.get("/v1/rounds/1").get_json()
    assert r["state"] == "committed"
    want = [w0 + (clip_update(long, 2.0)[0][i] + short[i]) / 2
            for i, w0 in enumerate(initial_weights())]
    for got, w in zip(h.global_weights(), want, strict=True):
        np.testing.assert_allclose(got, w, atol=1e-6)
    assert r["measurements"]["over_clip"] == 1 and r["measurements"]["denominator"] == 2
    assert r["privacy"]["event"] == {"mechanism": "fixed", "noise_multiplier": 0.0,
                                     "clip": 2.0, "population": 10, "clients_per_round": 2}
    s = h.status()["privacy"]
    assert s["epsilon"] is None and s["rounds"] == 1  # z = 0: no guarantee at all
    assert s["delta"] == 1e-5 and s["mechanism"] == "fedavg"


def test_epsilon_in_status_and_metrics_is_recomputable_from_the_database(tmp_path):
    h = dp_harness(tmp_path, PrivacyConfig(mechanism="fedavg", noise_multiplier=1.0,
                                           clip=1.0, population=50))
    devs = [h.register() for _ in range(4)]
    for _ in range(2):  # two rounds of two reports
        tasks = [(d, d.checkin()) for d in devs]
        got = [(d, t["task"]) for d, t in tasks if "task" in t][:2]
        for d, t in got:
            assert upload(h, d, t, deltas(0.1), True).status_code == 200
    s = h.status()["privacy"]
    events = recorded_events(h.state.db)
    assert len(events) == s["rounds"] == 2
    assert s["epsilon"] == pytest.approx(epsilon(events, s["delta"]).epsilon, rel=1e-9)
    assert s["epsilon"] > 0 and s["accountant"] == "rdp" and s["neighboring"] == "replace_one"
    text = h.client.get("/metrics").text
    assert "fedkb_privacy_epsilon" in text and "fedkb_privacy_clip 1.0" in text
    rounds = h.client.get("/v1/rounds").get_json()["rounds"]
    assert [r["privacy"]["epsilon"] is not None for r in rounds if r["privacy"]] == [True] * 2


def test_budget_stops_training_before_the_round_that_would_exceed_it(tmp_path):
    cfg = PrivacyConfig(mechanism="fedavg", noise_multiplier=1.0, clip=1.0, population=4)
    one = dp_harness(tmp_path / "probe", cfg)  # epsilon of one round of this recipe
    devs = [one.register() for _ in range(2)]
    for d in devs:
        upload(one, d, d.task(), deltas(0.1), True)
    eps1 = one.status()["privacy"]["epsilon"]
    h = dp_harness(tmp_path / "run", cfg.replace(target_epsilon=eps1 * 1.001))
    devs = [h.register() for _ in range(2)]
    for d in devs:
        assert upload(h, d, d.task(), deltas(0.1), True).status_code == 200
    s = h.status()
    assert s["rounds_committed"] == 1 and s["training"] == "finished"
    assert s["privacy"]["stopped"]["reason"] == "target_epsilon"
    assert s["privacy"]["epsilon"] == pytest.approx(eps1)
    assert eps1 * 1.001 < s["privacy"]["stopped"]["epsilon_after_next"]
    assert "retry_after_s" in devs[0].checkin()  # no round opens again
    h.state.close()
    with pytest.raises(UserError, match="already spent"):  # refused at start, clearly
        create_app(make_config(tmp_path / "run").replace(
            privacy=cfg.replace(target_epsilon=eps1 * 0.5)), clock=FakeClock())


def test_adaptive_clip_grows_when_phones_clip_and_the_next_plan_carries_it(tmp_path):
    h = dp_harness(tmp_path, PrivacyConfig(mechanism="fedavg", noise_multiplier=0.0,
                                           clip=1.0, adaptive=True, population=10))
    devs = [h.register() for _ in range(2)]
    tasks = [d.task() for d in devs]
    for d, t in zip(devs, tasks, strict=True):
        upload(h, d, t, clip_update(deltas(5.0), 1.0)[0], False)  # both clipped
    r = h.client.get("/v1/rounds/1").get_json()
    frac = r["measurements"]["noisy_unclipped_fraction"]
    assert frac < 0.5 and r["measurements"]["next_clip"] > 1.0
    nxt = devs[0].task()
    assert nxt["plan"]["clip"] == pytest.approx(math.exp(-0.2 * (frac - 0.5)))
    assert h.status()["privacy"]["clip"] == nxt["plan"]["clip"]


@pytest.mark.parametrize(("privacy", "round_kw", "message"), [
    (dict(noise_multiplier=-1.0), {}, "noise_multiplier must be >= 0"),
    (dict(clip=0.0), {}, "clip must be positive"),
    (dict(population=5), dict(report_goal=6), "exceeds privacy.population"),
    (dict(adaptive=True, noise_multiplier=1.0), dict(report_goal=10), "2 x count std"),
    (dict(mechanism="ftrl"), {}, "needs strategy.name 'dpftrl'"),
    (dict(mechanism="laplace"), {}, "privacy.mechanism must be one of"),
])
def test_bad_privacy_settings_are_refused_at_start(tmp_path, privacy, round_kw, message):
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, **round_kw).replace(
            privacy=PrivacyConfig(**{"mechanism": "fedavg", **privacy}))


def test_privacy_table_in_the_config_file_is_strict(tmp_path):
    from fedkb.server.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('[privacy]\nmechanism = "fedavg"\nnoise_multiplier = 0.8\nclip = 0.5\n')
    cfg = load_config(path)
    assert (cfg.privacy.mechanism, cfg.privacy.noise_multiplier, cfg.privacy.clip) == (
        "fedavg", 0.8, 0.5)
    path.write_text('[privacy]\nmechanism = "fedavg"\nnoise = 0.8\n')
    with pytest.raises(ConfigError, match="unknown privacy setting"):
        load_config(path)
    path.write_text('[privacy]\nmechanism = "fedavg"\nadaptive = 1\n')
    with pytest.raises(ConfigError, match="true or false"):
        load_config(path)


def test_no_privacy_leaves_rounds_as_they_were(tmp_path):
    h = dp_harness(tmp_path, PrivacyConfig(), strategy=StrategyConfig())
    devs = [h.register() for _ in range(2)]
    tasks = [d.task() for d in devs]
    assert "clip" not in tasks[0]["plan"]  # no clip: the plan reads as before DP
    for d, t in zip(devs, tasks, strict=True):
        upload(h, d, t, deltas(1.0), None, n=3)
    assert "privacy" not in h.status()
    assert h.client.get("/v1/rounds/1").get_json()["privacy"] is None


def test_admin_cannot_patch_a_report_goal_the_privacy_settings_refuse(tmp_path):
    h = dp_harness(tmp_path, PrivacyConfig(mechanism="fedavg", noise_multiplier=0.5,
                                           clip=1.0, adaptive=True, population=50),
                   report_goal=20)
    r = h.admin("PATCH", "/v1/admin/round-config", json={"report_goal": 4})
    assert r.status_code == 422 and "2 x count std" in r.get_json()["error"]["message"]
    r = h.admin("PATCH", "/v1/admin/round-config", json={"report_goal": 60})
    assert r.status_code == 422 and "exceeds privacy.population" in r.get_json()["error"][
        "message"]
    assert h.admin("PATCH", "/v1/admin/round-config", json={"report_goal": 30}
                   ).status_code == 200


def test_noise_cohort_noises_as_if_k_devices_and_labels_its_epsilon(tmp_path):
    from fedkb.server.db import Database
    from fedkb.server.metrics import ServerMetrics
    from fedkb.server.privacy.dp_rounds import PrivacyRounds
    from fedkb.server.privacy.ledger import EpsilonLedger

    db = Database(tmp_path / "p.db")
    rounds = PrivacyRounds(PrivacyConfig(mechanism="fedavg", noise_multiplier=1.0, clip=0.5,
                                         noise_cohort=100, population=1000), db,
                           ServerMetrics())
    agg = rounds.aggregator([], 10, registered=1000)
    assert agg.event.noise_multiplier == pytest.approx(0.1)  # z m / K: the actual noise
    assert agg.noise_std == pytest.approx(0.1 * 0.5)  # std on the sum: z_actual C
    rec = rounds.record(agg.event, {"noise_std": agg.noise_std})
    s = rounds.status()
    assert s["hypothetical_population"]["label"] == "hypothetical population"
    hyp = s["hypothetical_population"]["epsilon"]
    assert hyp < s["epsilon"] and rec["hypothetical_epsilon"] == hyp
    pretend = EpsilonLedger().spent([event_of("fixed", 1.0, 0.5, 10000, 100)], 1e-5)
    assert hyp == pytest.approx(pretend.epsilon)  # N K / m devices, K per round, z
    db.close()


def test_a_strategy_that_adds_its_own_noise_gets_the_clipped_sum_and_makes_the_events(
        tmp_path):
    """The seam DP-FTRL uses: no per-round Gaussian here, the strategy's dp_event."""
    from fedkb.server.db import Database
    from fedkb.server.metrics import ServerMetrics
    from fedkb.server.privacy.dp_mean import ClippedSum
    from fedkb.server.privacy.dp_rounds import PrivacyRounds

    made = []

    def dp_event(clip, m, n):
        made.append((clip, m, n))
        return event_of("tree", 2.0, clip, n, m, tree=0, min_separation=3)

    db = Database(tmp_path / "p.db")
    cfg = PrivacyConfig(mechanism="ftrl", noise_multiplier=2.0, clip=0.5, population=100)
    rounds = PrivacyRounds(cfg, db, ServerMetrics(), event_source=dp_event)
    agg = rounds.aggregator([], 10, registered=100)
    assert type(agg) is ClippedSum and made == [(0.5, 10, 100)]
    assert agg.event.mechanism == "tree"
    with pytest.raises(UserError, match="must supply the DP events"):
        PrivacyRounds(cfg, db, ServerMetrics())
    db.close()


def event_of(mechanism, z, clip, n, m, **kw):
    from fedkb.server.privacy.accounting import RoundEvent

    return RoundEvent(mechanism, z, clip, population=n, clients_per_round=m, **kw)


def test_a_pipelined_round_gets_the_clip_the_round_before_it_left(tmp_path):
    h = dp_harness(tmp_path, PrivacyConfig(mechanism="fedavg", noise_multiplier=0.0,
                                           clip=1.0, adaptive=True, population=10),
                   pipeline=True)
    devs = [h.register() for _ in range(4)]
    tasks = [d.checkin() for d in devs]
    assert [("task" in t) for t in tasks] == [True, True, True, False]  # 4th: ahead
    assert tasks[3]["reason"] == "selected_waiting"
    for d, t in zip(devs[:2], tasks[:2], strict=True):
        upload(h, d, t["task"], clip_update(deltas(5.0), 1.0)[0], False)
    grown = h.client.get("/v1/rounds/1").get_json()["measurements"]["next_clip"]
    assert grown > 1.0
    assert devs[3].task()["plan"]["clip"] == pytest.approx(grown)


def test_dp_ftrl_through_the_server_records_tree_events_and_enforces_the_separation(
        tmp_path):
    """``mechanism = "ftrl"``: the dpftrl strategy noises the prefix sums, each committed
    round records its tree event (with the separation the server's rest enforces), and
    the epsilon in status is the accountant's for exactly those events."""
    from fedkb.server.privacy.ftrl import DPFTRL

    h = dp_harness(tmp_path, PrivacyConfig(mechanism="ftrl", noise_multiplier=0.0,
                                           clip=1.0, restart_every=2, population=50),
                   StrategyConfig(name="dpftrl", momentum=0.0), rejoin_after_rounds=3)
    assert isinstance(h.state.machine.strategy, DPFTRL)
    assert h.state.machine.strategy.privacy.min_separation == 2
    devs = [h.register() for _ in range(6)]
    w0 = initial_weights()
    for _ in range(3):  # three rounds of two reports; a phone rests after it trained
        got = [(d, t["task"]) for d, t in ((d, d.checkin()) for d in devs) if "task" in t][:2]
        assert len(got) == 2
        for d, t in got:
            assert t["plan"]["clip"] == 1.0
            assert upload(h, d, t, deltas(0.1), True).status_code == 200
    events = recorded_events(h.state.db)
    assert [(e.mechanism, e.tree, e.min_separation) for e in events] == [
        ("tree", 0, 2), ("tree", 0, 2), ("tree", 1, 2)]
    # z = 0, no momentum, lr 1: three FTRL steps of the unclipped mean 0.1-deltas
    # (a restart after two keeps the model: it restarts the sum at the current one)
    want = [w + 3 * d for w, d in zip(w0, deltas(0.1), strict=True)]
    for got_w, w in zip(h.global_weights(), want, strict=True):
        np.testing.assert_allclose(got_w, w, atol=1e-5)
    s = h.status()["privacy"]
    assert s["mechanism"] == "ftrl" and s["rounds"] == 3 and s["epsilon"] is None  # z = 0


def test_dp_ftrl_refuses_what_it_does_not_do(tmp_path):
    for bad in (dict(adaptive=True), dict(noise_cohort=100)):
        with pytest.raises(ConfigError, match="DP-FedAvg's"):
            dp_harness(tmp_path, PrivacyConfig(mechanism="ftrl", clip=1.0, **bad),
                       StrategyConfig(name="dpftrl", momentum=0.0))
