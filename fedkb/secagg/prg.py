"""The mask generator: AES-256-CTR keyed by a full 256-bit seed, read as a vector in Z_{2^k}.

A mask must look uniform to anyone without the seed, so it comes from a real stream
cipher (AES-256 in counter mode from ``cryptography``, AES-NI where the CPU has it),
keyed with the whole 32-byte seed: an agreed pairwise key from :func:`~.keys.derive` or
a phone's fresh self-mask seed ``b``. No NumPy generator and no seed folded to 32 bits
(the flaw of Flower#7522: 2^32 seeds can be searched). Each seed keys one mask only, so
the counter can start at zero.

The keystream is read as little-endian unsigned words of the smallest width that holds
k bits (:func:`work_dtype`) and cut to k bits; the low k bits of uniform words are
uniform over Z_{2^k}. All arithmetic is NumPy on unsigned words: addition and
subtraction wrap modulo 2^width, and since 2^k divides 2^width one final mask gives the
result mod 2^k.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_NONCE = bytes(16)


def work_dtype(k: int) -> np.dtype:
    """uint8/16/32/64: the narrowest unsigned word holding k bits (1 <= k <= 64)."""
    if not 1 <= k <= 64:
        raise ValueError(f"modulus bits must be in [1, 64], not {k}")
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if k <= 8 * np.dtype(dt).itemsize:
            return np.dtype(dt)
    raise AssertionError("unreachable")


def low_bits(k: int, dtype: np.dtype) -> np.unsignedinteger:
    return dtype.type((1 << k) - 1)


class MaskStream:
    """Expands seeds into masks of one length and modulus, reusing its buffers."""

    def __init__(self, length: int, k: int) -> None:
        if length < 0:
            raise ValueError("length must be non-negative")
        self.length = length
        self.k = k
        self.dtype = work_dtype(k)
        self.nbytes = length * self.dtype.itemsize
        self._zeros = bytes(self.nbytes)
        self._buf = bytearray(self.nbytes + 15)  # update_into wants block_size - 1 spare
        self._view = np.frombuffer(self._buf, dtype=self.dtype, count=length)

    def words(self, seed: bytes) -> np.ndarray:
        """The raw keystream as words (a view of the shared buffer, overwritten next call)."""
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a mask seed is {SEED_BYTES} bytes, not {len(seed)}")
        enc = Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()
        enc.update_into(self._zeros, self._buf)
        return self._view

    def mask(self, seed: bytes) -> np.ndarray:
        """A fresh array: the mask in Z_{2^k}."""
        return np.bitwise_and(self.words(seed), low_bits(self.k, self.dtype))

    def add(self, acc: np.ndarray, seed: bytes, sign: int = 1) -> None:
        """``acc += sign * mask(seed)`` modulo 2^width (mask acc to k bits when done)."""
        if acc.dtype != self.dtype or acc.shape != (self.length,):
            raise ValueError(f"accumulator must be {self.dtype}[{self.length}]")
        w = self.words(seed)
        if sign > 0:
            np.add(acc, w, out=acc)
        else:
            np.subtract(acc, w, out=acc)


def reduce(acc: np.ndarray, k: int) -> np.ndarray:
    """``acc mod 2^k`` in place; returns acc."""
    np.bitwise_and(acc, low_bits(k, acc.dtype), out=acc)
    return acc
