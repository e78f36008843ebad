"""b-bit uniform quantization with stochastic (unbiased) rounding and a per-chunk grid.

A flat float32 vector is cut into chunks of ``chunk`` values (the last one may be short);
each chunk has its own uniform grid ``value = offset + code * scale`` with integer codes
in ``[0, L]``, ``L = 2**bits - 1``, ``bits`` in {8, 4, 2}. Codes are packed densely into
uint8 (one, two or four codes per byte, lowest bits first).

Rounding is stochastic: ``t = (x - offset) / scale`` becomes ``floor(t)`` or ``floor(t) + 1``
with probabilities that make ``E[code] = t`` exactly, so ``E[q(x)] = x`` (unbiased), the
per-element error is below one step, and its variance is ``scale**2 * p * (1 - p)``, at
most ``scale**2 / 4`` (Alistarh et al. 2017, "QSGD"; Suresh et al. 2017, "Distributed
mean estimation with limited communication"). Averaging many clients' updates then
averages the rounding noise away instead of accumulating a bias. ``rounding="nearest"``
is offered for comparison only: it is biased.

Two grids
---------
*min/max (private) grid*, :func:`minmax_grid`: per chunk ``offset = min``,
``scale = (max - min) / L``. The grid is as tight as the data allows: a symmetric max-abs
grid ``[-M, M]`` would have step ``2M / L >= (max - min) / L`` and waste levels on one side
whenever a chunk is not centred at zero, which matters most at 2 bits (four levels).
Its cost is two float32 per chunk (0.03 bits per value at ``chunk=2048``). Because each
update has its own grid, a server must dequantize every update before summing.

*shared grid*, :func:`shared_grid`: a fixed symmetric range ``[-R, R]`` per chunk, given
by the task plan (e.g. from the clip norm; after a random rotation a coordinate of a
vector of norm C is about C / sqrt(d), so R = a few C / sqrt(d)). Every update of a round
uses the same grid, so the server can add the integer codes first (:func:`codes_to_ints`)
and dequantize the sum once per round (:func:`dequantize_sum`); this is the form secure
aggregation needs (see :mod:`fedkb.compression.field`). Values outside ``[-R, R]`` are
clipped to the range (a bias, counted in :attr:`QuantizedTensor.clipped`).

Randomness comes from an explicit :class:`numpy.random.Generator`: it is for unbiased
rounding, not for secrecy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = (8, 4, 2)
DEFAULT_CHUNK = 2048


def levels(bits: int) -> int:
    """The largest code, ``2**bits - 1``."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")
    return (1 << bits) - 1


