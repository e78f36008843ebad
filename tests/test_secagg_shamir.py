"""Shamir t-of-n over GF(2^521 - 1): recovery from any t, refusals of bad share sets."""

from __future__ import annotations

import itertools
import secrets

import pytest

from fedkb.secagg import shamir
from fedkb.secagg.shamir import P, ShamirError, Share, combine, split


def test_p_is_the_mersenne_prime_and_holds_a_32_byte_secret():
    assert P == 2**521 - 1
    assert pow(3, P - 1, P) == 1  # Fermat witness (P is a known Mersenne prime)
    assert 2 ** (8 * shamir.MAX_SECRET_BYTES) < P


@pytest.mark.parametrize("t,n", [(1, 1), (2, 3), (3, 5), (5, 5)])
def test_any_t_shares_recover_the_secret(t, n):
    secret = secrets.token_bytes(32)
    shares = split(secret, t, list(range(1, n + 1)))
    for subset in itertools.combinations(shares, t):
        assert combine(list(subset), 32) == secret
    assert combine(shares, 32) == secret  # all n, checked for consistency


def test_leading_zero_bytes_survive():
    secret = bytes(31) + b"\x07"
    assert combine(split(secret, 3, [4, 9, 11])[:3], 32) == secret


def test_shares_are_fresh_each_time():
    secret = secrets.token_bytes(32)
    a, b = split(secret, 3, [1, 2, 3]), split(secret, 3, [1, 2, 3])
    assert [s.y for s in a] != [s.y for s in b]


def test_share_bytes_round_trip():
    s = split(b"abc", 2, [7, 8])[0]
    assert Share.from_bytes(s.to_bytes()) == s
    assert len(s.to_bytes()) == shamir.SHARE_BYTES


@pytest.mark.parametrize("t,xs,msg", [
    (4, [1, 2, 3], "threshold"),
    (0, [1, 2, 3], "threshold"),
    (2, [1, 1, 2], "duplicate"),
    (2, [0, 1, 2], "x = 0"),
    (2, [-3, 1, 2], "x = 0"),
    (2, [1, 2**32], "x = 0"),
])
def test_split_refuses(t, xs, msg):
    with pytest.raises(ShamirError, match=msg):
        split(b"s" * 32, t, xs)


def test_split_refuses_bad_secret_sizes():
    with pytest.raises(ShamirError, match="1 to 64"):
        split(b"", 2, [1, 2])
    with pytest.raises(ShamirError, match="1 to 64"):
        split(b"x" * 65, 2, [1, 2])


def test_combine_refuses_bad_share_sets():
    shares = split(secrets.token_bytes(32), 3, [1, 2, 3, 4, 5])
    with pytest.raises(ShamirError, match="3 needed"):
        combine(shares[:2], 32)
    with pytest.raises(ShamirError, match="duplicate"):
        combine([shares[0], shares[0], shares[1]], 32)
    other = split(secrets.token_bytes(32), 2, [6, 7])
    with pytest.raises(ShamirError, match="different thresholds"):
        combine([*shares[:3], other[0]], 32)
    bad = Share(shares[4].x, (shares[4].y + 1) % P, 3)
    with pytest.raises(ShamirError, match="inconsistent"):
        combine([*shares[:4], bad], 32)
    with pytest.raises(ShamirError, match="outside the field"):
        combine([*shares[:2], Share(3, P, 3)], 32)


def test_wrong_shares_rarely_interpolate_to_a_secret():
    # exactly t shares, one replaced by a random point: the value lands below 2^256
    # with probability 2^-265
    shares = split(secrets.token_bytes(32), 3, [1, 2, 3])
    bad = [shares[0], shares[1], Share(3, secrets.randbelow(P), 3)]
    with pytest.raises(ShamirError, match="32-byte secret"):
        combine(bad, 32)


def test_from_bytes_refuses_garbage():
    with pytest.raises(ShamirError):
        Share.from_bytes(b"\x00" * 10)
    raw = bytearray(split(b"k", 2, [1, 2])[0].to_bytes())
    raw[:4] = b"\x00\x00\x00\x00"
    with pytest.raises(ShamirError, match="x = 0"):
        Share.from_bytes(bytes(raw))
