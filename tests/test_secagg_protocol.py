"""A secure round end to end (in-process phones): exactness, dropouts, bad input, secrecy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_support import CHI2_HIGH, CHI2_LOW, chi_square_top_byte

from fedkb.compression.field import decode_sum, encode, modulus_bits, sum_mod
from fedkb.compression.quantize import quantize, shared_grid
from fedkb.secagg.client import Phase as PhonePhase
from fedkb.secagg.client import Phone
from fedkb.secagg.inprocess import DROP_POINTS, run_round
from fedkb.secagg.messages import (
    Abort,
    KeyRoster,
    MaskedInput,
    Refusal,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
    pack_residues,
    unpack_residues,
)
from fedkb.secagg.params import RoundParams
from fedkb.secagg.server import SecAggServer, SumResult

BITS = 8
DIM = 300
SEED = bytes(range(32))


def params(n=7, t=4, dim=DIM, degree=None, rid="r1") -> RoundParams:
    return RoundParams(rid, tuple(range(1, n + 1)), t, dim, modulus_bits(BITS, n), degree,
                       SEED if degree else b"")


def inputs(p: RoundParams, seed=0, radius=1.0):
    rng = np.random.default_rng(seed)
    grid = shared_grid(p.dim, BITS, radius, chunk=128)
    floats = {u: rng.uniform(-radius, radius, p.dim).astype(np.float32) for u in p.clients}
    res = {u: encode(quantize(floats[u], BITS, 128, rng, grid=grid), p.k) for u in p.clients}
    return floats, grid, res


def expect_sum(outcome, res, survivors, k):
    assert isinstance(outcome, SumResult), outcome
    assert outcome.survivors == tuple(sorted(survivors))
    assert np.array_equal(outcome.total, sum_mod([res[u] for u in survivors], k))


@pytest.mark.parametrize("degree,n,t", [(None, 8, 5), (6, 20, 11)])
def test_sum_is_exact_mod_2k_and_within_quantization_error(degree, n, t):
    p = params(n, t, degree=degree)
    floats, grid, res = inputs(p)
    run = run_round(p, res)
    expect_sum(run.outcome, res, p.clients, p.k)
    assert run.outcome.total.dtype == np.uint32
    decoded = decode_sum(run.outcome.total, n, grid, p.k)
    exact = np.sum([floats[u] for u in p.clients], axis=0)
    step = float(grid.scale.max())
    assert np.max(np.abs(decoded - exact)) <= n * step  # each summand is off by < 1 step
    assert np.max(np.abs(decoded - exact)) > 0  # quantized, not a copy of the floats


@pytest.mark.parametrize("point", DROP_POINTS)
@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_dropouts_at_each_phase_up_to_n_minus_t(point, count):
    p = params(7, 4)
    _, _, res = inputs(p, seed=count)
    gone = set(range(7, 7 - count, -1))
    run = run_round(p, res, drop={point: gone})
    in_sum = set(p.clients) - (gone if point != "after_masked_input" else set())
    expect_sum(run.outcome, res, in_sum, p.k)
    assert run.outcome.dropouts[point] == count
    assert sum(run.outcome.dropouts.values()) == count


@pytest.mark.parametrize("point,phase", list(zip(
    DROP_POINTS, ["advertise_keys", "share_keys", "masked_input_collection", "unmasking"],
    strict=True)))
def test_one_dropout_past_n_minus_t_aborts_with_the_reason(point, phase):
    p = params(7, 4)
    _, _, res = inputs(p)
    run = run_round(p, res, drop={point: {1, 3, 5, 7}})
    assert isinstance(run.outcome, Abort)
    assert run.outcome.phase == phase
    assert "3 phones left" in run.outcome.reason and "t=4" in run.outcome.reason


def test_dropouts_spread_over_all_phases_secagg_plus():
    p = params(20, 11, degree=8)
    _, _, res = inputs(p)
    drop = {"after_keys": {2}, "after_shares": {9, 15}, "after_masked_input": {20}}
    run = run_round(p, res, drop=drop)
    expect_sum(run.outcome, res, set(p.clients) - {2, 9, 15}, p.k)


# -- a manual driver for the cases the harness cannot stage
def to_relays(p):
    server, phones = SecAggServer(p), {u: Phone(u, p) for u in p.clients}
    for ph in phones.values():
        assert server.receive_advertise(ph.advertise()) is None
    roster = server.close_advertise()
    for ph in phones.values():
        assert server.receive_shares(ph.share_keys(roster)) is None
    return server, phones, server.close_shares()


def to_masked_phase(p, res):
    server, phones, relays = to_relays(p)
    masked = {u: phones[u].masked_input(relays[u], res[u]) for u in p.clients}
    return server, phones, relays, masked


def finish(server, phones, masked, skip=()):
    for u, m in masked.items():
        if not isinstance(m, Refusal) and u not in skip:
            assert server.receive_masked(m) is None
    req = server.close_masked()
    for u in req.survivors:
        assert server.receive_unmask(phones[u].unmask(req)) is None
    return server.close_unmask()


def test_late_phone_is_refused_and_stale_shares_are_caught():
    p = params(7, 4)
    _, _, res = inputs(p)
    server, phones, _, masked = to_masked_phase(p, res)
    for u in (1, 2, 3, 4, 5, 6):  # phone 7 is late with its masked input
        assert server.receive_masked(masked[u]) is None
    req = server.close_masked()
    late = server.receive_masked(masked[7])
    assert isinstance(late, Refusal) and late.code == "phase_closed"
    # a previous round's shares, relabelled for this round (a phone replaying stale state)
    old_p = dataclasses.replace(p, round_id="r0")
    _, _, _, old_masked = to_masked_phase(old_p, res)
    responses = {u: phones[u].unmask(req) for u in (1, 2, 3, 4, 5, 6)}
    assert isinstance(phones[7].unmask(req), Refusal)  # not a survivor
    old_server, old_phones, _, _ = to_masked_phase(old_p, res)
    for u in (1, 2, 3, 4, 5, 6):
        old_server.receive_masked(old_masked[u])
    stale = old_phones[1].unmask(UnmaskRequest("r0", req.survivors))
    responses[1] = dataclasses.replace(stale, round_id="r1")
    for r in responses.values():
        assert server.receive_unmask(r) is None
    late_unmask = server.receive_unmask(UnmaskResponse("r1", 7, {}, {}))
    assert late_unmask is not None and late_unmask.code == "not_eligible"
    out = server.close_unmask()
    expect_sum(out, res, {1, 2, 3, 4, 5, 6}, p.k)
    assert [r.code for r in server.refusals] == ["phase_closed", "not_eligible", "bad_shares"]


def with_ct(relay: ShareRelay, sender: int, blob: bytes) -> ShareRelay:
    return dataclasses.replace(relay, ciphertexts={**relay.ciphertexts, sender: blob})


def test_forged_replayed_and_misdelivered_ciphertexts_stop_the_phone_not_the_sum():
    p = params(8, 4)
    _, _, res = inputs(p)
    _, _, old_relays = to_relays(dataclasses.replace(p, round_id="r0"))
    server, phones, relays = to_relays(p)
    forged = bytearray(relays[2].ciphertexts[5])
    forged[-1] ^= 1
    bad = {2: with_ct(relays[2], 5, bytes(forged)),
           3: with_ct(relays[3], 5, old_relays[3].ciphertexts[5]),  # replayed from r0
           4: with_ct(relays[4], 6, relays[5].ciphertexts[6])}  # 6's shares for 5, sent to 4
    masked = {u: phones[u].masked_input(bad.get(u, relays[u]), res[u]) for u in p.clients}
    for u in (2, 3, 4):
        assert isinstance(masked[u], Refusal) and masked[u].code == "bad_ciphertext", masked[u]
        assert "fails authentication" in masked[u].reason
        assert phones[u].phase is PhonePhase.ABORTED
    out = finish(server, phones, masked)
    expect_sum(out, res, {1, 5, 6, 7, 8}, p.k)
    assert out.dropouts["after_shares"] == 3


def test_relay_for_another_phone_is_refused():
    p = params(5, 3)
    _, _, res = inputs(p)
    _, phones, relays = to_relays(p)
    r = phones[1].masked_input(relays[2], res[1])
    assert isinstance(r, Refusal) and r.code == "misdelivered"


def test_bad_masked_vectors_are_refused_and_leave_the_sum_alone():
    p = params(7, 4)
    _, _, res = inputs(p)
    server, phones, _, masked = to_masked_phase(p, res)
    m = masked[3]
    y = unpack_residues(m.data, p.k, p.dim)
    wide = y.copy()
    wide[0] = 2**p.k  # one entry outside Z_2^k
    assert (p.dim * p.k) % 8, "the padding case below needs unused bits in the last byte"
    padded = m.data[:-1] + bytes([m.data[-1] | 0x80])  # a bit past the last entry
    bad = [dataclasses.replace(m, k=p.k + 1),
           dataclasses.replace(m, length=p.dim - 1),
           dataclasses.replace(m, data=m.data[:-2]),
           dataclasses.replace(m, data=pack_residues(wide, p.k + 8)),  # wrong bit width
           dataclasses.replace(m, data=padded),
           MaskedInput(p.round_id, 3, p.k, p.dim, pack_residues(wide, 24)[: p.dim * 2])]
    for b in bad:
        r = server.receive_masked(b)
        assert isinstance(r, Refusal) and r.code == "bad_vector", r
    acc_before = server._acc.copy()
    assert server.receive_masked(masked[2]) is None
    dup = server.receive_masked(masked[2])
    assert isinstance(dup, Refusal) and dup.code == "duplicate"
    assert np.array_equal(server._acc, (acc_before + unpack_residues(
        masked[2].data, p.k, p.dim)).astype(server._acc.dtype))
    other_round = server.receive_masked(dataclasses.replace(masked[4], round_id="r9"))
    assert isinstance(other_round, Refusal) and other_round.code == "wrong_round"
    out = finish(server, phones, masked, skip={2, 3})
    expect_sum(out, res, {1, 2, 4, 5, 6, 7}, p.k)  # 3 is a dropout; its mask is removed


def test_shares_for_the_wrong_peer_are_refused():
    p = params(7, 4)
    _, _, res = inputs(p)
    server, phones, _, masked = to_masked_phase(p, res)
    for u in range(1, 7):
        assert server.receive_masked(masked[u]) is None
    req = server.close_masked()  # 7 dropped: s_SK-shares of 7, b-shares of 1..6
    resp = {u: phones[u].unmask(req) for u in req.survivors}
    r1, r2 = resp[1], resp[2]
    assert set(r1.b_shares) == set(range(1, 7)) and set(r1.sk_shares) == {7}
    attempts = [
        dataclasses.replace(r1, b_shares={u: b for u, b in r1.b_shares.items() if u != 2},
                            sk_shares={**r1.sk_shares, 2: r1.b_shares[2]}),  # sk of survivor
        dataclasses.replace(r1, b_shares={**r1.b_shares, 7: r1.sk_shares[7]}),  # both for 7
        dataclasses.replace(r1, b_shares={**r1.b_shares, 3: r2.b_shares[3]}),  # 2's share
        dataclasses.replace(r1, b_shares={**r1.b_shares, 3: b"\x00" * 5}),
    ]
    codes = []
    for a in attempts:
        r = server.receive_unmask(a)
        assert isinstance(r, Refusal)
        codes.append(r.code)
    assert codes == ["wrong_peer", "both_shares", "wrong_peer", "bad_share"]
    for r in resp.values():
        assert server.receive_unmask(r) is None
    expect_sum(server.close_unmask(), res, set(range(1, 7)), p.k)


def test_a_phone_answers_unmask_once_and_only_for_a_sane_survivor_set():
    p = params(7, 4)
    _, _, res = inputs(p)
    _, phones, _, _ = to_masked_phase(p, res)
    few = phones[1].unmask(UnmaskRequest("r1", (1, 2, 3)))
    assert isinstance(few, Refusal) and few.code == "too_few"
    ok = phones[2].unmask(UnmaskRequest("r1", (1, 2, 3, 4, 5)))
    assert isinstance(ok, UnmaskResponse)
    assert not set(ok.b_shares) & set(ok.sk_shares)
    again = phones[2].unmask(UnmaskRequest("r1", (2, 3, 4, 5)))  # would reveal sk of 1
    assert isinstance(again, Refusal) and again.code == "wrong_phase"
    outsider = phones[3].unmask(UnmaskRequest("r1", (1, 2, 4, 5, 6)))
    assert isinstance(outsider, Refusal) and outsider.code == "bad_survivors"


def test_a_phone_refuses_a_roster_without_its_own_keys():
    p = params(5, 3)
    phones = {u: Phone(u, p) for u in p.clients}
    ads = {u: ph.advertise() for u, ph in phones.items()}
    keys = {u: (a.c_pk, a.s_pk) for u, a in ads.items()}
    keys[1] = (keys[1][0], keys[2][1])
    r = phones[1].share_keys(KeyRoster("r1", keys))
    assert isinstance(r, Refusal) and r.code == "bad_roster"


def _arrays_and_bytes(obj, seen=None):
    """Everything reachable from obj's attributes (dicts, sequences, dataclasses)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray | bytes | bytearray):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _arrays_and_bytes(k, seen)
            yield from _arrays_and_bytes(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from _arrays_and_bytes(v, seen)
    elif hasattr(obj, "__dict__"):
        yield from _arrays_and_bytes(vars(obj), seen)


def test_the_server_never_holds_a_plaintext_vector_and_masked_vectors_look_uniform():
    p = params(8, 5, dim=20_000)
    _, _, res = inputs(p)
    captured: list[MaskedInput] = []
    states: list[list] = []

    def spy(stage, m):
        if stage == "masked":
            captured.append(m)
        if stage == "unmask":  # mid-round: after every masked input was folded in
            states.append(list(_arrays_and_bytes(run_server[0])))
        return m

    run_server: list[SecAggServer] = []
    orig_init = SecAggServer.__init__

    def init(self, params):
        orig_init(self, params)
        run_server.append(self)

    SecAggServer.__init__ = init
    try:
        run = run_round(p, res, drop={"after_shares": {8}}, tamper=spy)
    finally:
        SecAggServer.__init__ = orig_init
    expect_sum(run.outcome, res, set(range(1, 8)), p.k)
    plains = [res[u] for u in p.clients]
    plain_bytes = {pack_residues(x, p.k) for x in plains} | {x.tobytes() for x in plains}
    for held in [*states[0], *_arrays_and_bytes(run.server)]:
        if isinstance(held, np.ndarray):
            assert not any(held.shape == x.shape and np.array_equal(held, x) for x in plains)
        else:
            assert bytes(held) not in plain_bytes
    assert len(captured) == 7
    for m in captured:
        y = unpack_residues(m.data, p.k, p.dim)
        assert CHI2_LOW < chi_square_top_byte(y, p.k) < CHI2_HIGH
    assert chi_square_top_byte(res[1], p.k) > CHI2_HIGH  # the test can tell codes apart


def test_secagg_plus_phone_refuses_unmask_when_its_neighbourhood_is_gone():
    p = params(20, 11, degree=4)  # holders: 5 per phone, share threshold 3
    _, _, res = inputs(p)
    _, phones, _, _ = to_masked_phase(p, res)
    u = 1
    nbrs = sorted(p.peers(u))
    survivors = tuple(sorted(set(p.clients) - set(nbrs[:3])))  # 1 and one neighbour left
    assert len(survivors) >= p.threshold
    r = phones[u].unmask(UnmaskRequest("r1", survivors))
    assert isinstance(r, Refusal) and r.code == "too_few" and "holders" in r.reason


def test_server_refuses_bad_advertise_and_share_messages():
    from fedkb.secagg.messages import AdvertiseKeys, ShareKeys

    p = params(5, 3)
    server, phones = SecAggServer(p), {u: Phone(u, p) for u in p.clients}
    ads = {u: ph.advertise() for u, ph in phones.items()}
    for a in ads.values():
        assert server.receive_advertise(a) is None
    codes = [server.receive_advertise(ads[1]).code,
             server.receive_advertise(AdvertiseKeys("r1", 9, bytes(32), bytes(32))).code]
    p6 = params(6, 3)
    s6 = SecAggServer(p6)
    for a in ads.values():
        s6.receive_advertise(a)
    codes.append(s6.receive_advertise(AdvertiseKeys("r1", 6, ads[1].c_pk, bytes(32))).code)
    roster = server.close_advertise()
    shares = {u: ph.share_keys(roster) for u, ph in phones.items()}
    m = shares[1]
    short = {**m.ciphertexts, 2: m.ciphertexts[2][:-1]}
    codes += [server.receive_shares(ShareKeys("r1", 1, {2: m.ciphertexts[2]}, m.b_commitment)).code,
              server.receive_shares(ShareKeys("r1", 1, short, m.b_commitment)).code]
    assert server.receive_shares(m) is None
    codes.append(server.receive_shares(m).code)  # replayed
    assert codes == ["duplicate", "not_eligible", "reused_key", "bad_recipients",
                     "bad_ciphertext", "duplicate"]
    for u in (2, 3, 4, 5):
        assert server.receive_shares(shares[u]) is None
    relays = server.close_shares()
    _, _, res = inputs(p)
    masked = {u: phones[u].masked_input(relays[u], res[u]) for u in p.clients}
    expect_sum(finish(server, phones, masked), res, set(p.clients), p.k)


@pytest.mark.parametrize("k", [1, 5, 8, 13, 16, 20, 32, 33, 64])
def test_residues_pack_k_bits_each_and_round_trip(k):
    from fedkb.secagg.messages import CHUNK, packed_size
    from fedkb.secagg.prg import work_dtype

    rng = np.random.default_rng(k)
    for length in (0, 1, 7, 9, CHUNK - 1, CHUNK + 3, 2 * CHUNK + 5):
        hi = 2**k - 1
        y = (rng.integers(0, 2**min(k, 63), length, dtype=np.uint64) & np.uint64(hi)).astype(
            work_dtype(k))
        if length:
            y[-1] = hi  # the top bits of the last entry are real bits, not padding
        raw = pack_residues(y, k)
        assert len(raw) == packed_size(length, k) == -(-length * k // 8)
        back = unpack_residues(raw, k, length)
        assert back.dtype == work_dtype(k) and np.array_equal(back, y)
    # the first entry's bits are the first bits of the first byte, least significant first
    assert pack_residues(np.array([1, 0], dtype=work_dtype(k)), k)[0] & 1 == 1
