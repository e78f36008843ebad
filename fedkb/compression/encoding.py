"""A versioned, self-describing encoded model update: rotate, quantize, pack; and refuse.

:class:`Encoding` names one compression recipe (the plan's, later): ``float32`` or
``q8``/``q4``/``q2`` (per-chunk min/max grid, stochastic rounding: see
:mod:`~fedkb.compression.quantize`), optionally after a randomized Hadamard rotation
(:mod:`~fedkb.compression.rotate`) seeded by the task's 64-bit seed. Tensors with fewer
than ``min_elements`` values (biases, layer norms) stay float32 and unrotated: they are
a small share of the bytes and the most sensitive to error, as in TFF's
``compression_aggregator`` (threshold 20,000).

Layout (integers little-endian; never pickle)::

    b"FKBQ" | u16 format version | u32 header length h (<= 16 KiB)
    | header: h bytes of UTF-8 JSON {"encoding": {...}, "seed": int|null, "shapes": [[d..]]}
    | payload, per tensor i in order:
        float32 tensor:   m_i float32 values
        quantized tensor: c_i float32 scales | c_i float32 offsets | packed codes
    | u32 crc32 of everything before it

where ``n_i`` is the product of shape i, ``m_i`` is ``n_i`` or its rotated (padded)
length, and ``c_i`` the chunk count of ``m_i``. Every length follows from the header,
so :func:`decode_update` checks the exact body size before reading, and refuses, with
:class:`EncodingError` and a reason code, any body that does not match the expected
encoding, seed or shapes, is truncated or over-long, fails its checksum, or holds
non-finite scales or values.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from fedkb.compression.quantize import (
    Grid,
    QuantizedTensor,
    dequantize,
    levels,
    n_chunks,
    packed_size,
    quantize,
)
from fedkb.compression.rotate import MAX_BLOCK, rotate, rotated_length, unrotate

MAGIC = b"FKBQ"
FORMAT_VERSION = 1
MAX_HEADER = 16 * 1024
MAX_TENSORS = 4096
NAMES = {"float32": 32, "q8": 8, "q4": 4, "q2": 2}
_PREFIX = struct.Struct("<4sHI")
_CRC = struct.Struct("<I")

REASONS = ("malformed", "wrong_version", "wrong_encoding", "wrong_seed", "shape_mismatch",
           "truncated", "oversized", "corrupt", "bad_scale", "bad_value")


class EncodingError(ValueError):
    """An encoded update refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class Encoding:
    """One update-compression recipe; both ends must agree on all of it."""

    name: str = "float32"
    rotate: bool = False
    chunk: int = 2048
    version: int = FORMAT_VERSION
    min_elements: int = 20_000
    max_block: int = MAX_BLOCK

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise ValueError(f"encoding name must be one of {sorted(NAMES)}, not {self.name!r}")
        if not isinstance(self.rotate, bool):
            raise ValueError("rotate must be a bool")
        for f in ("chunk", "version", "min_elements", "max_block"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{f} must be an int")
        if self.version != FORMAT_VERSION:
            raise ValueError(f"unsupported encoding version {self.version}")
        if not 1 <= self.chunk <= 1 << 20:
            raise ValueError(f"chunk must be in [1, 2**20], not {self.chunk}")
        if self.min_elements < 0:
            raise ValueError("min_elements must be >= 0")
        mb = self.max_block
        if not 1 <= mb <= 1 << 24 or mb & (mb - 1):
            raise ValueError(f"max_block must be a power of two <= 2**24, not {mb}")

    @property
    def bits(self) -> int:
        return NAMES[self.name]

    @property
    def quantized(self) -> bool:
        return self.name != "float32"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: object) -> Encoding:
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError(f"an encoding is an object with exactly the keys {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str | bytes) -> Encoding:
        return cls.from_dict(json.loads(s))

    def compressed(self, n: int) -> bool:
        """Whether a tensor of ``n`` values is rotated/quantized (else plain float32)."""
        return n >= self.min_elements

    def coords(self, n: int) -> int:
        """How many coordinates a tensor of ``n`` values is sent as."""
        return rotated_length(n, self.max_block) if self.rotate and self.compressed(n) else n

    def tensor_bytes(self, n: int) -> int:
        """Payload bytes of a tensor of ``n`` values."""
        m = self.coords(n)
        if not (self.quantized and self.compressed(n)):
            return 4 * m
        return 8 * n_chunks(m, self.chunk) + packed_size(m, self.bits)


@dataclass(frozen=True)
class EncodeReport:
    """What one encoding cost and saved, as data."""

    encoded_bytes: int
    raw_bytes: int  # the same tensors as plain float32
    encode_s: float
    quantized_tensors: int
    float32_tensors: int

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.encoded_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def encode_update(arrays: Sequence[np.ndarray], encoding: Encoding, seed: int | None,
                  rng: np.random.Generator | None) -> bytes:
    """Encode float arrays; ``seed`` (the task's) is needed to rotate, ``rng`` to quantize."""
    return encode_update_measured(arrays, encoding, seed, rng)[0]


def encode_update_measured(arrays: Sequence[np.ndarray], encoding: Encoding,
                           seed: int | None, rng: np.random.Generator | None
                           ) -> tuple[bytes, EncodeReport]:
    """:func:`encode_update` and its :class:`EncodeReport`."""
    t0 = time.perf_counter()
    if encoding.rotate and seed is None:
        raise ValueError("a rotating encoding needs the task's seed")
    if encoding.quantized and rng is None:
        raise ValueError("a quantizing encoding needs an explicit numpy Generator (rng)")
    if len(arrays) > MAX_TENSORS:
        raise ValueError(f"more than {MAX_TENSORS} tensors")
    shapes, sizes, parts, nq = [], [], [], 0
    for i, a in enumerate(arrays):
        a = np.asarray(a, dtype=np.float32)
        flat = a.reshape(-1)
        if not np.all(np.isfinite(flat)):
            raise ValueError(f"tensor {i} has non-finite values")
        shapes.append([int(d) for d in a.shape])
        sizes.append(int(flat.size))
        if encoding.compressed(flat.size):
            if encoding.rotate:
                assert seed is not None
                flat = rotate(flat, seed, stream=i, max_block=encoding.max_block)
            if encoding.quantized:
                q = quantize(flat, encoding.bits, encoding.chunk, rng)
                parts += [q.scales.astype("<f4").tobytes(), q.offsets.astype("<f4").tobytes(),
                          q.codes.tobytes()]
                nq += 1
                continue
        parts.append(flat.astype("<f4").tobytes())
    header = json.dumps({"encoding": encoding.to_dict(),
                         "seed": seed if encoding.rotate else None, "shapes": shapes},
                        sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(header) > MAX_HEADER:
        raise ValueError(f"header of {len(header)} bytes exceeds {MAX_HEADER}")
    body = b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header, *parts])
    body += _CRC.pack(zlib.crc32(body))
    report = EncodeReport(len(body), 4 * sum(sizes), time.perf_counter() - t0, nq,
                          len(sizes) - nq)
    return body, report