def n_chunks(n: int, chunk: int) -> int:
    """How many chunks of ``chunk`` values cover ``n`` values (the last may be short)."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, not {chunk}")
    return -(-n // chunk)


@dataclass(frozen=True, eq=False)
class Grid:
    """Per-chunk uniform grids: element ``i`` of chunk ``c`` is ``offset[c] + code * scale[c]``."""

    scale: np.ndarray  # float32 [n_chunks], >= 0
    offset: np.ndarray  # float32 [n_chunks]
    n: int
    bits: int
    chunk: int
    shared: bool  # True: fixed by the plan, identical across the updates of a round

    def same_as(self, other: Grid) -> bool:
        """True when integer codes on both grids may be added (same values, same layout)."""
        return (self.n == other.n and self.bits == other.bits and self.chunk == other.chunk
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.offset, other.offset))


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A quantized 1-D float32 vector: packed codes plus the grid that gives them values."""

    codes: np.ndarray  # uint8, packed: ceil(n * bits / 8) bytes
    grid: Grid
    clipped: int = 0  # values outside a shared grid's range (always 0 on a min/max grid)

    @property
    def n(self) -> int:
        return self.grid.n

    @property
    def bits(self) -> int:
        return self.grid.bits

    @property
    def chunk(self) -> int:
        return self.grid.chunk

    @property
    def scales(self) -> np.ndarray:
        return self.grid.scale

    @property
    def offsets(self) -> np.ndarray:
        return self.grid.offset


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` packed ``bits``-bit codes take."""
    return -(-n * bits // 8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes (each < 2**bits) into uint8, ``8 // bits`` per byte, lowest bits first."""
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.copy()
    per = 8 // bits
    m = packed_size(codes.size, bits)
    padded = np.zeros(m * per, dtype=np.uint8)
    padded[: codes.size] = codes
    groups = padded.reshape(m, per)
    out = groups[:, 0].copy()
    for j in range(1, per):
        out |= groups[:, j] << np.uint8(bits * j)
    return out


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: the first ``n`` codes as uint8."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.size != packed_size(n, bits):
        raise ValueError(f"{packed.size} packed bytes do not hold {n} {bits}-bit codes")
    if bits == 8:
        return packed.copy()
    per = 8 // bits
    mask = np.uint8(levels(bits))
    out = np.empty((packed.size, per), dtype=np.uint8)
    for j in range(per):
        np.bitwise_and(packed >> np.uint8(bits * j), mask, out=out[:, j])
    return out.reshape(-1)[:n]


def minmax_grid(x: np.ndarray, bits: int, chunk: int = DEFAULT_CHUNK) -> Grid:
    """The private per-chunk grid of ``x``: ``offset = min``, ``scale = (max - min) / L``."""
    x = _as_vector(x)
    starts = np.arange(0, x.size, chunk)
    if x.size == 0:
        lo = hi = np.zeros(0, dtype=np.float64)
    else:
        lo = np.minimum.reduceat(x, starts).astype(np.float64)
        hi = np.maximum.reduceat(x, starts).astype(np.float64)
    scale = ((hi - lo) / levels(bits)).astype(np.float32)
    if not np.all(np.isfinite(scale)):
        raise ValueError("a chunk's range overflows float32")
    return Grid(scale, lo.astype(np.float32), x.size, bits, chunk, shared=False)


def shared_grid(n: int, bits: int, radius: float | np.ndarray,
                chunk: int = DEFAULT_CHUNK) -> Grid:
    """The fixed grid ``[-R, R]`` per chunk (``R`` a scalar or one value per chunk)."""
    nc = n_chunks(n, chunk)
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (nc,))
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError("a shared grid's radius must be finite and positive")
    scale = (2.0 * r / levels(bits)).astype(np.float32)
    # the offset is -L/2 steps exactly, so the grid is symmetric in float32 too
    offset = (-scale.astype(np.float64) * levels(bits) / 2.0).astype(np.float32)
    return Grid(scale, offset, n, bits, chunk, shared=True)


def quantize(x: np.ndarray, bits: int, chunk: int = DEFAULT_CHUNK,
             rng: np.random.Generator | None = None, *, grid: Grid | None = None,
             rounding: str = "stochastic") -> QuantizedTensor:
    """Quantize a 1-D float32 vector to ``bits``-bit codes on ``grid`` (default: min/max).

    ``rng`` is required for stochastic rounding; ``rounding="nearest"`` (biased) needs none.
    """
    x = _as_vector(x)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot quantize non-finite values")
    if grid is None:
        grid = minmax_grid(x, bits, chunk)
    elif (grid.n, grid.bits, grid.chunk) != (x.size, bits, chunk):
        raise ValueError(f"grid is for (n, bits, chunk)={(grid.n, grid.bits, grid.chunk)}, "
                         f"not {(x.size, bits, chunk)}")
    if rounding not in ("stochastic", "nearest"):
        raise ValueError(f"unknown rounding {rounding!r}")
    if rounding == "stochastic" and rng is None:
        raise ValueError("stochastic rounding needs an explicit numpy Generator (rng)")
    top = levels(bits)
    t = _blocked(x, grid)
    safe = np.where(grid.scale > 0, grid.scale, np.float32(1))[:, None]
    t -= grid.offset[:, None]
    t /= safe
    t = t.reshape(-1)[: x.size]
    clipped = int(np.count_nonzero((t < 0) | (t > top))) if grid.shared else 0
    np.clip(t, 0, top, out=t)
    if rounding == "stochastic":
        assert rng is not None
        t += rng.random(t.size, dtype=np.float32)
        np.floor(t, out=t)
        np.minimum(t, top, out=t)  # float32 rounding of t + u can reach top + 1
    else:
        np.rint(t, out=t)
    return QuantizedTensor(pack_codes(t.astype(np.uint8), bits), grid, clipped)


def codes_to_ints(q: QuantizedTensor, dtype: type = np.int64) -> np.ndarray:
    """The codes as integers in ``[0, 2**bits - 1]``, for folding integer sums."""
    return unpack_codes(q.codes, q.bits, q.n).astype(dtype)


def dequantize(q: QuantizedTensor) -> np.ndarray:
    """The float32 values of the codes on their grid."""
    codes = unpack_codes(q.codes, q.bits, q.n)
    v = _blocked(codes.astype(np.float32), q.grid)
    v *= q.grid.scale[:, None]
    v += q.grid.offset[:, None]
    return v.reshape(-1)[: q.n]


def dequantize_sum(total: np.ndarray, n_summands: int, grid: Grid) -> np.ndarray:
    """The float32 sum of ``n_summands`` vectors from the integer sum of their codes.

    Valid only when every summand was quantized on ``grid`` (a shared grid): the sum of
    ``offset + c_k * scale`` over k is ``n_summands * offset + (sum of c_k) * scale``.
    """
    total = np.asarray(total)
    if total.shape != (grid.n,):
        raise ValueError(f"integer sum has shape {total.shape}, grid has {grid.n} values")
    v = _blocked(total.astype(np.float64), grid)
    v *= grid.scale.astype(np.float64)[:, None]
    v += n_summands * grid.offset.astype(np.float64)[:, None]
    return v.reshape(-1)[: grid.n].astype(np.float32)


def _as_vector(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D vector, got shape {x.shape}")
    return x


def _blocked(v: np.ndarray, grid: Grid) -> np.ndarray:
    """A copy of ``v`` zero-padded to whole chunks, shaped [n_chunks, chunk]."""
    nc = n_chunks(grid.n, grid.chunk)
    out = np.zeros(nc * grid.chunk, dtype=v.dtype)
    out[: grid.n] = v
    return out.reshape(nc, grid.chunk)
