"""Distributed DP (fedkb.secagg.distributed_dp): each phone adds discrete Gaussian noise
to its field-encoded update; the server unmasks an already noised sum and adds none.

The claims pinned here: the sampler is a discrete Gaussian; the field decodes a noised
(possibly negative) sum exactly and still refuses one that cannot be honest; the noise
is isotropic in float units with the std the accounting assumes; the rounding bound
behind the sensitivity holds; the server's unmasked sum differs from the noise-free sum
by exactly the phones' noise, which the server did not add; dropouts never take the
recorded multiplier below the target; τ is added to ε."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from secagg_http_support import CLIP, SecureHarness, phone_delta, secure_harness

from fedkb.clipping import clip_update
from fedkb.compression import field
from fedkb.compression.quantize import shared_grid
from fedkb.secagg import distributed_dp as ddp
from fedkb.secagg.update_codec import UpdateLayout, as_residues, decode_sum, encode_codes
from fedkb.server.config import ConfigError, PrivacyConfig, SecAggConfig
from fedkb.server.privacy.accounting import FIXED, RoundEvent, epsilon
from fedkb.server.privacy.distributed import PhonesNoise, PhonesNoisedSum
from fedkb.server.privacy.dp_mean import ClippedSum
from fedkb.server.privacy.errors import PrivacyConfigError
from fedkb.server.privacy.ledger import EpsilonLedger
from fedkb.weights import WeightSpec

SHAPES = ((64, 64), (64, 64), (200,))


def _pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    xs = np.arange(-int(12 * sigma) - 2, int(12 * sigma) + 3)
    norm = np.exp(-xs.astype(float) ** 2 / (2 * sigma ** 2)).sum()
    return np.exp(-support.astype(float) ** 2 / (2 * sigma ** 2)) / norm


@pytest.mark.parametrize("sigma", [0.7, 2.5, 40.0])
def test_the_sampler_draws_a_discrete_gaussian(sigma):
    x = ddp.discrete_gaussian(np.full(200_000, sigma), np.random.default_rng(1))
    assert x.dtype == np.int64
    # chi-square against the exact pmf over the central values (the tails pooled)
    edges = np.arange(-int(2 * sigma) - 1, int(2 * sigma) + 2)
    observed = np.array([(x == v).sum() for v in edges], dtype=float)
    expected = _pmf(sigma, edges) * x.size
    keep = expected > 20
    chi2 = float((((observed - expected) ** 2 / expected)[keep]).sum())
    dof = int(keep.sum())
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)  # a gross mismatch fails
    assert abs(x.mean()) < 5 * sigma / math.sqrt(x.size) + 1e-3


def test_the_sampler_gives_zero_for_zero_std_and_refuses_a_negative_one():
    rng = np.random.default_rng(0)
    assert not ddp.discrete_gaussian(np.zeros(10), rng).any()
    with pytest.raises(ValueError):
        ddp.discrete_gaussian(np.array([1.0, -1.0]), rng)


@pytest.mark.parametrize("scale", [1, 4])
def test_a_noised_sum_decodes_exactly_and_negative_residues_are_read_as_negative(scale):
    grid = shared_grid(1000, 8, np.full(1, 1.0), 1000)
    n, margin = 5, 3000 * scale
    k = field.modulus_bits(8, n, margin, scale)
    assert k > field.modulus_bits(8, n)  # the margin (and the scale) cost bits
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, size=(n, 1000))
    noise = rng.integers(-500 * scale, 500 * scale + 1, size=(n, 1000))
    noise[:, 0] = -600 * scale  # the sum's first coordinate: far below 0
    exact = (codes * scale + noise).sum(axis=0)
    total = np.mod(exact, 1 << k).astype(field.residue_dtype(k))
    got = field.decode_sum(total, n, grid, k, margin, scale)
    want = n * grid.offset[0] + exact * (float(grid.scale[0]) / scale)
    assert np.allclose(got, want, atol=1e-4)
    assert exact[0] < 0
    # a residue between n L S + margin and 2^k - margin is no honest noised sum
    bad = total.copy()
    bad[7] = n * 255 * scale + margin + 1
    with pytest.raises(field.FieldOverflowError):
        field.decode_sum(bad, n, grid, k, margin, scale)
    with pytest.raises(field.FieldOverflowError):  # a modulus without room for the margin
        field.decode_sum(total.astype(field.residue_dtype(k - 1)) % (1 << (k - 1)), n,
                         grid, k - 1, margin, scale)


def _layout(noise_std: float = 0.0, bits: int = 8) -> UpdateLayout:
    return UpdateLayout(SHAPES, bits, CLIP, 1234, noise_std=noise_std)


def test_the_noise_is_isotropic_in_float_units_with_the_std_each_phone_owes():
    lay = _layout(noise_std=0.05)
    noise = lay.noise(np.random.default_rng(5))
    start = 0
    for g in lay.grids:  # grid units x the chunk's step: float units
        part = noise[start:start + g.n].astype(np.float64)
        start += g.n
        steps = np.repeat(g.scale.astype(np.float64), g.chunk)[:g.n]
        assert abs((part * steps).std() / 0.05 - 1) < 0.05
    # the chunks differ in step, so the grid-unit stds differ
    assert len({round(float(s.max()), 3) for s in lay.lattice}) > 1


def test_the_sensitivity_bounds_the_norm_of_every_rounded_update():
    lay = _layout()
    assert lay.sensitivity > CLIP
    rng = np.random.default_rng(7)
    for i in range(20):  # updates at the clip, far beyond it, and small ones
        delta = phone_delta(i, scale=[0.01, 0.3, 3.0][i % 3])
        enc = encode_codes(delta, lay, rng)
        back = decode_sum(as_residues(enc.codes, lay.modulus_bits(1)), 1,
                          lay.modulus_bits(1), lay)
        norm = math.sqrt(sum(float(np.sum(b.astype(np.float64) ** 2)) for b in back))
        assert norm <= lay.sensitivity * (1 + 1e-5)
        clipped = clip_update(delta, CLIP)[0]
        err = math.sqrt(sum(float(np.sum((b - c).astype(np.float64) ** 2))
                            for b, c in zip(back, clipped, strict=True)))
        assert err <= lay.sensitivity - CLIP + 1e-4  # the rounding, within its bound


def test_tau_is_prop_14s_sum_and_vanishes_at_the_stds_a_dp_round_uses():
    counts = (np.array([3, 2]),)
    lattice = (np.array([0.5, 1.0]),)
    want = 10 * sum(c * sum(math.exp(-2 * math.pi ** 2 * s ** 2 * k / (k + 1))
                            for k in range(1, 4)) for s, c in zip([0.5, 1.0], [3, 2], strict=True))
    assert ddp.tau(lattice, counts, 4) == pytest.approx(want, rel=1e-12)
    assert ddp.tau(lattice, counts, 1) == 0.0
    lay = _layout(noise_std=1.0 * _layout().sensitivity / math.sqrt(3))  # z = 1, floor 3
    assert 0 <= lay.tau(5) < 1e-12


def test_tau_is_added_to_epsilon_by_both_accountants():
    ev = RoundEvent(FIXED, 1.0, 1.0, population=100, clients_per_round=10)
    noisy = dataclasses.replace(ev, discrete_tau=0.01)
    base = epsilon([ev] * 3, 1e-5)
    with_tau = epsilon([noisy] * 3, 1e-5)
    assert with_tau.epsilon == pytest.approx(base.epsilon + 0.03, rel=1e-9)
    assert "discrete tau" in with_tau.accountant
    assert EpsilonLedger().spent([noisy] * 3, 1e-5).epsilon == pytest.approx(
        with_tau.epsilon, rel=1e-6)
    with pytest.raises(PrivacyConfigError):
        RoundEvent("tree", 1.0, 1.0, tree=0, min_separation=1, discrete_tau=0.1)


def test_the_stage_adds_no_noise_and_records_what_the_survivors_reached():
    specs = [WeightSpec("w", (3,))]
    event = RoundEvent(FIXED, 1.0, 2.0, population=50, clients_per_round=5)
    stage = PhonesNoisedSum(ClippedSum(specs, 2.0, 5, event), 1.0)
    with pytest.raises(PrivacyConfigError):  # an individual update: not distributed DP
        stage.accumulate([np.zeros(3, np.float32)], 1.0)
    with pytest.raises(PrivacyConfigError):  # the phones' noise fell short of the target
        stage.accumulate_noised_sum([np.ones(3)], PhonesNoise(1.0, 2.0, 0.0, 3), [True] * 3)
    assert stage.event == event  # before the sum: the target, as the budget counts it
    total = [np.array([1.0, -2.0, 3.0])]
    stage.accumulate_noised_sum(total, PhonesNoise(2.0 * 1.23456, 2.0, 1e-12, 4), [True] * 4)
    res = stage.result()
    assert np.array_equal(res.value[0], (total[0] / 5).astype(np.float32))  # no server noise
    assert res.measurements["noise_placement"] == "phones"
    ev = stage.event
    assert ev.noise_multiplier == 1.23 and ev.clip == 2.0 and ev.discrete_tau == 1e-12
    assert ddp.multiplier_floor(0.98765) == 0.987


def test_distributed_dp_needs_fedavg_a_fixed_clip_and_secagg(tmp_path):
    with pytest.raises(ConfigError, match="fixed clip"):
        PrivacyConfig(mechanism="fedavg", adaptive=True, distributed=True)
    with pytest.raises(ConfigError, match="fixed clip"):
        PrivacyConfig(mechanism="ftrl", distributed=True)
    from server_support import make_config

    from fedkb.server.config import CompressionConfig
    cfg = make_config(tmp_path, model=False)
    with pytest.raises(ConfigError, match="needs \\[secagg\\]"):
        cfg.replace(privacy=PrivacyConfig(mechanism="fedavg", distributed=True),
                    compression=CompressionConfig(uplink="q8"),
                    secagg=SecAggConfig(enabled=False))


def test_the_cli_flag_reaches_the_privacy_table():
    import argparse

    from fedkb.errors import UserError
    from fedkb.simulation.dp_flags import add_dp_arguments, privacy_config
    p = argparse.ArgumentParser()
    add_dp_arguments(p)
    assert privacy_config(p.parse_args(["--dp", "fedavg", "--dp-distributed"])).distributed
    with pytest.raises(UserError, match="needs --dp"):
        privacy_config(p.parse_args(["--dp-distributed"]))


# -- through the real server and the real phone code ------------------------------------

N = 5  # t = 3 = min_reports: each phone owes 1/3 of the target variance
Z = 1.0


def _distributed_round(tmp_path, drop=None, z=Z):
    h = secure_harness(tmp_path, N, privacy=PrivacyConfig(
        mechanism="fedavg", noise_multiplier=z, clip=CLIP, population=10, distributed=True),
        pipeline=False)
    before = h.global_weights()
    sh = SecureHarness(h, N)
    sh.run(drop=drop)
    assert sh.round.state == "committed", sh.round.reason
    return h, sh, before


@pytest.mark.parametrize("z", [Z, 0.001])
def test_the_server_unmasks_a_noised_sum_and_adds_no_noise_of_its_own(tmp_path, z):
    h, sh, before = _distributed_round(tmp_path, z=z)
    sec = sh.round.secure
    lay = sec.layout
    assert lay.noise_std == pytest.approx(z * lay.sensitivity / math.sqrt(3))
    # a small noise goes on a finer lattice: at least MIN_LATTICE_STD units a phone
    assert (lay.noise_scale > 1) == (z < Z)
    assert min(float(s.min()) for s in lay.lattice) >= ddp.MIN_LATTICE_STD
    assert lay.tau(N) < 1e-20
    assert sec.params.k == lay.modulus_bits(N) > field.modulus_bits(8, N)
    # what the server holds (the unmasked sum) against the noise-free sum of the phones'
    # codes: the difference is the phones' noise, at the std the accounting assumes
    k = sec.params.k
    plain = decode_sum(field.sum_mod([as_residues(sh.codes(i), k, None, lay.noise_scale)
                                      for i in range(N)], k), N, k, lay, N)
    held = decode_sum(sec.result.total, N, sec.params.k, lay, N)
    diff = np.concatenate([(a - b).ravel() for a, b in zip(held, plain, strict=True)])
    assert abs(diff.std() / (lay.noise_std * math.sqrt(N)) - 1) < 0.05
    # the committed mean is that noised sum over m, exactly: the server added nothing
    after = h.global_weights()
    for a, b, s in zip(before, after, held, strict=True):
        assert np.allclose(b - a, s / N, atol=1e-6)
    r = h.client.get(f"/v1/rounds/{sh.round_id}").get_json()
    assert r["measurements"]["noise_placement"] == "phones"
    ev = r["privacy"]["event"]
    assert ev["noise_multiplier"] >= z and ev["clip"] == pytest.approx(lay.sensitivity)
    assert "discrete_tau" in ev and r["privacy"]["epsilon"] is not None
    status = h.client.get("/v1/status").get_json()["privacy"]
    assert status["noise_placement"] == "phones"
    # nor does a phone tell the server its clip bit or how many values left the grid
    masked = [d for _, d in sh.transport.sent if d["message"]["type"] == "masked_input"]
    assert len(masked) == N
    assert all(d.get("unclipped") is None and not d.get("clipped_values") for d in masked)


def test_dropouts_never_take_the_recorded_noise_below_the_target(tmp_path):
    # two phones gone before their masked input: 3 summands, the floor the noise was
    # sized for, so the round reaches exactly z (rounded down); with 5 it reaches more
    _, sh, _ = _distributed_round(tmp_path / "a", drop={"masked_input": {3, 4}})
    assert sh.round.secure.result.n_summands == 3
    ev = sh.round.stats.privacy["event"]
    assert Z * 0.999 <= ev["noise_multiplier"] <= Z
    _, full, _ = _distributed_round(tmp_path / "b")
    z5 = full.round.stats.privacy["event"]["noise_multiplier"]
    assert z5 == pytest.approx(Z * math.sqrt(5 / 3), rel=1e-2) and z5 <= Z * math.sqrt(5 / 3)


def test_central_dp_on_a_secure_sum_is_calibrated_to_the_rounded_bound_too(tmp_path):
    """Without --dp-distributed the server noises the unmasked sum: at z·Δ, not z·C (a
    rounded update's norm can exceed C), and the event records Δ."""
    h = secure_harness(tmp_path, N, privacy=PrivacyConfig(
        mechanism="fedavg", noise_multiplier=Z, clip=CLIP, population=10), pipeline=False)
    sh = SecureHarness(h, N)
    sh.run()
    assert sh.round.state == "committed", sh.round.reason
    lay = sh.round.secure.layout
    assert lay.noise_std == 0  # the phones add nothing
    r = h.client.get(f"/v1/rounds/{sh.round_id}").get_json()
    assert r["measurements"]["noise_std"] == pytest.approx(Z * lay.sensitivity)
    assert r["privacy"]["event"]["clip"] == pytest.approx(lay.sensitivity)
    assert r["privacy"]["event"]["noise_multiplier"] == Z


@pytest.mark.parametrize("field_, value", [("noise_std", -1.0), ("noise_scale", 3),
                                           ("noise_scale", 0), ("noise_scale", 1 << 17)])
def test_a_setup_with_an_impossible_noise_is_refused_on_the_wire(field_, value):
    from fedkb import wire
    good = wire.SecAggSetup("r1", 1, [1, 2, 3], 2, 10, 14, noise_std=0.5, noise_scale=2)
    assert wire.SecAggSetup.from_json(good.to_json()) == good
    with pytest.raises(wire.WireError):
        wire.SecAggSetup.from_json({**good.to_json(), field_: value})


def test_a_phone_refuses_a_modulus_too_small_for_the_noise(tmp_path):
    """A server that under-sizes k would let the noised sum wrap: the phone checks it."""
    h = secure_harness(tmp_path, N, privacy=PrivacyConfig(
        mechanism="fedavg", noise_multiplier=Z, clip=CLIP, population=10, distributed=True),
        pipeline=False)
    sh = SecureHarness(h, N)
    sec = sh.round.secure
    sh.h.clock.advance(0)
    sh.machine.tick()
    sh.step_all()  # the setups go out: shrink the round's k under what the noise needs
    assert sec.params is not None
    started = [m for m in sh.members if m.secure.phone is not None]
    assert len(started) == N
    for m in started:
        m.secure.k = field.modulus_bits(8, N)
    sh.run()
    assert all("too small for the noised sum" in m.secure.refusal for m in started)
    assert sh.round.state != "committed"
