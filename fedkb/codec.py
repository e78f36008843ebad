"""Binary, pickle-free codec for lists of NumPy arrays.

One format is used everywhere weights travel or rest: the initial weights of an exported
model, server checkpoints, and the model updates devices upload. It imports NumPy only,
so the device runtime can use it without TensorFlow.

Layout (all integers little-endian)::

    b"FKBA" | u16 version=1 | u32 n_arrays
    per array: u8 len(dtype) | dtype str (e.g. b"<f4") | u8 ndim | u32 * ndim dims | raw bytes
    b"FKBZ" | u32 crc32 of everything before it

Only fixed-size numeric dtypes are allowed (no object arrays), so decoding never runs code.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

import numpy as np

MAGIC = b"FKBA"
TRAILER = b"FKBZ"
VERSION = 1
_ALLOWED_KINDS = {"f", "i", "u", "b"}


class CodecError(ValueError):
    """The bytes are not a valid array bundle (truncated, corrupt, or a forbidden dtype)."""


def encode_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """Serialise arrays (in order) into one self-checking byte string."""
    parts = [MAGIC, struct.pack("<HI", VERSION, len(arrays))]
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind not in _ALLOWED_KINDS:
            raise CodecError(f"dtype {a.dtype} cannot be encoded (numeric dtypes only)")
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        a = np.asarray(a, dtype=dt, order="C")
        ds = dt.str.encode("ascii")
        parts.append(struct.pack("<B", len(ds)) + ds)
        parts.append(struct.pack(f"<B{a.ndim}I", a.ndim, *a.shape))
        parts.append(a.tobytes(order="C"))
    body = b"".join(parts)
    return body + TRAILER + struct.pack("<I", zlib.crc32(body))


def decode_arrays(data: bytes | bytearray | memoryview, max_arrays: int = 4096) -> list[np.ndarray]:
    """Inverse of :func:`encode_arrays`; raises :class:`CodecError` on any malformation."""
    buf = memoryview(data)
    if len(buf) < 18 or bytes(buf[:4]) != MAGIC:
        raise CodecError("not an fedkb array bundle (bad magic)")
    if bytes(buf[-8:-4]) != TRAILER:
        raise CodecError("array bundle truncated (no trailer)")
    (crc,) = struct.unpack("<I", buf[-4:])
    body = buf[:-8]
    if zlib.crc32(body) != crc:
        raise CodecError("array bundle corrupt (checksum mismatch)")
    version, n = struct.unpack_from("<HI", body, 4)
    if version != VERSION:
        raise CodecError(f"unsupported array bundle version {version}")
    if n > max_arrays:
        raise CodecError(f"too many arrays ({n} > {max_arrays})")
    off = 10
    out: list[np.ndarray] = []
    try:
        for _ in range(n):
            (dl,) = struct.unpack_from("<B", body, off)
            off += 1
            dtype = np.dtype(bytes(body[off : off + dl]).decode("ascii"))
            off += dl
            if dtype.kind not in _ALLOWED_KINDS:
                raise CodecError(f"forbidden dtype {dtype}")
            (ndim,) = struct.unpack_from("<B", body, off)
            off += 1
            shape = struct.unpack_from(f"<{ndim}I", body, off)
            off += 4 * ndim
            # Python integers: np.prod in int64 wraps (2**31 * 2**31 * 4 is 0 there)
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > len(body) - off:
                raise CodecError("array bundle truncated (array data)")
            arr = np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize, offset=off)
            out.append(arr.reshape(shape).copy())
            off += nbytes
    except CodecError:
        raise
    except (struct.error, TypeError, ValueError) as exc:  # ValueError: odd dtype strings
        raise CodecError(f"array bundle malformed: {exc}") from exc
    if off != len(body):
        raise CodecError("array bundle has trailing bytes")
    return out