def decode_update(data: bytes | bytearray | memoryview, shapes: Sequence[Sequence[int]],
                  expected: Encoding, seed: int | None = None) -> list[np.ndarray]:
    """Decode a body made by :func:`encode_update` into float32 arrays of ``shapes``.

    ``expected`` is the encoding the plan asked for and ``seed`` the task's seed (needed
    when it rotates); anything else is refused with :class:`EncodingError`.
    """
    buf = memoryview(data).cast("B")
    if len(buf) < _PREFIX.size + _CRC.size:
        raise EncodingError("truncated" if MAGIC.startswith(bytes(buf[:4])) and len(buf)
                            else "malformed", f"{len(buf)} bytes is shorter than any update")
    magic, version, hlen = _PREFIX.unpack_from(buf, 0)
    if magic != MAGIC:
        raise EncodingError("malformed", "not an encoded update (bad magic)")
    if version != FORMAT_VERSION:
        raise EncodingError("wrong_version", f"format version {version}, "
                                             f"expected {FORMAT_VERSION}")
    if hlen > MAX_HEADER:
        raise EncodingError("malformed", f"header length {hlen} exceeds {MAX_HEADER}")
    start = _PREFIX.size + hlen
    if len(buf) < start + _CRC.size:
        raise EncodingError("truncated", "body ends inside the header")
    header = _parse_header(bytes(buf[_PREFIX.size:start]))
    enc = header["encoding"]
    if enc != expected:
        raise EncodingError("wrong_encoding", f"update is {enc.to_json()}, "
                                              f"the plan asks for {expected.to_json()}")
    if expected.rotate and (seed is None or header["seed"] != seed):
        raise EncodingError("wrong_seed", "update was rotated with another seed")
    want = [[int(d) for d in s] for s in shapes]
    if header["shapes"] != want:
        raise EncodingError("shape_mismatch", f"update has shapes {header['shapes'][:8]}..., "
                                              f"expected {want[:8]}...")
    sizes = [math.prod(s) for s in want]
    total = start + sum(enc.tensor_bytes(n) for n in sizes) + _CRC.size
    if len(buf) < total:
        raise EncodingError("truncated", f"{len(buf)} bytes, the header implies {total}")
    if len(buf) > total:
        raise EncodingError("oversized", f"{len(buf)} bytes, the header implies {total}")
    (crc,) = _CRC.unpack_from(buf, total - _CRC.size)
    if zlib.crc32(buf[: total - _CRC.size]) != crc:
        raise EncodingError("corrupt", "checksum mismatch")
    out, off = [], start
    for i, (n, shape) in enumerate(zip(sizes, want, strict=True)):
        v, off = _read_tensor(buf, off, i, n, enc)
        if enc.rotate and enc.compressed(n):
            assert seed is not None
            v = unrotate(v, n, seed, stream=i, max_block=enc.max_block)
        if not np.all(np.isfinite(v)):
            raise EncodingError("bad_value", f"tensor {i} decodes to non-finite values")
        out.append(v.reshape(shape))
    return out


