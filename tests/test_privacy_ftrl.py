"""DP-FTRL as a server strategy (server/privacy/ftrl.py) and the minimum separation the
server's rest enforces for its accounting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from server_support import deltas, harness

from fedkb.server.aggregate import AggregateResult
from fedkb.server.config import ConfigError, RoundConfig, StrategyConfig
from fedkb.server.privacy.ftrl import (
    DPFTRL,
    FtrlConfig,
    check_round,
    enforced_separation,
    separation_round,
)
from fedkb.server.strategy import STRATEGIES, FedAvg
from fedkb.weights import WeightSpec

SHAPES = [(3, 4), (5,)]
SPECS = [WeightSpec(f"w{i}", s) for i, s in enumerate(SHAPES)]


class Seeded:
    """A reproducible NormalSource for tests (the real one is never seeded by hand)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, std: float, shape: tuple[int, ...]) -> np.ndarray:
        return self.rng.normal(0.0, std, size=shape)


def ftrl(z: float = 0.0, momentum: float = 0.0, nesterov: bool = False, lr: float = 1.0,
         restart: int | None = None, clip: float = 2.0, m: int = 4, seed: int = 0) -> DPFTRL:
    cfg = StrategyConfig(name="dpftrl", server_lr=lr, momentum=momentum, nesterov=nesterov)
    return DPFTRL(cfg, privacy=FtrlConfig(z, clip, m, restart_every=restart),
                  source=Seeded(seed))


def start(shapes=SHAPES) -> list[np.ndarray]:
    return [np.linspace(-1, 1, int(np.prod(s)), dtype=np.float32).reshape(s) for s in shapes]


def pull(weights: list[np.ndarray], t: int) -> list[np.ndarray]:
    """A delta that depends on the model it is computed from (as a client's would)."""
    return [(0.3 * (np.cos(t) - w)).astype(np.float32) for w in weights]


def test_dpftrl_is_registered_and_refuses_to_run_without_privacy_settings():
    assert STRATEGIES["dpftrl"] is DPFTRL
    with pytest.raises(ConfigError, match="privacy settings"):
        DPFTRL(StrategyConfig(name="dpftrl"))
    with pytest.raises(ConfigError, match="constant server_lr"):
        DPFTRL(StrategyConfig(name="dpftrl", decay_rounds=10), privacy=FtrlConfig(1, 1, 1))


