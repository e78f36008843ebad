"""Quantile-adaptive clipping (Andrew et al. 2021): the direction of the update, the
noise split, TF Privacy's count semantics, and TF Privacy's own trajectory."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedkb.server.privacy.adaptive_clip import (
    AdaptiveClip,
    next_clip,
    noisy_unclipped_fraction,
    split_noise,
    unclipped,
)
from fedkb.server.privacy.errors import PrivacyConfigError


class Seeded:
    """A reproducible normal source for tests (the server's is crypto-seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, std, shape):
        return self.rng.normal(0.0, std, size=shape)


def test_too_many_clipped_grows_the_clip_too_few_shrinks_it():
    state = AdaptiveClip(clip=1.0, noise_multiplier=0.0, expected_clients=10)
    grown, m = state.step([5.0] * 10, noise=False)  # every update clipped: b~ = 0
    assert m["noisy_unclipped_fraction"] == 0.0
    assert grown.clip == pytest.approx(math.exp(0.2 * 0.5)) and grown.clip > 1.0
    shrunk, m = state.step([0.1] * 10, noise=False)  # none clipped: b~ = 1
    assert shrunk.clip == pytest.approx(math.exp(-0.2 * 0.5)) and shrunk.clip < 1.0
    # exactly at the target quantile the clip stays
    assert next_clip(2.0, 0.5, 0.5, 0.2) == 2.0
    # with the count noise on (sigma_b = m/20), the direction still holds every round
    state = AdaptiveClip(clip=1.0, noise_multiplier=1.0, expected_clients=100)
    source = Seeded(1)
    for _ in range(30):
        new, _ = state.step([1e6] * 100, source=source)
        assert new.clip > state.clip
        state = new


def test_clip_settles_at_the_target_quantile():
    rng = np.random.default_rng(0)
    state = AdaptiveClip(clip=0.01, noise_multiplier=1.0, expected_clients=200)
    source = Seeded(2)
    for _ in range(150):
        state, _ = state.step(rng.lognormal(0.0, 0.5, size=200), source=source)
    # the median of lognormal(0, 0.5) is 1
    assert 0.85 < state.clip < 1.15


def test_count_uses_the_expected_denominator_and_the_half_offset():
    # 8 devices came of 10 expected, all unclipped: TF Privacy's shifted count gives
    # (8 * 0.5) / 10 + 0.5 = 0.9, not 8 / 10
    assert noisy_unclipped_fraction(np.ones(8), 10, 0.0, None) == pytest.approx(0.9)
    assert noisy_unclipped_fraction(np.zeros(8), 10, 0.0, None) == pytest.approx(0.1)
    assert noisy_unclipped_fraction(np.ones(30), 10, 0.0, None) == 1.0  # clamped
    assert list(unclipped([0.5, 1.0, 1.5], 1.0)) == [1.0, 1.0, 0.0]  # norm <= C


def test_noise_uses_this_rounds_clip():
    state = AdaptiveClip(clip=2.0, noise_multiplier=1.0, expected_clients=100)
    new, m = state.step([10.0] * 100, noise=False)
    assert m["clip"] == 2.0 and new.clip > 2.0
    assert m["sum_noise_std"] == pytest.approx(state.sum_noise_multiplier * 2.0)


def test_noise_split_keeps_the_total_multiplier():
    z, sigma_b = 1.0, 5.0  # m = 100
    z_sum = split_noise(z, sigma_b)
    assert z_sum == pytest.approx((1 - 1 / 100) ** -0.5)
    rel = dp_accounting.NeighboringRelation
    # add/remove: count sensitivity 0.5 -> multiplier 2*sigma_b; the pair is one z
    pair = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z_sum),
                                          dp_accounting.GaussianDpEvent(2 * sigma_b)])
    one = dp_accounting.GaussianDpEvent(z)
    eps = [rdp.RdpAccountant().compose(dp_accounting.PoissonSampledDpEvent(0.05, e), 50)
           .get_epsilon(1e-5) for e in (pair, one)]
    assert eps[0] == pytest.approx(eps[1], rel=1e-9)
    # replace-one: sensitivities 2C and 1 -> z_sum/2 and sigma_b; the pair is one z/2
    pair = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z_sum / 2),
                                          dp_accounting.GaussianDpEvent(sigma_b)])
    eps = [rdp.RdpAccountant(neighboring_relation=rel.REPLACE_ONE).compose(
        dp_accounting.SampledWithoutReplacementDpEvent(1000, 100, e), 50).get_epsilon(1e-5)
        for e in (pair, dp_accounting.GaussianDpEvent(z / 2))]
    assert eps[0] == pytest.approx(eps[1], rel=1e-9)


def test_impossible_splits_are_refused():
    assert split_noise(1.99, 1.0) > 0
    with pytest.raises(PrivacyConfigError, match="2 x count std"):
        split_noise(2.0, 1.0)
    with pytest.raises(PrivacyConfigError):
        AdaptiveClip(clip=1.0, noise_multiplier=1.0, expected_clients=10)  # m <= 10 z
    with pytest.raises(PrivacyConfigError):
        split_noise(1.0, 0.0)  # a noise-free count under a private z
    with pytest.raises(PrivacyConfigError):
        AdaptiveClip(clip=0.0, noise_multiplier=0.0, expected_clients=10)
    assert split_noise(0.0, 0.0) == 0.0


@pytest.mark.slow
def test_trajectory_equals_tf_privacy_quantile_adaptive_clip_sum_query():
    tf = pytest.importorskip("tensorflow")
    qmod = pytest.importorskip(
        "tensorflow_privacy.privacy.dp_query.quantile_adaptive_clip_sum_query")
    expected = 20
    query = qmod.QuantileAdaptiveClipSumQuery(
        initial_l2_norm_clip=1.0, noise_multiplier=0.0, target_unclipped_quantile=0.5,
        learning_rate=0.2, clipped_count_stddev=0.0, expected_num_records=expected,
        geometric_update=True)
    global_state = query.initial_global_state()
    ours = AdaptiveClip(clip=1.0, noise_multiplier=0.0, expected_clients=expected)
    rng = np.random.default_rng(3)
    moved = set()
    for t in range(10):
        n = [20, 17, 23][t % 3]  # devices that came: not always the expected number
        norms = rng.lognormal(0.3, 0.6, size=n)
        assert np.min(np.abs(norms - ours.clip)) > 1e-4 * ours.clip  # no float32 ties
        params = query.derive_sample_params(global_state)
        sample = query.initial_sample_state(tf.zeros([2], tf.float32))
        for x in norms:
            sample = query.accumulate_record(params, sample, tf.constant([x, 0.0], tf.float32))
        _, global_state, _ = query.get_noised_result(sample, global_state)
        before = ours.clip
        ours, _ = ours.step(norms, noise=False)
        moved.add(np.sign(ours.clip - before))
        assert float(global_state.sum_state.l2_norm_clip) == pytest.approx(
            ours.clip, rel=1e-6, abs=1e-6), f"round {t}"
    assert moved == {-1.0, 1.0}  # the trajectory went both ways
