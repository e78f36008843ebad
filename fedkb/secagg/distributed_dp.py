"""Distributed DP: each phone adds its share of discrete Gaussian noise to its codes, so
the secure sum is already noised and the server never sees a noise-free sum.

The mechanism is the distributed discrete Gaussian of Kairouz, Liu & Steinke 2021 ("The
distributed discrete Gaussian mechanism for federated learning with secure
aggregation", https://arxiv.org/abs/2102.06387), the one TFF's
``DistributedDpSumFactory`` simulates, on fedkb's secure codec
(:mod:`fedkb.secagg.update_codec`): clip to C, rotate, round stochastically onto the
round's shared grid, then add integer noise in *grid units* and reduce mod 2^k.

**Per chunk, in grid units.** The shared grid's step differs per chunk (the radius of a
chunk is ``sigmas * C / sqrt(m)`` for its rotation block of size m), and the noise must be
isotropic in float units, so chunk j's lattice std is ``noise_std / step_j``
(:func:`lattice_std`): every coordinate then carries float noise of std ``noise_std``.

**Sensitivity** (:func:`sensitivity`). Rounding moves each coordinate by less than one
step, so a phone's rounded vector has norm at most ``C + sqrt(sum_i step_i**2)``: the
deterministic bound (Kairouz et al.'s ``c/gamma + sqrt(d)``, per chunk), with no
conditional rounding. At q8 and ``sigmas = 4`` it is ``1.157 C`` for the ``small``
model; at q4 ``3.67 C`` (distributed DP wants 8 bits).

**Accounting** (Kairouz et al., Prop. 14, first term). For n summands each adding
``N_Z(0, s_j**2)`` per coordinate of chunk j, the Rényi divergence of order α between the
noised sums of neighbouring inputs is at most ``α Δ² / (2 n σ²) + τ`` with σ the float
std and ``τ = Σ_coords 10 Σ_{k=1}^{n-1} exp(-2π² s_j² k / (k+1))`` (:func:`tau`):
the Gaussian mechanism's RDP plus a constant that is ~1e-9 at the lattice stds fedkb
uses. The round's event records the multiplier ``σ·sqrt(n)/Δ`` actually reached by the
survivors' noise and ``τ`` (:mod:`fedkb.server.privacy.accounting`).

**Noise lost to dropouts.** Each phone adds ``1 / n_floor`` of the target variance, with
``n_floor = max(t, min_reports)``: the fewest summands a round commits with. A round
whose phones drop down to the floor still carries the full noise; with more survivors it
carries more, and records that (never less than its target).

**A finer lattice for small noise** (:func:`noise_scale`). With many phones or a small z
each phone's share can fall below one grid step, where the sum of discrete Gaussians
is far from one and τ explodes. The codes are then multiplied by S (a power of two) and
the noise drawn on the S-times finer lattice, so every phone's lattice std is at least
``MIN_LATTICE_STD``: Kairouz et al.'s granularity γ, at one modulus bit per doubling.

**The field** (:func:`noise_margin`). The noised sum is no longer in ``[0, n L]``: it
can go ``TAIL`` total stds below 0 or above ``n L``. The modulus gets that margin on both
sides and :func:`fedkb.compression.field.decode_sum` reads a residue above
``2^k - margin`` as negative. The margin is ``TAIL = 12`` stds: a coordinate of the sum
lands outside it with probability ~4e-33, so a wrap is never expected in any run.

**The sampler** (:func:`discrete_gaussian`): Canonne, Kamath & Steinke 2020 (Alg. 3),
rejection from a discrete Laplace, vectorised in NumPy in floating point (as TF
Privacy's ``discrete_gaussian_utils`` is; CKS's exact arithmetic is not used). The
discrete Laplace is the difference of two geometric draws and the acceptance test
compares a third exponential draw with the exponent: three ``standard_exponential``
draws a candidate, ~0.1 s for the ``small`` model's 1.39 M coordinates. Its generator
is PCG64 seeded with 128 bits from :mod:`secrets` on the phone: not the plan's seed,
which the server knows.

NumPy only, so a phone can import it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import numpy as np

TAIL = 12.0  # the field's noise margin, in total noise stds
MIN_LATTICE_STD = 3.0  # each phone's noise std in lattice units, at least (noise_scale)
MAX_NOISE_SCALE = 1 << 16
MAX_TAU_K = 10_000  # tau's inner sum: terms beyond this are exp(-2π²s²·~1) each, summed


def noise_rng() -> np.random.Generator:
    """The phone's noise generator: 128 bits from the OS's CSPRNG, never derived from
    anything the server knows."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def discrete_gaussian(sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int64 draws, one per entry of ``sigma`` (float stds >= 0), from the discrete
    Gaussian ``P(x) ∝ exp(-x² / (2 sigma²))`` on the integers (0 where sigma is 0)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.size and (not np.all(np.isfinite(sigma)) or sigma.min() < 0):
        raise ValueError("discrete Gaussian stds must be finite and >= 0")
    out = np.zeros(sigma.shape, dtype=np.int64)
    flat = out.reshape(-1)
    s_all = sigma.reshape(-1)
    todo = np.flatnonzero(s_all > 0)
    while todo.size:
        s = s_all[todo]
        t = np.floor(s) + 1.0
        # discrete Laplace of scale t, P(y) ∝ exp(-|y|/t): the difference of two geometric
        # draws, each floor(t·E) for E ~ Exp(1) (P(floor(tE) >= k) = exp(-k/t))
        e = rng.standard_exponential((3, todo.size))
        y = np.floor(t * e[0]) - np.floor(t * e[1])
        # accept with probability exp(-(|y| - s²/t)² / (2 s²)): exactly when a third
        # Exp(1) draw exceeds the exponent (CKS 2020, Alg. 3, without an exp() call)
        keep = e[2] > (np.abs(y) - s * s / t) ** 2 / (2 * s * s)
        flat[todo[keep]] = y[keep].astype(np.int64)
        todo = todo[~keep]
    return out


