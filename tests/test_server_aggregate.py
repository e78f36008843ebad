"""Aggregation and server-optimizer math, exactly, on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest

from fedkb.server.aggregate import (
    AggregateResult,
    Clipped,
    ScalarMeans,
    WeightedMean,
    clip_by_global_norm,
    global_norm,
    mean_factory,
)
from fedkb.server.config import (
    ClientConfig,
    ConfigError,
    RoundConfig,
    StrategyConfig,
    load_config,
)
from fedkb.server.strategy import (
    STRATEGIES,
    FedAdam,
    FedAvg,
    FedAvgM,
    Strategy,
    adam_step,
    make_strategy,
    scheduled_lr,
)
from fedkb.server.uploads import UPDATE_ERROR_CODES
from fedkb.weights import WeightsError, WeightSpec, check_weights

SPECS = [WeightSpec("a", (2,)), WeightSpec("b", (1, 2))]


def arr(*values: list[float]) -> list[np.ndarray]:
    return [np.array(values[0], np.float32), np.array([values[1]], np.float32)]


def test_weighted_mean_is_sum_of_weighted_updates_over_total_weight():
    agg = WeightedMean(SPECS)
    agg.accumulate(arr([1, 2], [3, 4]), 1)
    agg.accumulate(arr([5, 6], [7, 8]), 3)
    out = agg.result().value
    assert agg.count == 2 and agg.total_weight == 4
    np.testing.assert_array_equal(out[0], [4, 5])  # (1 + 15) / 4, (2 + 18) / 4
    np.testing.assert_array_equal(out[1], [[6, 7]])
    assert out[0].dtype == np.float32


def test_weighted_mean_of_nothing_is_none_and_memory_is_one_model():
    agg = WeightedMean(SPECS)
    assert agg.result().value is None
    for _ in range(50):
        agg.accumulate(arr([1, 1], [1, 1]), 2)
    assert len(agg._sum) == len(SPECS)  # one accumulator, whatever the number of updates


def test_global_norm_and_clipping():
    x = arr([3, 0], [0, 4])
    assert global_norm(x) == 5.0
    clipped, norm = clip_by_global_norm(x, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped[0], [0.6, 0])
    np.testing.assert_allclose(clipped[1], [[0, 0.8]])
    same, _ = clip_by_global_norm(x, 10.0)
    assert same[0] is x[0]


def test_clipped_mean_composes_clip_then_mean():
    agg = mean_factory(SPECS, clip_norm=1.0)
    assert isinstance(agg, Clipped)
    agg.accumulate(arr([3, 0], [0, 4]), 1)  # clipped to norm 1
    agg.accumulate(arr([0.5, 0], [0, 0]), 1)  # untouched
    res = agg.result()
    np.testing.assert_allclose(res.value[0], [0.55, 0], rtol=1e-6)
    assert res.measurements["clipped"] == 1


def test_uniform_weighting_gives_every_update_weight_one_through_the_strategy():
    updates = [(arr([1, 2], [3, 4]), 1.0), (arr([5, 6], [7, 8]), 3.0)]
    means = {}
    for weighting in ("examples", "uniform"):
        agg = make_strategy(StrategyConfig(weighting=weighting, clip_norm=100.0)).aggregator(
            SPECS)
        for u, w in updates:
            agg.accumulate(u, w)
        means[weighting] = agg.result().value
    np.testing.assert_array_equal(means["examples"][0], [4, 5])
    np.testing.assert_array_equal(means["uniform"][0], [3, 4])  # (1 + 5) / 2, (2 + 6) / 2
    np.testing.assert_array_equal(means["uniform"][1], [[5, 6]])
    with pytest.raises(ConfigError, match="weighting"):
        StrategyConfig(weighting="by_size")


def test_every_stage_reports_its_measurements_and_wrappers_merge_them():
    agg = mean_factory(SPECS, clip_norm=2.0)
    agg.accumulate(arr([3, 0], [0, 4]), 1)  # norm 5: clipped
    agg.accumulate(arr([0, 0], [0, 1]), 2)  # norm 1: untouched
    agg.accumulate(arr([0, 2], [0, 0]), 1)  # norm 2 exactly: not clipped
    res = agg.result()
    assert res.measurements == {"count": 3, "total_weight": 4.0, "clipped": 1,
                                "update_norm_mean": 8 / 3, "update_norm_max": 5.0}
    plain = mean_factory(SPECS)  # no clipping: the norms are still measured
    plain.accumulate(arr([3, 0], [0, 4]), 1)
    assert plain.result().measurements == {"count": 1, "total_weight": 1.0,
                                           "update_norm_mean": 5.0, "update_norm_max": 5.0}
    empty = WeightedMean(SPECS).result()
    assert empty.value is None and empty.measurements == {"count": 0, "total_weight": 0.0}


def test_the_strategy_interface_refuses_an_incomplete_subclass():
    class NoStep(Strategy):  # configure and aggregator, but no aggregate / state
        name = "nostep"

        def configure(self, kind, batch_size):
            return FedAvg(self.cfg).configure(kind, batch_size)

        def aggregator(self, specs):
            return WeightedMean(specs)

    with pytest.raises(TypeError, match="abstract"):
        NoStep(StrategyConfig())
    assert issubclass(FedAdam, Strategy) and set(STRATEGIES) == {"fedavg", "fedavgm",
                                                                 "fedadam", "dpftrl"}
    with pytest.raises(ConfigError, match="fedavg, fedavgm, fedadam, dpftrl"):
        StrategyConfig(name="nostep")  # the config knows the registry's names only


def test_scalar_means_are_weighted():
    s = ScalarMeans()
    s.accumulate({"loss": 1.0, "top1": 0.5}, 1)
    s.accumulate({"loss": 3.0}, 3)
    assert s.result() == {"loss": 2.5, "top1": 0.5}


@pytest.mark.parametrize(("update", "reason"), [
    (arr([1, 2], [3, 4])[:1], "bad_shape"),
    ([np.zeros(3, np.float32), np.zeros((1, 2), np.float32)], "bad_shape"),
    ([np.zeros(2, np.float64), np.zeros((1, 2), np.float32)], "bad_dtype"),
    (arr([1, np.nan], [3, 4]), "non_finite"),
    (arr([1, 2], [np.inf, 4]), "non_finite"),
])
def test_an_update_that_does_not_fit_gets_its_api_code(update, reason):
    """The contract's check names the reason; the server's API code for it is unchanged."""
    with pytest.raises(WeightsError) as e:
        check_weights(SPECS, update)
    assert UPDATE_ERROR_CODES[e.value.reason] == reason


def test_fedavg_adds_server_lr_times_mean_delta():
    x = arr([1, 1], [1, 1])
    s = FedAvg(StrategyConfig(server_lr=0.5))
    new = s.aggregate(x, AggregateResult(arr([2, 4], [6, 8])))
    np.testing.assert_array_equal(new[0], [2, 3])
    np.testing.assert_array_equal(new[1], [[4, 5]])
    assert s.state() == []


def test_server_lr_decays_by_cosine_to_a_tenth_and_stays():
    lr = [scheduled_lr(1.0, 5, v) for v in range(1, 8)]
    np.testing.assert_allclose(lr, [1.0, 0.8682, 0.55, 0.2318, 0.1, 0.1, 0.1], atol=1e-4)
    assert scheduled_lr(0.7, 0, 150) == 0.7  # no schedule
    s = FedAvg(StrategyConfig(server_lr=1.0, decay_rounds=5))
    x, d = [np.zeros(1, np.float32)], [np.ones(1, np.float32)]
    assert s.aggregate(x, AggregateResult(d), version=3)[0][0] == pytest.approx(0.55)
    with pytest.raises(ConfigError):
        StrategyConfig(decay_rounds=-1)


def test_fedavgm_nesterov_and_heavy_ball_exactly():
    x, d = [np.zeros(1, np.float32)], [np.ones(1, np.float32)]
    nest = FedAvgM(StrategyConfig(name="fedavgm", momentum=0.5, nesterov=True))
    x1 = nest.aggregate(x, AggregateResult(d))  # v=1, step = 0.5*1 + 1 = 1.5
    x2 = nest.aggregate(x1, AggregateResult(d))  # v=1.5, step = 0.75 + 1 = 1.75
    assert x1[0][0] == 1.5 and x2[0][0] == 3.25
    heavy = FedAvgM(StrategyConfig(name="fedavgm", momentum=0.5, nesterov=False))
    y2 = heavy.aggregate(heavy.aggregate(x, AggregateResult(d)), AggregateResult(d))  # steps 1, 1.5
    assert y2[0][0] == 2.5
    restored = FedAvgM(StrategyConfig(name="fedavgm", momentum=0.5))
    restored.load_state(nest.state())
    mean = AggregateResult(d)
    assert restored.aggregate(x2, mean)[0][0] == nest.aggregate(x2, mean)[0][0]


def test_fedadam_follows_reddi_et_al():
    x, d = [np.zeros(2, np.float32)], [np.array([0.1, -0.2], np.float32)]
    cfg = StrategyConfig(name="fedadam", server_lr=0.01, beta1=0.9, beta2=0.99, tau=1e-3)
    s = FedAdam(cfg)
    new = s.aggregate(x, AggregateResult(d))
    m = 0.1 * d[0]
    v = 0.01 * d[0] ** 2
    np.testing.assert_allclose(new[0], 0.01 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)
    assert len(s.state()) == 2
    _, m2, v2 = adam_step(new, d, *[[a] for a in s.state()], 0.01, 0.9, 0.99, 1e-3)
    np.testing.assert_allclose(m2[0], 0.9 * m + 0.1 * d[0], rtol=1e-6)
    np.testing.assert_allclose(v2[0], 0.99 * v + 0.01 * d[0] ** 2, rtol=1e-6)


def test_make_strategy_and_plan():
    s = make_strategy(StrategyConfig(name="fedavgm"),
                      ClientConfig(lr=0.1, epochs=2, max_steps=7))
    assert s.name == "fedavgm"
    plan = s.configure("evaluate", 16)
    assert (plan.kind, plan.lr, plan.batch_size, plan.epochs, plan.max_steps) == (
        "evaluate", 0.1, 16, 2, 7)


def test_round_config_derived_counts():
    rc = RoundConfig(report_goal=10, overselect=1.3, min_fraction=0.8)
    assert rc.target(10) == 13 and rc.min_reports(10) == 8
    assert RoundConfig().overselect == 1.3


@pytest.mark.parametrize("bad", [{"overselect": 0.5}, {"min_fraction": 0}, {"report_goal": 0}])
def test_round_config_refuses_nonsense(bad):
    with pytest.raises(ConfigError):
        RoundConfig(**bad)


def test_load_config_from_toml_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('port = 9\n[round]\nreport_goal = 3\n[strategy]\nname = "fedadam"\n')
    cfg = load_config(f, port=10, max_rounds=4)
    assert cfg.port == 10 and cfg.round.report_goal == 3 and cfg.round.max_rounds == 4
    assert cfg.strategy.name == "fedadam"
    f.write_text('[round]\nreport_gaol = 3\n')
    with pytest.raises(ConfigError, match="report_gaol"):
        load_config(f)


def test_global_norm64_is_the_true_norm_fast_path_and_overflow_path():
    from fedkb.server.aggregate import global_norm, global_norm64

    rng = np.random.default_rng(0)
    honest = [rng.normal(size=(300, 70)).astype(np.float32), rng.normal(size=70).astype(np.float32)]
    exact = float(np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in honest)))
    assert global_norm64(honest) == pytest.approx(exact, rel=1e-6)
    # 1e20 squares to inf in float32: the float32 norm overflows, the float64 one does not
    huge = [np.full((200_000,), 1e20, np.float32), np.ones(3, np.float32)]
    assert not np.isfinite(global_norm(huge))
    want = float(np.sqrt(200_000 * np.float64(np.float32(1e20)) ** 2 + 3))
    assert global_norm64(huge) == pytest.approx(want, rel=1e-9)
