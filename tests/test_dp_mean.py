"""DP-FedAvg's aggregation stages: exact math at z = 0, the noise's std, adaptive
clipping's direction, the phone's clip, and the fast ε ledger against dp-accounting."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedkb.clipping import clip_update, global_norm
from fedkb.server.privacy.accounting import RoundEvent, epsilon
from fedkb.server.privacy.adaptive_clip import AdaptiveClip
from fedkb.server.privacy.dp_mean import ClippedSum, GaussianMean
from fedkb.server.privacy.ledger import EpsilonLedger
from fedkb.weights import WeightSpec

SPECS = [WeightSpec("a", (3, 2)), WeightSpec("b", (4,))]


class Seeded:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, std, shape):
        return self.rng.normal(0.0, std, size=shape)


def updates(norms: list[float], seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in norms:
        arrays = [rng.normal(size=s.shape).astype(np.float32) for s in SPECS]
        k = n / global_norm(arrays)
        out.append([(a * k).astype(np.float32) for a in arrays])
    return out


def test_phone_clip_scales_long_updates_and_reports_the_bit():
    long, short = updates([5.0, 0.5])
    clipped, bit, norm = clip_update(long, 2.0)
    assert not bit and norm == pytest.approx(5.0, rel=1e-5)
    assert global_norm(clipped) == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(clipped[0], long[0] * 0.4, rtol=1e-6)
    same, bit, _ = clip_update(short, 2.0)
    assert bit and all(a is b for a, b in zip(same, short, strict=True))
    with pytest.raises(ValueError):
        clip_update(short, 0.0)


def test_zero_noise_mean_is_the_unweighted_clipped_sum_over_the_report_goal():
    ups = updates([0.5, 3.0, 1.0])
    inner = ClippedSum(SPECS, clip=1.0, denominator=4)
    agg = GaussianMean(inner, noise_std=0.0, source=Seeded(0))
    for u, n in zip(ups, (1, 1000, 7), strict=True):  # num_examples must not matter
        agg.accumulate(u, float(n))
    res = agg.result()
    want = [sum(clip_update(u, 1.0)[0][i].astype(np.float64) for u in ups) / 4
            for i in range(len(SPECS))]
    for got, w in zip(res.value, want, strict=True):
        np.testing.assert_allclose(got, w, atol=1e-7)
    m = res.measurements
    assert (m["count"], m["denominator"], m["clip"], m["noise_std"]) == (3, 4, 1.0, 0.0)
    assert m["over_clip"] == 1  # the server saw one update over C and clipped it
    assert "update_norm_mean" not in m and "clipped" not in m  # private: never reported
    assert agg.result() is res  # the noise is drawn once


def test_noise_std_of_the_mean_is_z_c_over_m_within_five_percent():
    z, c, m = 1.3, 0.7, 5
    draws = []
    source = Seeded(7)
    ups = updates([0.3, 2.0, 0.1])
    for _ in range(1000):
        agg = GaussianMean(ClippedSum(SPECS, c, m), z * c, source)
        for u in ups:
            agg.accumulate_report(u, None)
        noise_free = GaussianMean(ClippedSum(SPECS, c, m), 0.0, source)
        for u in ups:
            noise_free.accumulate_report(u, None)
        draws.append(np.concatenate([(a - b).ravel() for a, b in zip(
            agg.result().value, noise_free.result().value, strict=True)]))
    std = float(np.std(np.concatenate(draws)))
    assert std == pytest.approx(z * c / m, rel=0.05)
    assert agg.result().measurements["mean_noise_std"] == pytest.approx(z * c / m)


def test_phone_bits_drive_the_adaptive_clip_and_too_many_clipped_grows_it():
    adaptive = AdaptiveClip(clip=1.0, noise_multiplier=0.0, expected_clients=4)
    agg = GaussianMean(ClippedSum(SPECS, 1.0, 4), 0.0, Seeded(0), adaptive)
    for u in updates([0.99, 0.99, 0.99, 0.99]):  # each phone says it had to clip
        agg.accumulate_report(u, False)
    m = agg.result().measurements
    assert m["noisy_unclipped_fraction"] == 0.0
    assert m["next_clip"] == pytest.approx(math.exp(0.2 * 0.5)) and m["next_clip"] > 1.0
    agg = GaussianMean(ClippedSum(SPECS, 1.0, 4), 0.0, Seeded(0), adaptive)
    for u in updates([0.1] * 4):
        agg.accumulate_report(u, True)
    assert agg.result().measurements["next_clip"] < 1.0
    # a phone that says "unclipped" but sent more than C is clipped and counted as clipped
    agg = GaussianMean(ClippedSum(SPECS, 1.0, 2), 0.0, Seeded(0), adaptive)
    for u in updates([5.0, 5.0]):
        agg.accumulate_report(u, True)
    m = agg.result().measurements
    assert m["over_clip"] == 2 and m["noisy_unclipped_fraction"] == 0.0


def test_nothing_folded_releases_nothing():
    res = GaussianMean(ClippedSum(SPECS, 1.0, 3), 1.0, Seeded(0)).result()
    assert res.value is None and res.measurements["count"] == 0


@pytest.mark.parametrize("z", [1.1])
def test_ledger_epsilon_matches_dp_accounting_called_directly(z):
    n, m, rounds, delta = 500, 20, 30, 1e-6
    events = [RoundEvent("fixed", z, 1.0, population=n, clients_per_round=m)] * rounds
    direct = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE).compose(
        dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(
            z / 2)), rounds).get_epsilon(delta)
    ledger = EpsilonLedger()
    assert ledger.spent(events, delta).epsilon == pytest.approx(direct, rel=1e-9)
    assert ledger.spent(events, delta).epsilon == pytest.approx(
        epsilon(events, delta).epsilon, rel=1e-9)
    mixed = events[:10] + [RoundEvent("fixed", 2 * z, 1.0, population=n,
                                      clients_per_round=m)] * 5
    assert ledger.spent(mixed, delta).epsilon == pytest.approx(
        epsilon(mixed, delta).epsilon, rel=1e-9)
    assert math.isinf(ledger.spent([RoundEvent("fixed", 0.0, 1.0, population=n,
                                               clients_per_round=m)], delta).epsilon)


def test_norm_of_huge_float32_values_does_not_overflow():
    big = [np.full((4,), 1e20, np.float32)]
    assert global_norm(big) == pytest.approx(2e20, rel=1e-6)
    clipped, bit, _ = clip_update(big, 1.0)
    assert not bit and global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