def per_coordinate(values: np.ndarray, n: int, chunk: int) -> np.ndarray:
    """A per-chunk array spread over a grid's ``n`` coordinates."""
    return np.repeat(np.asarray(values, dtype=np.float64), chunk)[:n]


def lattice_std(noise_std: float, steps: np.ndarray) -> np.ndarray:
    """Per chunk, the discrete Gaussian's std in grid units that is ``noise_std`` in float
    units (``steps``: the chunks' grid steps, all > 0)."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.size and steps.min() <= 0:
        raise ValueError("grid steps must be positive for distributed noise")
    return noise_std / steps


def rounding_bound(steps: Sequence[np.ndarray], counts: Sequence[np.ndarray]) -> float:
    """``sqrt(Σ_i step_i²)``: the largest norm stochastic rounding can add to a vector
    (``counts``: coordinates per chunk)."""
    return math.sqrt(sum(float(np.dot(np.asarray(c, np.float64),
                                      np.asarray(s, np.float64) ** 2))
                         for s, c in zip(steps, counts, strict=True)))


def sensitivity(clip: float, steps: Sequence[np.ndarray], counts: Sequence[np.ndarray]) -> float:
    """Δ: the L2 norm of one phone's rounded vector in float units, at most."""
    return clip + rounding_bound(steps, counts)


def tau(lattice: Sequence[np.ndarray], counts: Sequence[np.ndarray], n_summands: int) -> float:
    """Kairouz et al. 2021 Prop. 14's τ summed over the coordinates: the constant the sum
    of ``n_summands`` discrete Gaussians adds to the Gaussian mechanism's RDP."""
    if n_summands < 2:
        return 0.0
    k = np.arange(1, min(n_summands, MAX_TAU_K + 1), dtype=np.float64)
    ratio = k / (k + 1)
    total = 0.0
    for s, c in zip(lattice, counts, strict=True):
        s2 = np.asarray(s, dtype=np.float64) ** 2
        terms = np.exp(-2 * math.pi ** 2 * np.outer(s2, ratio)).sum(axis=1)
        if n_summands - 1 > MAX_TAU_K:  # the rest: each at most exp(-2π² s² · ratio_max)
            terms += (n_summands - 1 - MAX_TAU_K) * np.exp(-2 * math.pi ** 2 * s2)
        total += 10.0 * float(np.dot(np.asarray(c, np.float64), terms))
    return total


def noise_scale(lattice_min: float) -> int:
    """S: the power of two that lifts the smallest per-phone lattice std to
    ``MIN_LATTICE_STD`` (1 if it is already there). Below ~1 lattice unit the sum of
    the phones' discrete Gaussians is far from a discrete Gaussian and τ explodes (e.g.
    1e5 for 1,000 phones of the ``small`` model at z = 0.02 on q8's own grid); at 3 it
    is ~10 n d exp(-9 π²) < 1e-28. Each doubling costs the modulus one bit."""
    if lattice_min <= 0:
        return 1
    s = 1
    while lattice_min * s < MIN_LATTICE_STD and s < MAX_NOISE_SCALE:
        s *= 2
    return s


def noise_margin(lattice_max: float, n_summands: int) -> int:
    """The field's margin for the noise of ``n_summands`` phones: TAIL total stds, in grid
    units of the chunk with the widest lattice std (0 with no noise)."""
    if lattice_max <= 0:
        return 0
    return math.ceil(TAIL * lattice_max * math.sqrt(n_summands))


def multiplier_floor(z: float) -> float:
    """``z`` rounded *down* to 3 significant digits: a realized multiplier recorded this
    way never overstates the noise, and rounds with nearly the same survivors share one
    accounting curve."""
    if z <= 0 or not math.isfinite(z):
        return 0.0
    e = math.floor(math.log10(z)) - 2
    return min(z, round(math.floor(z / 10 ** e) * 10 ** e, 12))
