"""t-of-n Shamir secret sharing of byte strings over the prime field GF(2^521 - 1).

A secret of at most :data:`MAX_SECRET_BYTES` bytes is read as a big-endian integer
``s < 2**512 < P`` (``P = 2**521 - 1``, a Mersenne prime, so the field is well known and
holds every 32-byte X25519 key or PRG seed with room to spare). The dealer draws a
polynomial ``f(X) = s + a_1 X + ... + a_{t-1} X^{t-1}`` with coefficients from
:mod:`secrets` (the OS CSPRNG: uniform in ``[0, P)``, never a seeded generator) and hands
holder ``x`` the point ``(x, f(x))``. Any ``t`` points determine ``f`` and so
``s = f(0)`` (Lagrange interpolation); any ``t - 1`` points are consistent with every
possible secret, so a coalition of fewer than ``t`` holders learns nothing (Shamir 1979).

What is refused (:class:`ShamirError`, with the reason): ``t < 1`` or ``t > n``, a zero,
negative, duplicate or out-of-field x-coordinate (x = 0 would hand out the secret
itself), fewer than ``t`` shares, shares made for different thresholds, and share sets
that do not lie on one polynomial of degree ``< t`` (checked whenever more than ``t``
shares are given) or whose interpolated value is not a secret of the expected size.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import NamedTuple

P = (1 << 521) - 1
MAX_SECRET_BYTES = 64
Y_BYTES = 66  # ceil(521 / 8)
X_LIMIT = 1 << 32  # holder ids are 32-bit (they travel as 4 bytes)


class ShamirError(ValueError):
    """A sharing that cannot be made or a share set that cannot be combined."""


class Share(NamedTuple):
    """Holder ``x``'s point ``(x, f(x))`` of a degree ``t - 1`` polynomial (a NamedTuple:
    the server parses hundreds of thousands per round)."""

    x: int
    y: int
    t: int

    def to_bytes(self) -> bytes:
        """4-byte x, 2-byte t, 66-byte y, big-endian: 72 bytes."""
        return (self.x.to_bytes(4, "big") + self.t.to_bytes(2, "big")
                + self.y.to_bytes(Y_BYTES, "big"))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        if len(raw) != SHARE_BYTES:
            raise ShamirError(f"a share is {SHARE_BYTES} bytes, not {len(raw)}")
        x = int.from_bytes(raw[:4], "big")
        t = int.from_bytes(raw[4:6], "big")
        y = int.from_bytes(raw[6:], "big")
        _check_x(x)
        if t < 1:
            raise ShamirError("a share's threshold must be at least 1")
        if y >= P:
            raise ShamirError("a share's value is outside the field")
        return cls(x, y, t)


SHARE_BYTES = 4 + 2 + Y_BYTES


def _check_x(x: int) -> None:
    if not 0 < x < X_LIMIT:
        raise ShamirError(f"x-coordinate {x} must be in [1, 2^32): x = 0 is the secret")


def split(secret: bytes, t: int, xs: Sequence[int]) -> list[Share]:
    """Shares of ``secret`` for holders ``xs`` (distinct, non-zero); any ``t`` recover it."""
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ShamirError(f"a secret is 1 to {MAX_SECRET_BYTES} bytes, not {len(secret)}")
    n = len(xs)
    if not 1 <= t <= n:
        raise ShamirError(f"threshold t={t} must be in [1, n={n}]")
    if t >= 1 << 16:
        raise ShamirError("threshold too large")
    for x in xs:
        _check_x(x)
    if len(set(xs)) != n:
        raise ShamirError("duplicate x-coordinates")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(P) for _ in range(t - 1)]
    top_down = coeffs[::-1]
    out = []
    for x in xs:
        acc = 0
        for c in top_down:  # Horner
            acc = (acc * x + c) % P
        out.append(Share(x, acc, t))
    return out


def _validate(shares: Sequence[Share]) -> int:
    if not shares:
        raise ShamirError("no shares")
    ts = {s.t for s in shares}
    if len(ts) != 1:
        raise ShamirError(f"shares made for different thresholds {sorted(ts)}")
    t = ts.pop()
    xs = [s.x for s in shares]
    for x in xs:
        _check_x(x)
    if len(set(xs)) != len(xs):
        raise ShamirError("duplicate x-coordinates")
    if any(not 0 <= s.y < P for s in shares):
        raise ShamirError("a share's value is outside the field")
    if len(shares) < t:
        raise ShamirError(f"{len(shares)} shares, {t} needed")
    return t


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients ``l_i`` with ``f(0) = sum l_i f(x_i)`` for any f of degree < len(xs)."""
    return lagrange_at(xs, 0)


def lagrange_at(xs: Sequence[int], at: int) -> list[int]:
    """Coefficients ``l_i`` with ``f(at) = sum l_i f(x_i)`` (one batched inversion)."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (at - xj) % P
                den = den * (xi - xj) % P
        nums.append(num)
        dens.append(den)
    # Montgomery's trick: invert the product once, then peel off each factor.
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % P)
    inv = pow(prefix[-1], -1, P)
    invs = [0] * len(dens)
    for i in range(len(dens) - 1, -1, -1):
        invs[i] = inv * prefix[i] % P
        inv = inv * dens[i] % P
    return [n * v % P for n, v in zip(nums, invs, strict=True)]


def interpolate(shares: Sequence[Share], coeffs: Sequence[int] | None = None) -> int:
    """``f(0)`` from exactly the given points (``coeffs``: cached :func:`lagrange_at_zero`)."""
    if coeffs is None:
        coeffs = lagrange_at_zero([s.x for s in shares])
    return sum(c * s.y for c, s in zip(coeffs, shares, strict=True)) % P


def to_secret(value: int, size: int) -> bytes:
    """The ``size``-byte secret an interpolated ``value`` stands for, or :class:`ShamirError`."""
    if not 1 <= size <= MAX_SECRET_BYTES:
        raise ShamirError(f"a secret is 1 to {MAX_SECRET_BYTES} bytes, not {size}")
    if value >> (8 * size):
        raise ShamirError(f"the shares do not interpolate to a {size}-byte secret")
    return value.to_bytes(size, "big")


def combine(shares: Sequence[Share], size: int) -> bytes:
    """The ``size``-byte secret behind ``shares``; every share beyond ``t`` must agree.

    With exactly ``t`` shares any points interpolate to *some* value, so a wrong share is
    caught only if the value is out of range; callers that can, check the result against
    a commitment (the protocol checks a masking key against its public key).
    """
    t = _validate(shares)
    base = list(shares[:t])
    xs = [s.x for s in base]
    for extra in shares[t:]:
        at = lagrange_at(xs, extra.x)
        if interpolate(base, at) != extra.y:
            raise ShamirError(f"inconsistent shares: holder {extra.x}'s point is not on the "
                              f"polynomial of the first {t}")
    return to_secret(interpolate(base), size)
