"""The building blocks: keys (X25519/HKDF/AES-GCM), the mask PRG, messages, SecAgg+ graphs."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pytest
from secagg_support import CHI2_HIGH, CHI2_LOW, chi_square_top_byte

from fedkb.secagg import graph, keys, prg
from fedkb.secagg.messages import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    MessageError,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    pack_residues,
    unpack_residues,
)
from fedkb.secagg.params import RoundParams, threshold_count


# -- keys
def test_both_ends_derive_the_same_key_and_purposes_differ():
    a, b = keys.KeyPair.generate(), keys.KeyPair.generate()
    kab = keys.derive(a.private, b.public, purpose="mask", round_id="r1", a=3, b=9)
    kba = keys.derive(b.private, a.public, purpose="mask", round_id="r1", a=9, b=3)
    assert kab == kba and len(kab) == 32
    assert kab != keys.derive(a.private, b.public, purpose="enc", round_id="r1", a=3, b=9)
    assert kab != keys.derive(a.private, b.public, purpose="mask", round_id="r2", a=3, b=9)


def test_private_key_round_trips_through_bytes():
    a = keys.KeyPair.generate()
    assert keys.KeyPair.from_private_bytes(a.private_bytes()).public == a.public


def test_seal_binds_round_sender_and_recipient():
    k = secrets.token_bytes(32)
    blob = keys.seal(k, b"shares", round_id="r1", sender=1, recipient=2)
    assert len(blob) == keys.sealed_size(6)
    assert keys.open_sealed(k, blob, round_id="r1", sender=1, recipient=2) == b"shares"
    for kw in ({"round_id": "r2", "sender": 1, "recipient": 2},
               {"round_id": "r1", "sender": 3, "recipient": 2},
               {"round_id": "r1", "sender": 1, "recipient": 3}):
        with pytest.raises(keys.CryptoError, match="fails authentication"):
            keys.open_sealed(k, blob, **kw)
    flipped = bytearray(blob)
    flipped[20] ^= 1
    with pytest.raises(keys.CryptoError):
        keys.open_sealed(k, bytes(flipped), round_id="r1", sender=1, recipient=2)


def test_key_sizes_are_checked():
    with pytest.raises(keys.CryptoError):
        keys.public_key(b"x" * 31)
    with pytest.raises(keys.CryptoError):
        keys.KeyPair.from_private_bytes(b"x" * 33)


# -- PRG
def test_prg_is_a_function_of_the_full_seed():
    s = prg.MaskStream(1000, 17)
    seed = secrets.token_bytes(32)
    m1, m2 = s.mask(seed), s.mask(seed)
    assert np.array_equal(m1, m2) and m1.dtype == np.uint32 and int(m1.max()) < 2**17
    other = bytearray(seed)
    other[31] ^= 1  # the last byte matters: no truncation or 32-bit fold of the seed
    assert not np.array_equal(m1, s.mask(bytes(other)))
    with pytest.raises(ValueError, match="32 bytes"):
        s.mask(seed[:16])


def test_prg_add_and_subtract_cancel_mod_2k():
    s = prg.MaskStream(500, 13)
    acc = np.arange(500, dtype=np.uint16)
    seed = secrets.token_bytes(32)
    s.add(acc, seed, 1)
    s.add(acc, seed, -1)
    assert np.array_equal(prg.reduce(acc, 13), np.arange(500))


@pytest.mark.parametrize("k", [12, 17, 33])
def test_masks_are_uniform_over_z_2k(k):
    m = prg.MaskStream(100_000, k).mask(secrets.token_bytes(32))
    assert CHI2_LOW < chi_square_top_byte(m, k) < CHI2_HIGH


def test_the_uniformity_test_can_fail():
    codes = np.random.default_rng(0).integers(0, 256, 100_000).astype(np.uint32)
    assert chi_square_top_byte(codes, 17) > CHI2_HIGH  # 8-bit codes in a 17-bit field


@pytest.mark.parametrize("k,dt", [(8, np.uint8), (9, np.uint16), (17, np.uint32), (33, np.uint64)])
def test_work_dtype(k, dt):
    assert prg.work_dtype(k) == dt


# -- residues on the wire
@pytest.mark.parametrize("k", [1, 3, 7, 13, 16, 17, 24, 25, 31, 32, 40])
def test_residues_pack_to_k_bits_each(k):
    y = prg.MaskStream(999, k).mask(secrets.token_bytes(32))
    raw = pack_residues(y, k)
    assert len(raw) == -(-999 * k // 8)
    assert np.array_equal(unpack_residues(raw, k, 999), y)
    # the packing is the bit stream, least significant bit first (the reference: NumPy's
    # bit matrix, independent of the shifts pack_residues uses)
    w = y.dtype.itemsize
    bits = np.unpackbits(y.astype(f"<u{w}").view(np.uint8).reshape(-1, w), axis=1,
                         bitorder="little")[:, :k]
    assert raw == np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def test_unpack_refuses_wrong_length_and_padding():
    y = np.full(10, 2**17 - 1, dtype=np.uint32)
    raw = pack_residues(y, 18)  # 180 bits: 23 bytes, the last 4 bits padding
    with pytest.raises(MessageError, match="do not hold"):
        unpack_residues(raw, 17, 10)  # another modulus: another length
    with pytest.raises(MessageError, match="do not hold"):
        unpack_residues(raw[:-1], 18, 10)
    with pytest.raises(MessageError, match="padding bits"):
        unpack_residues(raw[:-1] + bytes([raw[-1] | 0x10]), 18, 10)


# -- messages
def test_messages_round_trip():
    k32 = secrets.token_bytes(32)
    msgs = [AdvertiseKeys("r1", 5, k32, k32[::-1]),
            KeyRoster("r1", {1: (k32, k32), 7: (k32, k32)}),
            ShareKeys("r1", 5, {1: b"ab", 2: b"cd"}, k32),
            MaskedInput("r1", 5, 17, 3, b"\x01" * 9),
            UnmaskRequest("r1", (1, 2, 5)),
            UnmaskResponse("r1", 5, {1: b"x"}, {2: b"y"})]
    for m in msgs:
        assert type(m).from_json(m.to_json()) == m


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.update(type="share_keys"), "expected"),
    (lambda d: d.update(extra=1), "unexpected"),
    (lambda d: d.pop("s_pk"), "missing"),
    (lambda d: d.update(sender=0), "phone id"),
    (lambda d: d.update(sender=True), "phone id"),
    (lambda d: d.update(c_pk="!!!"), "base64"),
    (lambda d: d.update(c_pk="AAAA"), "32 bytes"),
    (lambda d: d.update(round_id="r 1"), "round id"),
])
def test_messages_refuse_bad_fields(mutate, msg):
    d = AdvertiseKeys("r1", 5, bytes(32), bytes(32)).to_dict()
    mutate(d)
    with pytest.raises(MessageError, match=msg):
        AdvertiseKeys.from_json(json.dumps(d))


def test_id_maps_refuse_non_canonical_keys():
    d = ShareKeys("r1", 5, {1: b"ab"}, bytes(32)).to_dict()
    d["ciphertexts"] = {"01": d["ciphertexts"]["1"]}
    with pytest.raises(MessageError, match="canonical"):
        ShareKeys.from_json(d)
    with pytest.raises(MessageError, match="sorted"):
        UnmaskRequest.from_json({"type": "unmask_request", "round_id": "r", "survivors": [2, 1]})


# -- params
def test_threshold_as_count_or_fraction():
    assert threshold_count(0.5, 100) == 50
    assert threshold_count(0.01, 100) == 2
    assert threshold_count(7, 10) == 7
    for bad in (1, 11, 0.0, 1.5, True):
        with pytest.raises(ValueError):
            threshold_count(bad, 10)


def test_params_refuse_bad_rounds():
    with pytest.raises(ValueError, match="threshold"):
        RoundParams("r", (1, 2, 3), 4, 10, 17)
    with pytest.raises(ValueError, match="sorted"):
        RoundParams("r", (2, 1), 2, 10, 17)
    with pytest.raises(ValueError, match="graph seed"):
        RoundParams("r", (1, 2, 3), 2, 10, 17, degree=2)


# -- SecAgg+ graphs
@pytest.mark.parametrize("n", [20, 100, 500])
def test_harary_graph_is_regular_connected_and_survives_k_minus_1_removals(n):
    k = graph.default_degree(n)
    assert k % 2 == 0 and k <= 3 * np.log2(n) + 2
    ids = list(range(1, n + 1))
    g = graph.harary(ids, k, b"s" * 32)
    assert all(len(nb) == k and u not in nb for u, nb in g.items())
    assert all(u in g[v] for u in g for v in g[u])  # undirected
    assert graph.is_connected(g)
    rng = np.random.default_rng(n)
    for _ in range(5):
        removed = frozenset(rng.choice(ids, k - 1, replace=False).tolist())
        assert graph.is_connected(g, removed)


def test_graph_depends_on_the_public_seed_only():
    ids = list(range(1, 51))
    assert graph.harary(ids, 8, b"a" * 32) == graph.harary(ids, 8, b"a" * 32)
    assert graph.harary(ids, 8, b"a" * 32) != graph.harary(ids, 8, b"b" * 32)


def test_small_rounds_fall_back_to_the_complete_graph():
    g = graph.harary([1, 2, 3, 4], 4, b"s" * 32)
    assert all(len(nb) == 3 for nb in g.values())


def test_a_ring_is_cut_by_two_removals():
    g = graph.harary(list(range(1, 11)), 2, b"s" * 32)
    ring = graph.permutation(list(range(1, 11)), b"s" * 32)
    assert not graph.is_connected(g, frozenset({ring[0], ring[5]}))


def test_degree_for_grows_with_dropout_and_matches_the_binomial_tail():
    from math import ceil

    from fedkb.secagg.graph import _binom_cdf_below, degree_for

    ks = [degree_for(500, d, 0.502) for d in (0.0, 0.1, 0.3)]
    assert ks[0] < ks[1] < ks[2] < 499 and all(k % 2 == 0 for k in ks)
    k = ks[2]
    assert k > graph.default_degree(500)  # ~3 log2 n is not enough for 30% at t ~ n/2
    tail = _binom_cdf_below(k + 1, 0.7, ceil(0.502 * (k + 1)))
    below = _binom_cdf_below(k - 1, 0.7, ceil(0.502 * (k - 1)))
    assert 500 * tail <= 1e-3 < 500 * below
    assert degree_for(20, 0.3, 0.55) == 19  # small rounds: full SecAgg
