"""A model update as a secure-aggregation input, and the round's sum back as a float update.

The phone's side (:func:`encode_codes`): clip the delta to the plan's L2 norm C, rotate
each tensor with the *round's* rotation seed (one seed for every phone of the round, so
the server can un-rotate the sum once; :mod:`fedkb.compression.rotate`), and quantize it
with stochastic rounding on a *shared* grid (:func:`fedkb.compression.quantize.shared_grid`)
that every phone derives from the same public numbers. The codes then become residues in
Z_{2^k} (:func:`fedkb.compression.field.encode`'s job, done here on the unpacked codes)
and are masked by :class:`fedkb.secagg.client.Phone`.

The grid's radius. After the rotation a coordinate of a block of ``m`` values is close to
Gaussian with variance ``E / m``, where ``E <= C**2`` is the block's share of the squared
norm. So ``R = sigmas * C / sqrt(m)`` per chunk (``m`` the size of the rotation block
the chunk lies in) clips a value only beyond ``sigmas`` standard deviations even in the
worst case, where one block carries the whole norm. The quantization error this costs is
bounded too: each block adds at most ``(2R / L)**2 / 4 * m = sigmas**2 C**2 / L**2`` to
the squared error (L = 2**bits - 1), about ``0.09 C`` in norm for the ``small`` model's
~31 blocks at 8 bits and ``sigmas = 4``. Values beyond the range are clipped to it and
counted (the phone reports the count; no silent saturation).

With distributed DP (``noise_std`` > 0) the phone adds integer noise to the codes
(:meth:`UpdateLayout.noise`, :func:`as_residues`), the modulus gets a margin for it and
the decoded sum is a noised one (:mod:`fedkb.secagg.distributed_dp`).
:attr:`UpdateLayout.sensitivity` is the bound DP calibrates to, central or distributed.

The server's side (:func:`decode_sum`): the unmasked sum mod 2^k goes through
:func:`fedkb.compression.field.decode_sum` per tensor (refusing a residue that is not an
honest sum of n codes), then is un-rotated and reshaped: the float32 *sum* of the n
survivors' clipped updates, within the quantization error.

NumPy only (and :mod:`fedkb.compression`), so a phone can import it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fedkb.clipping import clip_update
from fedkb.compression import field
from fedkb.compression.quantize import DEFAULT_CHUNK, Grid, quantize, shared_grid, unpack_codes
from fedkb.compression.rotate import block_sizes, rotate, unrotate
from fedkb.secagg import distributed_dp as ddp

BITS_OF = {"q8": 8, "q4": 4, "q2": 2}
RANGE_SIGMAS = 4.0


@dataclass(frozen=True)
class UpdateLayout:
    """The public numbers both ends derive a secure round's encoding from."""

    shapes: tuple[tuple[int, ...], ...]
    bits: int
    clip: float  # C: every phone clips its delta to this L2 norm first
    rotation_seed: int  # the round's, shared by every phone
    sigmas: float = RANGE_SIGMAS
    chunk: int = DEFAULT_CHUNK
    # distributed DP: each phone's discrete Gaussian std, in float units (0: no noise;
    # fedkb.secagg.distributed_dp)
    noise_std: float = 0.0
    # S, a power of two: codes are multiplied by S and the noise drawn on the S-times
    # finer lattice, so its std in lattice units stays well above 1 (distributed_dp)
    noise_scale: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"the clip must be a positive number, not {self.clip}")
        if not (math.isfinite(self.sigmas) and self.sigmas > 0):
            raise ValueError(f"sigmas must be positive, not {self.sigmas}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"the noise std must be >= 0, not {self.noise_std}")
        s = self.noise_scale
        if s < 1 or s & (s - 1) or s > ddp.MAX_NOISE_SCALE:
            raise ValueError(f"the noise scale must be a power of two up to "
                             f"{ddp.MAX_NOISE_SCALE}, not {s}")

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @cached_property
    def grids(self) -> tuple[Grid, ...]:
        """One shared grid per tensor, over its rotated coordinates."""
        out = []
        for n in self.sizes:
            blocks = np.asarray(block_sizes(n), dtype=np.int64)
            length = int(blocks.sum())
            starts = np.arange(0, length, self.chunk)
            which = np.searchsorted(np.cumsum(blocks), starts, side="right")
            radius = self.sigmas * self.clip / np.sqrt(blocks[which].astype(np.float64))
            out.append(shared_grid(length, self.bits, radius, self.chunk))
        return tuple(out)

    @cached_property
    def dim(self) -> int:
        """The length of the vector the protocol masks and sums."""
        return sum(g.n for g in self.grids)

    def modulus_bits(self, n_summands: int) -> int:
        """k: Z_{2^k} holds the sum of ``n_summands`` codes without wrapping (and, with
        ``noise_std``, their noise: :meth:`noise_margin`)."""
        return field.modulus_bits(self.bits, n_summands, self.noise_margin(n_summands),
                                  self.noise_scale)

    # -- distributed DP (fedkb.secagg.distributed_dp) ---------------------------------

    @cached_property
    def chunk_counts(self) -> tuple[np.ndarray, ...]:
        """Per tensor, the coordinates in each chunk of its grid (the last may be short)."""
        out = []
        for g in self.grids:
            c = np.full(len(g.scale), g.chunk, dtype=np.int64)
            if len(c):
                c[-1] = g.n - g.chunk * (len(c) - 1)
            out.append(c)
        return tuple(out)

    @cached_property
    def sensitivity(self) -> float:
        """Δ: a phone's rounded, clipped update has at most this norm (C + the rounding)."""
        return ddp.sensitivity(self.clip, [g.scale for g in self.grids], self.chunk_counts)

    @cached_property
    def lattice(self) -> tuple[np.ndarray, ...]:
        """Per tensor and chunk, each phone's noise std in lattice units (the grid's step
        over ``noise_scale``)."""
        return tuple(ddp.lattice_std(self.noise_std, g.scale / self.noise_scale)
                     for g in self.grids)

    def noise_margin(self, n_summands: int) -> int:
        """The field's margin for the noise of ``n_summands`` phones (0 without noise)."""
        if self.noise_std == 0:
            return 0
        return ddp.noise_margin(max(float(s.max()) for s in self.lattice if s.size),
                                n_summands)

    def tau(self, n_summands: int) -> float:
        """The RDP constant the discrete noise of ``n_summands`` phones adds (Prop. 14)."""
        return ddp.tau(self.lattice, self.chunk_counts, n_summands) if self.noise_std else 0.0

    def noise(self, rng: np.random.Generator) -> np.ndarray:
        """One phone's noise, int64 [dim]: discrete Gaussian in each chunk's grid units."""
        return ddp.discrete_gaussian(np.concatenate(
            [ddp.per_coordinate(s, g.n, g.chunk) for s, g in zip(self.lattice, self.grids,
                                                                  strict=True)]), rng)


@dataclass(frozen=True)
class EncodedUpdate:
    codes: np.ndarray  # uint8 [dim], each < 2**bits
    clipped_values: int  # coordinates beyond the shared grid's range (clipped to it)
    norm: float  # the delta's norm before the L2 clip
    unclipped: bool  # norm <= C


def example_weight(num_examples: int, cap: int) -> float:
    """The weight in (0, 1] a phone scales its clipped delta by in an example-weighted
    secure round: ``min(examples, cap) / cap`` (McMahan et al. 2018's ``min(n / ŵ, 1)``;
    the server's cap is 4x the last round's 90th-percentile claim, so the weights are
    FedAvg's below it: :meth:`fedkb.server.round_machine.RoundMachine._secure_weight_cap`).
    The server computes the same from the examples the phone reports and divides the sum
    by the survivors' total: a weighted mean without seeing an update. Scaled by at most
    1, a delta stays within the clip, so the field's range and headroom hold."""
    if cap <= 0:
        raise ValueError(f"the example cap must be positive, not {cap}")
    return max(1, min(int(num_examples), cap)) / cap


def encode_codes(arrays: Sequence[np.ndarray], layout: UpdateLayout,
                 rng: np.random.Generator, scale: float = 1.0) -> EncodedUpdate:
    """The phone's delta as ``layout.dim`` shared-grid codes (stochastic rounding); with
    ``scale`` (its :func:`example_weight`) the clipped delta is scaled before encoding."""
    if [tuple(np.shape(a)) for a in arrays] != [tuple(s) for s in layout.shapes]:
        raise ValueError("the update's shapes are not the round's")
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"the scale must be in (0, 1], not {scale}")
    clipped, unclipped, norm = clip_update([np.asarray(a, np.float32) for a in arrays],
                                           layout.clip)
    if scale != 1.0:
        clipped = [a * np.float32(scale) for a in clipped]
    parts, beyond = [], 0
    for i, (a, grid) in enumerate(zip(clipped, layout.grids, strict=True)):
        r = rotate(np.ravel(a), layout.rotation_seed, stream=i)
        q = quantize(r, layout.bits, layout.chunk, rng, grid=grid)
        parts.append(unpack_codes(q.codes, layout.bits, q.n))
        beyond += q.clipped
    codes = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return EncodedUpdate(codes, beyond, float(norm), bool(unclipped))


