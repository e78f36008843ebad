"""Randomized Hadamard rotation ``y = H D x`` and its exact inverse ``x = D H y``.

``D`` is a diagonal of random signs, ``H`` the Walsh-Hadamard matrix scaled by
``1/sqrt(m)`` so that it is orthonormal and its own inverse. The rotation preserves the
L2 norm, and spreads a vector's energy evenly over the coordinates, so a few outliers no
longer stretch the quantization grid of their chunk: the coordinates of ``H D x`` are
close to Gaussian with variance ``|x|^2 / m`` (Ailon & Chazelle 2006; Suresh et al. 2017,
"Distributed mean estimation with limited communication", sec. 4; Konecny et al. 2016,
"Federated learning: strategies for improving communication efficiency"). The same
signs are used by every client of a round, so the server may sum rotated updates and
un-rotate the sum once (the rotation is linear).

Blocks
------
TFF's ``HadamardTransformFactory`` pads the whole flattened vector to the next power of
two: for the ``small`` model's 960,000-value embedding that is 1,048,576 coordinates
(9 % more to quantize and send), and up to 2x in the worst case. Here a vector of ``n``
values is cut into full blocks of ``max_block`` (default 2**16) values plus one tail
padded to the next power of two, and each block is rotated on its own. Padding is then
under ``min(n, max_block)`` values (2.4 % for that embedding), the transform costs the
same ``O(n log n)`` and runs batched over all full blocks at once. The price is that
energy is spread only within a block of 65,536 coordinates, which is plenty for
quantization (a chunk of the quantizer is 2,048 values).

The signs are drawn from ``PCG64(SeedSequence(seed, spawn_key=(stream,)))`` raw 64-bit
outputs, whose stream NumPy keeps stable across versions (NEP 19), so a phone and the
server derive identical signs from the task's 64-bit seed. ``stream`` separates the
tensors of one update. This is not a secret: the server knows the seed.
"""

from __future__ import annotations

import math

import numpy as np

MAX_BLOCK = 1 << 16


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def block_sizes(n: int, max_block: int = MAX_BLOCK) -> list[int]:
    """The power-of-two block sizes that cover ``n`` values: full blocks, then a padded tail."""
    if max_block < 1 or max_block & (max_block - 1):
        raise ValueError(f"max_block must be a power of two, not {max_block}")
    full, tail = divmod(n, max_block)
    return [max_block] * full + ([next_pow2(tail)] if tail else [])


def rotated_length(n: int, max_block: int = MAX_BLOCK) -> int:
    """Length of the rotated vector of ``n`` values (``n`` plus the tail's padding)."""
    return sum(block_sizes(n, max_block))


def fwht_(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform of each row of ``x``, in place.

    ``x`` is a C-contiguous float array of shape ``[rows, m]``, ``m`` a power of two;
    ``log2(m)`` butterfly passes, each vectorised over all rows, then a ``1/sqrt(m)``
    scaling. The transform is symmetric and orthonormal, hence its own inverse.
    """
    if x.ndim != 2 or not x.flags.c_contiguous:
        raise ValueError("fwht_ needs a C-contiguous 2-D array")
    rows, m = x.shape
    if m & (m - 1):
        raise ValueError(f"row length {m} is not a power of two")
    buf = np.empty(rows * m // 2, dtype=x.dtype)
    h = 1
    while h < m:
        y = x.reshape(rows, m // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        t = buf.reshape(rows, m // (2 * h), h)
        np.subtract(a, b, out=t)
        a += b
        b[...] = t
        h *= 2
    x *= x.dtype.type(1.0 / math.sqrt(m))
    return x


def signs(seed: int, length: int, stream: int = 0) -> np.ndarray:
    """``length`` random +-1 float32 signs, a fixed function of ``(seed, stream)``."""
    if not 0 <= seed < 1 << 64:
        raise ValueError("seed must be an unsigned 64-bit integer")
    bitgen = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(stream,)))
    raw = bitgen.random_raw(-(-length // 64)).astype("<u8")
    bits = np.unpackbits(raw.view(np.uint8), bitorder="little")[:length]
    return (1.0 - 2.0 * bits).astype(np.float32)


def _transform(v: np.ndarray, sizes: list[int]) -> None:
    """Hadamard-transform ``v`` (length ``sum(sizes)``) block by block, in place."""
    full = sum(1 for s in sizes if s == sizes[0]) if sizes else 0
    if full:
        fwht_(v[: full * sizes[0]].reshape(full, sizes[0]))
    if len(sizes) > full:  # the tail block is smaller than the full ones
        start = full * sizes[0]
        fwht_(v[start:].reshape(1, sizes[-1]))


def rotate(x: np.ndarray, seed: int, *, stream: int = 0,
           max_block: int = MAX_BLOCK) -> np.ndarray:
    """``H D x`` for a 1-D vector, zero-padded to :func:`rotated_length` (float32)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {x.shape}")
    sizes = block_sizes(x.size, max_block)
    v = np.zeros(sum(sizes), dtype=np.float32)
    v[: x.size] = x
    v *= signs(seed, v.size, stream)
    _transform(v, sizes)
    return v


def unrotate(y: np.ndarray, n: int, seed: int, *, stream: int = 0,
             max_block: int = MAX_BLOCK) -> np.ndarray:
    """The inverse of :func:`rotate`: ``D H y`` cut back to its first ``n`` values."""
    sizes = block_sizes(n, max_block)
    y = np.asarray(y, dtype=np.float32)
    if y.shape != (sum(sizes),):
        raise ValueError(f"a rotation of {n} values has {sum(sizes)} coordinates, "
                         f"got shape {y.shape}")
    v = y.copy()
    _transform(v, sizes)
    v *= signs(seed, v.size, stream)
    return v[:n]
