"""The uniformity test the secure-aggregation tests share."""

from __future__ import annotations

import numpy as np

# chi-square over 256 bins (255 degrees of freedom): the 1e-6 and 1 - 1e-6 quantiles
# (scipy.stats.chi2.ppf), so an honest uniform sample fails either side once in 5e5 runs
CHI2_LOW, CHI2_HIGH = 161.65, 377.08


def chi_square_top_byte(v: np.ndarray, k: int) -> float:
    """Pearson chi-square of the top 8 bits of k-bit values against uniform."""
    counts = np.bincount((v.astype(np.uint64) >> np.uint64(k - 8)).astype(np.int64),
                         minlength=256)
    expected = v.size / 256
    return float(((counts - expected) ** 2 / expected).sum())
