"""Gaussian noise for a clipped sum (the Gaussian mechanism, Dwork & Roth 2014, App. A),
from a generator whose seed nobody sees.

The seed is 128 bits from the operating system's CSPRNG (:mod:`secrets`), fed to
NumPy's PCG64; it is never stored, logged, returned or pickled (a :class:`NoiseSource`
refuses to be serialised, since its state would let anyone subtract the noise). Peers
got this wrong: Flower's SecAgg+ seeded ``RandomState`` from a 32-bit fold of a secret
(Flower#7522); TF Privacy's ``GaussianNoiseGenerator`` seeds from the clock.

Limits, stated plainly: PCG64 is not a cryptographic generator (a leaked state predicts
the rest of the stream), and floating-point Gaussian samples are open to Mironov's
(2012, "On significance of the least significant bits for differential privacy")
attack; the discrete Gaussian of Canonne, Kamath & Steinke 2020 would close it and is
not done here.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fedkb.server.privacy.errors import PrivacyConfigError


class NormalSource(Protocol):
    """What the noise stages need from a generator: ``normal(std, shape)``."""

    def normal(self, std: float, shape: tuple[int, ...]) -> np.ndarray: ...


class NoiseSource:
    """i.i.d. N(0, std²) draws from a PCG64 generator seeded with ``secrets.randbits(128)``."""

    __slots__ = ("_rng",)

    def __init__(self) -> None:
        self._rng = np.random.Generator(np.random.PCG64(secrets.randbits(128)))

    def normal(self, std: float, shape: tuple[int, ...]) -> np.ndarray:
        """float64 noise of the given shape and standard deviation."""
        return self._rng.normal(0.0, std, size=shape)

    def __repr__(self) -> str:
        return "NoiseSource(<seed hidden>)"

    def __reduce__(self) -> Any:
        raise TypeError("a NoiseSource is not serialisable: its state reveals the noise")


def add_gaussian(sum_arrays: Sequence[np.ndarray], std: float,
                 source: NormalSource | None = None
                 ) -> tuple[list[np.ndarray], dict[str, Any]]:
    """``sum + N(0, std²·I)`` for each array of a summed update (DP-FedAvg's noise step).

    For a sum of ``m`` updates clipped to ``C`` with noise multiplier ``z``, pass
    ``std = z·C``; the mean over the fixed denominator ``m`` then carries noise of std
    ``z·C/m``. Arrays keep their float dtype (noise is drawn in float64, then cast).

    Returns:
        The noised arrays (new arrays; the inputs are untouched) and the measurements
        ``{"noise_std", "noised_coordinates"}``: the std is public, the draws are not.
    """
    if not (np.isfinite(std) and std >= 0):
        raise PrivacyConfigError(f"noise std must be >= 0, got {std}")
    source = source if source is not None else NoiseSource()
    out: list[np.ndarray] = []
    count = 0
    for a in sum_arrays:
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.floating):
            raise PrivacyConfigError(f"noise goes on float sums, got dtype {a.dtype}")
        out.append((a + source.normal(std, a.shape)).astype(a.dtype, copy=False))
        count += a.size
    return out, {"noise_std": float(std), "noised_coordinates": count}
