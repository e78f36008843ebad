"""Gaussian noise from the crypto-seeded source, and DP-FTRL's tree prefix noise."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fedkb.server.privacy.errors import PrivacyConfigError
from fedkb.server.privacy.noise import NoiseSource, add_gaussian
from fedkb.server.privacy.tree import TreeNoise, nodes_in_prefix


class Seeded:
    """A reproducible normal source for tests (the server's is crypto-seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(self, std, shape):
        return self.rng.normal(0.0, std, size=shape)


def test_mean_noise_std_is_z_c_over_m():
    z, clip, m = 1.3, 0.5, 50
    source = NoiseSource()
    draws = []
    for _ in range(1000):  # 1000 rounds of a 20-coordinate sum of zeros
        noised, meas = add_gaussian([np.zeros(20, np.float32)], z * clip, source)
        draws.append(noised[0] / m)
    assert meas == {"noise_std": z * clip, "noised_coordinates": 20}
    assert np.std(np.concatenate(draws)) == pytest.approx(z * clip / m, rel=0.05)


def test_fresh_sources_never_share_a_first_draw():
    firsts = {float(NoiseSource().normal(1.0, ())) for _ in range(50)}
    assert len(firsts) == 50
    a, _ = add_gaussian([np.zeros(4)], 1.0)
    b, _ = add_gaussian([np.zeros(4)], 1.0)
    assert not np.array_equal(a[0], b[0])


def test_source_hides_its_state():
    source = NoiseSource()
    assert repr(source) == "NoiseSource(<seed hidden>)"
    with pytest.raises(TypeError):
        pickle.dumps(source)
    with pytest.raises(TypeError):
        pickle.dumps(TreeNoise([(2,)], 1.0))


def test_add_gaussian_keeps_dtype_and_inputs():
    x = [np.ones((2, 3), np.float32), np.zeros(5, np.float64)]
    out, _ = add_gaussian(x, 0.1, Seeded(0))
    assert [a.dtype for a in out] == [np.float32, np.float64]
    assert np.array_equal(x[0], np.ones((2, 3))) and not np.array_equal(out[0], x[0])
    with pytest.raises(PrivacyConfigError):
        add_gaussian(x, -1.0)
    with pytest.raises(PrivacyConfigError):
        add_gaussian([np.zeros(3, np.int32)], 1.0)


def test_prefix_noise_variance_is_popcount_times_sigma_squared():
    sigma = 0.7
    tree = TreeNoise([(20_000,)], sigma, source=Seeded(5))
    for t in range(1, 17):
        noise, meas = tree.next()
        assert meas["nodes"] == nodes_in_prefix(t) == bin(t).count("1")
        assert np.var(noise[0]) == pytest.approx(nodes_in_prefix(t) * sigma**2, rel=0.05)
    # 7 = 4+2+1 takes three nodes, 8 one: the variances differ threefold
    assert nodes_in_prefix(7) == 3 and nodes_in_prefix(8) == 1


def test_consecutive_prefixes_share_nodes():
    tree = TreeNoise([(3,)], 1.0, source=Seeded(6))
    n1, _ = tree.next()
    n2, _ = tree.next()  # the level-1 node replaces leaf 1
    n3, _ = tree.next()  # leaf 3 plus the level-1 node
    assert not np.allclose(n1[0], n2[0])
    assert np.allclose(n3[0] - n2[0], Seeded(6).normal(1.0, (3, 3))[2])


def test_restart_begins_a_fresh_tree():
    tree = TreeNoise([(2,)], 1.0, restart_every=3, source=Seeded(7))
    seen = [tree.next()[1] for _ in range(7)]
    assert [(m["tree"], m["tree_step"]) for m in seen] == [
        (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 1)]
    assert [m["nodes"] for m in seen] == [1, 1, 2, 1, 1, 2, 1]
    with pytest.raises(PrivacyConfigError):
        TreeNoise([(2,)], 1.0, restart_every=0)


@pytest.mark.slow
def test_tree_noise_equals_tf_privacy_tree_aggregator():
    tf = pytest.importorskip("tensorflow")
    agg = pytest.importorskip("tensorflow_privacy.privacy.dp_query.tree_aggregation")
    steps, restart, shape = 21, 8, (3,)
    pre = Seeded(11)
    ours_draws = [pre.normal(1.0, shape) for _ in range(steps)]  # our order: one per round
    # TF Privacy draws the next node in each update, so at a restart it draws one node
    # it never uses before the new tree's first leaf: give it a dummy there (and a
    # last one for the update after the final round)
    rows = []
    for k, d in enumerate(ours_draws):
        if k and k % restart == 0:
            rows.append(np.full(shape, np.nan))
        rows.append(d)
    rows.append(np.full(shape, np.nan))
    table = np.stack(rows).astype(np.float32)

    class Table(agg.ValueGenerator):
        """TF Privacy's nodes drawn from the same sequence as ours."""

        def initialize(self):
            return tf.constant(0)

        def next(self, state):
            return tf.gather(tf.constant(table), state), state + 1

    theirs = agg.TreeAggregator(Table())
    state = theirs.init_state()
    ours = TreeNoise([shape], 1.0, restart_every=restart, source=Seeded(11))
    for t in range(steps):
        if t and t % restart == 0:
            state = theirs.reset_state(state)
        cumsum, state = theirs.get_cumsum_and_update(state)
        noise, _ = ours.next()
        np.testing.assert_allclose(noise[0], cumsum.numpy(), rtol=1e-6, atol=1e-6)