def test_without_noise_and_momentum_it_is_fedavg_server_sgd_over_many_rounds():
    lr = 0.7
    a, b = ftrl(lr=lr), FedAvg(StrategyConfig(server_lr=lr))
    wa = wb = start()
    for t in range(1, 31):
        wa = a.aggregate(wa, AggregateResult(pull(wa, t)), t)
        wb = b.aggregate(wb, AggregateResult(pull(wb, t)), t)
    for x, y in zip(wa, wb, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert not np.allclose(wa[0], start()[0])  # it did move


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_applies_to_the_prefix_sums_from_the_tree_start(nesterov):
    mu, lr = 0.9, 0.5
    s = ftrl(momentum=mu, nesterov=nesterov, lr=lr)
    theta0 = start()
    w, given = theta0, []
    for t in range(1, 7):
        given.append(pull(w, t))
        w = s.aggregate(w, AggregateResult(given[-1]), t)
        prefix = [sum(g[0].astype(np.float64) for g in given[:k]) for k in range(1, t + 1)]
        v = sum(mu ** (t - k) * prefix[k - 1] for k in range(1, t + 1))  # Σ μ^{t-k} S_k
        step = mu * v + prefix[-1] if nesterov else v
        np.testing.assert_allclose(w[0], theta0[0] + lr * step, atol=1e-5)


def test_prefix_noise_variance_is_popcount_times_sigma_squared():
    z, clip, m = 1.5, 2.0, 4
    sigma = z * clip / m
    shapes = [(200, 200)]
    s = ftrl(z=z, clip=clip, m=m, seed=1)
    theta0 = [np.zeros(shapes[0], np.float32)]
    w = theta0
    for t in range(1, 9):
        w = s.aggregate(w, AggregateResult([np.zeros(shapes[0], np.float32)]), t)
        var = float(np.var(w[0] - theta0[0]))
        assert var == pytest.approx(t.bit_count() * sigma ** 2, rel=0.05), t
        assert s.last_round["nodes"] == t.bit_count()


def test_a_restart_starts_the_tree_and_the_sum_again_at_the_current_model():
    z, clip, m = 1.0, 1.0, 1
    shapes = [(200, 200)]
    s = ftrl(z=z, clip=clip, m=m, restart=2, seed=2)
    zero = [np.zeros(shapes[0], np.float32)]
    w, trees, var = zero, [], []
    for t in range(1, 7):
        w = s.aggregate(w, AggregateResult(zero), t)
        trees.append(s.last_round["tree"])
        var.append(float(np.var(w[0])))
    assert trees == [0, 0, 1, 1, 2, 2]
    # round 4: the model of round 2 plus the 1-node prefix of tree 1 (2σ²; 1σ² without
    # the restart, whose tree would give round 4 a single node)
    assert var[3] == pytest.approx(2.0, rel=0.05)
    assert var[5] == pytest.approx(3.0, rel=0.05)


def test_without_noise_a_restart_resets_momentum_to_a_fresh_run_from_that_model():
    a = ftrl(momentum=0.8, lr=0.6, restart=3)
    w = start()
    for t in range(1, 4):
        w = a.aggregate(w, AggregateResult(pull(w, t)), t)
    fresh = ftrl(momentum=0.8, lr=0.6)
    wa, wf = w, w
    for t in range(4, 7):
        wa = a.aggregate(wa, AggregateResult(pull(wa, t)), t)
        wf = fresh.aggregate(wf, AggregateResult(pull(wf, t)), t)
    np.testing.assert_allclose(wa[0], wf[0], atol=1e-6)


def test_state_is_public_counters_and_loading_it_restarts_the_tree_under_a_new_index():
    a = ftrl(momentum=0.9, lr=0.5, z=0.0)
    w = start()
    for t in range(1, 4):
        w = a.aggregate(w, AggregateResult(pull(w, t)), t)
    state = a.state()
    assert [x.tolist() for x in state] == [[1, 3]]  # one tree started, three rounds in it
    b = ftrl(momentum=0.9, lr=0.5)
    b.load_state(state)
    assert [x.tolist() for x in b.state()] == [[1, 0]]
    wb = b.aggregate(w, AggregateResult(pull(w, 4)), 4)
    assert (b.last_round["tree"], b.last_round["tree_step"]) == (1, 1)
    fresh = ftrl(momentum=0.9, lr=0.5)  # the restart: a fresh run from the checkpoint
    np.testing.assert_allclose(wb[0], fresh.aggregate(w, AggregateResult(pull(w, 4)))[0])
    b.load_state(b.state())  # the machine's rollback of a failed commit: tree 2 next
    b.aggregate(w, AggregateResult(pull(w, 5)), 5)
    assert b.last_round["tree"] == 2
    for bad in ([np.zeros(3)], [np.zeros(2), np.zeros(2)], [np.array([-1, 0])]):
        with pytest.raises(ValueError):
            b.load_state(bad)


def test_the_aggregate_is_the_unweighted_clipped_sum_over_the_fixed_denominator():
    s = ftrl(clip=1.0, m=4)  # z = 0, no momentum, lr 1: the step is the mean itself
    agg = s.aggregator(SPECS)
    agg.accumulate([np.full(sh, 10.0, np.float32) for sh in SHAPES], weight=50.0)  # clipped
    agg.accumulate([np.full(sh, 0.01, np.float32) for sh in SHAPES], weight=1.0)
    res = agg.result()
    norm = float(np.sqrt(sum(np.prod(sh) for sh in SHAPES)))
    np.testing.assert_allclose(res.value[0], 1.0 / norm + 0.01, rtol=1e-5)  # the sum
    assert (res.measurements["count"], res.measurements["denominator"]) == (2, 4)
    w0 = start()
    w1 = s.aggregate(w0, res, 1)  # divided by m = 4, not by the 2 that came, nor by weight
    np.testing.assert_allclose(w1[0] - w0[0], (1.0 / norm + 0.01) / 4, rtol=1e-5)
    assert s.aggregator(SPECS).result().value is None


def test_the_event_of_the_next_round_predicts_its_tree():
    s = ftrl(z=1.0, restart=2)
    w = start()
    predicted = []
    for t in range(1, 6):
        predicted.append(s.dp_event(2.0, 4, 100).tree)
        w = s.aggregate(w, AggregateResult(pull(w, t)), t)
        assert s.round_event().tree == predicted[-1]
    assert predicted == [0, 0, 1, 1, 2]


def test_its_round_events_give_the_planners_epsilon():
    from fedkb.server.privacy import accounting as acc
    from fedkb.server.privacy.plan_cli import plan

    cfg = StrategyConfig(name="dpftrl", momentum=0.0)
    s = DPFTRL(cfg, privacy=FtrlConfig(1.2, 1.0, 5, restart_every=3, min_separation=4),
               source=Seeded(0))
    w, events = start(), []
    for t in range(1, 7):
        w = s.aggregate(w, AggregateResult(pull(w, t)), t)
        events.append(s.round_event())
    assert [e.tree for e in events] == [0, 0, 0, 1, 1, 1]
    doc = plan(100, 5, 6, noise=1.2, delta=1e-6, mechanism="ftrl", min_separation=4,
               restart_every=3)
    assert acc.epsilon(events, 1e-6).epsilon == pytest.approx(doc["epsilon"])


# --- the minimum separation, enforced by the rest ------------------------------------


def test_the_rest_for_a_separation_and_the_refusals():
    rc = separation_round(RoundConfig(report_goal=5), 3)
    assert (rc.rejoin_after_rounds, enforced_separation(rc)) == (4, 3)
    assert separation_round(rc.replace(rejoin_after_rounds=9), 3).rejoin_after_rounds == 9
    assert enforced_separation(RoundConfig()) == 0
    check_round(rc, FtrlConfig(1.0, 1.0, 5, min_separation=3))
    with pytest.raises(ConfigError, match="rejoin_after_rounds"):
        check_round(rc, FtrlConfig(1.0, 1.0, 5, min_separation=4))
    with pytest.raises(ConfigError, match="report_goal"):
        check_round(rc, FtrlConfig(1.0, 1.0, 4, min_separation=3))


def test_selection_keeps_a_device_out_for_the_stated_separation(tmp_path):
    s = 2
    rest = separation_round(RoundConfig(), s).rejoin_after_rounds
    h = harness(tmp_path, pipeline=False, overselect=1.0, rejoin_after_rounds=rest)  # goal 2
    devs = [h.register() for _ in range(6)]
    rounds: dict[str, list[int]] = {d.id: [] for d in devs}
    for r in range(1, 10):
        tasks = []
        for d in devs:  # the devices that trained longest ago ask first, every round
            body = d.checkin()
            if "task" in body:
                tasks.append((d, body["task"]))
        assert len(tasks) == 2, r
        for d, t in tasks:
            assert d.upload(t, deltas(0.01)).status_code == 200
            rounds[d.id].append(r)
        assert h.status()["model_version"] == r
    gaps = [b - a - 1 for rs in rounds.values() for a, b in itertools.pairwise(rs)]
    assert min(gaps) == s  # never closer, and as close as allowed (a rest one short fails)
