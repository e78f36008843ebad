"""Quantile-adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021, "Differentially
Private Learning with Adaptive Clipping", https://arxiv.org/abs/1905.03871), with the
semantics of TF Privacy's ``QuantileAdaptiveClipSumQuery`` (geometric update).

Round ``t`` with clip ``C_t``:

1. each device reports ``b_i = 1[‖Δ_i‖ ≤ C_t]`` (was it *un*clipped) with its update;
2. the server forms the noisy unclipped fraction as TF Privacy does, on counts shifted
   by −0.5 (so one device moves the sum by at most 0.5):
   ``b̃ = clamp((Σ_i (b_i − 0.5) + N(0, σ_b²)) / m + 0.5, 0, 1)``, with ``m`` the
   *expected* number of devices (``expected_num_records``), not the number that came;
3. the sum of clipped updates is noised with std ``z_Δ·C_t``: *this* round's clip
   (Flower noised with the next round's);
4. ``C_{t+1} = C_t · exp(−η (b̃ − γ))``. Too many updates clipped (b̃ < γ) makes the
   clip *grow*; too few (b̃ > γ) makes it shrink (Flower used the clipped fraction here
   and moved the clip the wrong way).

Defaults from the paper: γ = 0.5 (clip to the median norm), η = 0.2, σ_b = m / 20.

Noise split (paper §3.1). The count has sensitivity 0.5 under add/remove, so its noise
multiplier is ``2σ_b``; the two Gaussians compose to one of multiplier ``z`` when
``z⁻² = z_Δ⁻² + (2σ_b)⁻²``, i.e. ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)``. (Under replace-one
both sensitivities double, 2C and 1, and the same identity gives ``z/2`` overall, so
:mod:`.accounting` records ``z``.) ``z_Δ`` is finite only when ``z⁻² > (2σ_b)⁻²``, i.e.
``z < 2σ_b`` (``m > 10z`` at σ_b = m/20); at ``z ≥ 2σ_b`` the count alone would spend
the whole budget, so such settings are refused.

Only ``b̃`` (noised) may be logged; the raw count ``Σ b_i`` is private.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedkb.server.privacy.errors import PrivacyConfigError
from fedkb.server.privacy.noise import NoiseSource, NormalSource


def default_count_stddev(expected_clients: int) -> float:
    """σ_b = m / 20 (Andrew et al. 2021, §3.1)."""
    return expected_clients / 20.0


def split_noise(noise_multiplier: float, count_stddev: float) -> float:
    """z_Δ, the sum's share of a total multiplier z when the count gets std σ_b.

    ``z = 0`` (no privacy) gives 0. Refuses ``z ≥ 2σ_b`` (no finite z_Δ) and a
    noise-free count (σ_b = 0) under a private z.
    """
    z, s = noise_multiplier, count_stddev
    if z < 0 or s < 0:
        raise PrivacyConfigError(f"noise must be >= 0, got z={z}, count std={s}")
    if z == 0:
        return 0.0
    if s == 0:
        raise PrivacyConfigError("adaptive clipping with a noise-free count is not private")
    if z >= 2 * s:
        raise PrivacyConfigError(
            f"noise multiplier {z} >= 2 x count std {s}: the clipped count would spend "
            f"the whole budget (need z < 2*sigma_b, i.e. more clients per round)")
    return (z ** -2 - (2 * s) ** -2) ** -0.5


def unclipped(norms: Sequence[float] | np.ndarray, clip: float) -> np.ndarray:
    """b_i = 1[‖Δ_i‖ ≤ C] for each device (what a phone reports with its update)."""
    return (np.asarray(norms, dtype=np.float64) <= clip).astype(np.float64)


def noisy_unclipped_fraction(indicators: Sequence[float] | np.ndarray,
                             expected_clients: int, count_stddev: float,
                             source: NormalSource | None) -> float:
    """b̃ = clamp((Σ (b_i − 0.5) + N(0, σ_b²)) / m + 0.5, 0, 1); ``source=None``: no noise."""
    if expected_clients < 1:
        raise PrivacyConfigError(f"expected clients must be >= 1, got {expected_clients}")
    shifted = float(np.sum(np.asarray(indicators, dtype=np.float64) - 0.5))
    if source is not None and count_stddev > 0:
        shifted += float(source.normal(count_stddev, ()))
    return min(1.0, max(0.0, shifted / expected_clients + 0.5))


def next_clip(clip: float, unclipped_fraction: float, target_quantile: float,
              learning_rate: float, geometric: bool = True) -> float:
    """C_{t+1} = C_t·exp(−η(b̃ − γ)) (geometric) or max(0, C_t − η(b̃ − γ))."""
    step = learning_rate * (unclipped_fraction - target_quantile)
    return clip * math.exp(-step) if geometric else max(0.0, clip - step)


@dataclass(frozen=True)
class AdaptiveClip:
    """The clip's state and settings; :meth:`step` is one round's update.

    ``noise_multiplier`` is the total z the accountant records; the sum gets
    :attr:`sum_noise_multiplier` (z_Δ) times the current clip.
    """

    clip: float
    noise_multiplier: float
    expected_clients: int
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None
    geometric: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise PrivacyConfigError(f"clip norm must be > 0, got {self.clip}")
        if not 0 <= self.target_quantile <= 1:
            raise PrivacyConfigError(f"target quantile must be in [0, 1], "
                                     f"got {self.target_quantile}")
        if self.learning_rate < 0:
            raise PrivacyConfigError(f"learning rate must be >= 0, got {self.learning_rate}")
        if self.expected_clients < 1:
            raise PrivacyConfigError("expected clients must be >= 1")
        if self.count_stddev is None:
            object.__setattr__(self, "count_stddev",
                               default_count_stddev(self.expected_clients))
        split_noise(self.noise_multiplier, self.sigma_b)  # refuses impossible splits

    @property
    def sigma_b(self) -> float:
        """σ_b, the std of the noise on the shifted unclipped count."""
        assert self.count_stddev is not None
        return self.count_stddev

    @property
    def sum_noise_multiplier(self) -> float:
        """z_Δ: the noise std on this round's sum is z_Δ·C_t."""
        return split_noise(self.noise_multiplier, self.sigma_b)

    def step(self, norms: Sequence[float] | np.ndarray,
             source: NormalSource | None = None,
             noise: bool = True) -> tuple[AdaptiveClip, dict[str, Any]]:
        """One round: from the devices' update norms (or their reported b_i, via
        :func:`unclipped`) to the next state and the round's public measurements.

        ``noise=False`` turns the count noise off (tests against TF Privacy only).
        """
        source = source if source is not None else (NoiseSource() if noise else None)
        b = unclipped(norms, self.clip)
        frac = noisy_unclipped_fraction(b, self.expected_clients, self.sigma_b,
                                        source if noise else None)
        new = next_clip(self.clip, frac, self.target_quantile, self.learning_rate,
                        self.geometric)
        return replace(self, clip=new), {
            "clip": self.clip, "noisy_unclipped_fraction": frac, "next_clip": new,
            "sum_noise_std": self.sum_noise_multiplier * self.clip,
            "count_noise_std": self.sigma_b if noise else 0.0}