def as_residues(codes: np.ndarray, k: int, noise: np.ndarray | None = None,
                scale: int = 1) -> np.ndarray:
    """Codes (times ``scale``, plus distributed DP's integer ``noise`` on that finer
    lattice) as residues in Z_{2^k} (dtype :func:`fedkb.compression.field.residue_dtype`)."""
    if noise is None and scale == 1:
        return np.asarray(codes).astype(field.residue_dtype(k))
    noised = np.asarray(codes).astype(np.int64) * scale
    if noise is not None:
        noised += np.asarray(noise, dtype=np.int64)
    return np.mod(noised, 1 << k).astype(field.residue_dtype(k))


def decode_sum(total: np.ndarray, n_summands: int, k: int,
               layout: UpdateLayout, cohort: int | None = None) -> list[np.ndarray]:
    """The float32 sum of ``n_summands`` encoded updates from their sum mod 2^k (with
    the noise margin of the ``cohort`` the modulus was sized for, default
    ``n_summands``, when the layout carries distributed noise).

    Raises :class:`fedkb.compression.field.FieldOverflowError` for a sum that cannot be
    honest (too little headroom, or a residue above ``n * L``, plus the margin)."""
    total = np.asarray(total)
    if total.shape != (layout.dim,):
        raise ValueError(f"the sum has shape {total.shape}, the round's vector {layout.dim}")
    margin = layout.noise_margin(n_summands if cohort is None else cohort)
    out, start = [], 0
    for i, (grid, n, shape) in enumerate(zip(layout.grids, layout.sizes, layout.shapes,
                                             strict=True)):
        part = total[start:start + grid.n].astype(field.residue_dtype(k))
        start += grid.n
        s = field.decode_sum(part, n_summands, grid, k, margin, layout.noise_scale)
        out.append(unrotate(s, n, layout.rotation_seed, stream=i).reshape(shape))
    return out
