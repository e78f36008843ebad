"""Field encoding for secure aggregation: shared-grid codes as residues in Z_{2^k}.

Secure aggregation (Bonawitz et al. 2017, "Practical secure aggregation for
privacy-preserving machine learning", sec. 4) sums vectors in a finite group: each phone
adds pairwise masks that cancel in the sum, so the server learns only
``sum_i x_i mod 2^k``. For that sum to equal the true integer sum, the group must be big
enough that the sum never wraps: with ``n`` summands of ``bits``-bit codes (each at most
``L = 2**bits - 1``) the sum is at most ``n * L < 2**(bits + ceil(log2 n))``, so

    k = modulus_bits(bits, n) = bits + ceil(log2 n)

bits suffice: ``ceil(log2 n)`` headroom bits above the codes' own (Kairouz, Liu &
Steinke 2021, "The distributed discrete Gaussian mechanism for federated learning with
secure aggregation", size the modulus against the bound on the sum the same way).
The codes must come from a *shared* grid (:func:`fedkb.compression.quantize.shared_grid`):
one grid for the whole round, so that
integer codes of different phones mean the same values and one dequantization of the
sum recovers the float sum.

Wrap-around with too little headroom is *not detectable* from the residues: when
``2**k <= n * L`` every residue is a possible honest sum. :func:`decode_sum` therefore
refuses a modulus below ``modulus_bits(bits, n)`` up front; with enough headroom a
residue above ``n * L`` cannot be an honest sum (e.g. a mask that was not removed) and
is refused too.

The quantizer is reused as is: :func:`encode` is :func:`~.quantize.codes_to_ints` into
the residue dtype, and :func:`decode_sum` ends in :func:`~.quantize.dequantize_sum`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from fedkb.compression.quantize import Grid, QuantizedTensor, codes_to_ints, dequantize_sum, levels

MAX_MODULUS_BITS = 64


class FieldOverflowError(ValueError):
    """A modular sum that cannot be (or is not) the true integer sum."""


def modulus_bits(bits: int, n_summands: int, margin: int = 0, scale: int = 1) -> int:
    """``bits + ceil(log2 n_summands)``: a k whose Z_{2^k} holds the sum of n codes exactly.

    It bounds the sum by ``n * 2**bits``, so it is the minimal ``ceil(log2(n * L + 1))``
    or one bit more (e.g. 33 summands of 4 bits: at most 495 < 2**9, the rule gives 10).
    With a noise ``margin`` (distributed DP: :mod:`fedkb.secagg.distributed_dp`) the
    noised sum lies in ``[-margin, n L + margin]``, and k holds that whole range; with
    ``scale`` S the codes were multiplied by S first (the noise's finer lattice), so the
    range is ``[-margin, n L S + margin]``.
    """
    levels(bits)  # validates bits
    if n_summands < 1:
        raise ValueError("n_summands must be at least 1")
    if margin < 0 or scale < 1:
        raise ValueError("the noise margin must be >= 0 and the scale >= 1")
    k = bits + (n_summands - 1).bit_length()  # (n-1).bit_length() == ceil(log2 n)
    if margin or scale > 1:
        k = max(k, (n_summands * levels(bits) * scale + 2 * margin).bit_length())
    if k > MAX_MODULUS_BITS:
        raise ValueError(f"{n_summands} summands of {bits} bits need {k} > 64 modulus bits")
    return k


def residue_dtype(k: int) -> np.dtype:
    """uint32 for k <= 32, else uint64: the smallest unsigned type that holds Z_{2^k}."""
    if not 1 <= k <= MAX_MODULUS_BITS:
        raise ValueError(f"modulus bits must be in [1, 64], not {k}")
    return np.dtype(np.uint32 if k <= 32 else np.uint64)


def _mask(k: int) -> np.unsignedinteger:
    dt = residue_dtype(k)
    return dt.type((1 << k) - 1)


def encode(q: QuantizedTensor, k: int) -> np.ndarray:
    """The codes of a shared-grid tensor as residues in Z_{2^k} (dtype :func:`residue_dtype`)."""
    if not q.grid.shared:
        raise ValueError("field encoding needs a shared grid: per-update min/max grids "
                         "give codes that cannot be added")
    if k < q.bits:
        raise ValueError(f"a {k}-bit modulus cannot hold {q.bits}-bit codes")
    return codes_to_ints(q, residue_dtype(k))


def add_mod(acc: np.ndarray, residues: np.ndarray, k: int) -> np.ndarray:
    """``acc = (acc + residues) mod 2^k`` in place (the server's O(model) fold); returns acc."""
    dt = residue_dtype(k)
    if acc.dtype != dt or residues.dtype != dt:
        raise ValueError(f"residues for k={k} must be {dt}")
    if acc.shape != residues.shape:
        raise ValueError(f"shape {residues.shape} does not match the sum's {acc.shape}")
    np.add(acc, residues, out=acc)  # unsigned addition wraps mod 2^32 / 2^64
    np.bitwise_and(acc, _mask(k), out=acc)
    return acc


def sum_mod(residues: Iterable[np.ndarray], k: int) -> np.ndarray:
    """The sum mod 2^k of equally shaped residue vectors."""
    it = iter(residues)
    try:
        first = next(it)
    except StopIteration:
        raise ValueError("sum_mod of no vectors") from None
    acc = np.bitwise_and(first.astype(residue_dtype(k)), _mask(k))
    for r in it:
        add_mod(acc, r, k)
    return acc


def decode_sum(total: np.ndarray, n_summands: int, grid: Grid, k: int,
               margin: int = 0, scale: int = 1) -> np.ndarray:
    """The float32 sum of ``n_summands`` shared-grid vectors from their sum mod 2^k.

    Raises :class:`FieldOverflowError` if ``k`` leaves too little headroom for
    ``n_summands`` (wrap-around would be silent) or a residue exceeds ``n * L`` (not an
    honest sum: a corrupt upload or a mask left in). With a noise ``margin`` the honest
    sums are ``[-margin, n L + margin]``: a residue at or above ``2^k - margin`` is read as
    negative, one between ``n L + margin`` and that is refused. With ``scale`` S (a power
    of two) the sum is in units of ``step / S``.
    """
    if not grid.shared:
        raise ValueError("only a shared grid's integer sum can be dequantized")
    need = modulus_bits(grid.bits, n_summands, margin, scale)
    if k < need:
        raise FieldOverflowError(f"{n_summands} summands of {grid.bits}-bit codes need "
                                 f"{need} modulus bits, got {k}: the sum may have wrapped")
    total = np.asarray(total)
    if total.dtype != residue_dtype(k):
        raise ValueError(f"residues for k={k} must be {residue_dtype(k)}")
    bound = n_summands * levels(grid.bits) * scale + margin
    negative = np.zeros(total.shape, dtype=bool)
    if margin:
        if k > 62:
            raise ValueError("a noise margin needs a modulus of at most 62 bits")
        negative = total >= total.dtype.type((1 << k) - margin)
    if total.size and int(np.max(total, where=~negative, initial=0)) > bound:
        raise FieldOverflowError(f"a residue exceeds {bound} = n * L + margin: not a sum of "
                                 f"{n_summands} honest {grid.bits}-bit codes")
    signed = total.astype(np.int64)
    if margin:
        signed[negative] -= 1 << k
    if scale > 1:  # a power of two: step / S is exact in float32
        grid = dataclasses.replace(grid, scale=(grid.scale / np.float32(scale)).astype(
            np.float32))
    return dequantize_sum(signed, n_summands, grid)