def _parse_header(raw: bytes) -> dict:
    try:
        h = json.loads(raw.decode("utf-8"))
        if not isinstance(h, dict) or set(h) != {"encoding", "seed", "shapes"}:
            raise ValueError("header keys")
        if isinstance(h["encoding"], dict) and h["encoding"].get("version") != FORMAT_VERSION:
            raise EncodingError("wrong_version", f"encoding version "
                                f"{h['encoding'].get('version')!r}, expected {FORMAT_VERSION}")
        enc = Encoding.from_dict(h["encoding"])
        shapes, seed = h["shapes"], h["seed"]
        if (not isinstance(shapes, list) or len(shapes) > MAX_TENSORS
                or not all(isinstance(s, list) and len(s) <= 8 and all(
                    isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 32
                    for d in s) for s in shapes)
                or any(math.prod(s) >= 1 << 40 for s in shapes)):
            raise ValueError("shapes")
        if seed is not None and (not isinstance(seed, int) or not 0 <= seed < 1 << 64):
            raise ValueError("seed")
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise EncodingError("malformed", f"unreadable header ({e})") from None
    return {"encoding": enc, "seed": seed, "shapes": shapes}


def _read_tensor(buf: memoryview, off: int, i: int, n: int, enc: Encoding
                 ) -> tuple[np.ndarray, int]:
    """Tensor ``i`` (``n`` values) at ``off``: its float32 coordinates and the next offset."""
    m = enc.coords(n)
    if not (enc.quantized and enc.compressed(n)):
        v = np.frombuffer(buf, dtype="<f4", count=m, offset=off).astype(np.float32)
        return v, off + 4 * m
    nc = n_chunks(m, enc.chunk)
    scale = np.frombuffer(buf, dtype="<f4", count=nc, offset=off).astype(np.float32)
    offset = np.frombuffer(buf, dtype="<f4", count=nc, offset=off + 4 * nc).astype(np.float32)
    if not (np.all(np.isfinite(scale)) and np.all(scale >= 0) and np.all(np.isfinite(offset))):
        raise EncodingError("bad_scale", f"tensor {i} has a non-finite or negative scale")
    off += 8 * nc
    nb = packed_size(m, enc.bits)
    codes = np.frombuffer(buf, dtype=np.uint8, count=nb, offset=off).copy()
    with np.errstate(over="ignore", invalid="ignore"):
        top = offset.astype(np.float64) + levels(enc.bits) * scale.astype(np.float64)
    if not np.all(np.abs(top) < np.finfo(np.float32).max):
        raise EncodingError("bad_scale", f"tensor {i}'s grid overflows float32")
    grid = Grid(scale, offset, m, enc.bits, enc.chunk, shared=False)
    return dequantize(QuantizedTensor(codes, grid)), off + nb
