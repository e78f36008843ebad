"""Secure aggregation on the HTTP round: the real server (create_app, Flask's test client)
and the real phone code (fedkb.device_runtime.secagg_client), every message through the
API as JSON. The protocol's math has its own tests (test_secagg_protocol.py); these are
about the round machine's phases and the wire: exactness, what the server keeps, dropouts
at every phase, late phones and hostile messages."""

from __future__ import annotations

import base64
import copy
import gc
import json
import logging
import sqlite3
import threading
import time

import numpy as np
import pytest
from secagg_http_support import (
    CLIP,
    SecureHarness,
    as_json_form,
    done,
    phone_delta,
    secure_harness,
)
from secagg_support import CHI2_HIGH, CHI2_LOW, chi_square_top_byte

from fedkb import wire
from fedkb.clipping import clip_update
from fedkb.compression.field import sum_mod
from fedkb.device_runtime.client import Retry
from fedkb.device_runtime.secagg_client import STOPPED, TRAIN, WAIT, SecureTask
from fedkb.secagg.messages import packed_size, unpack_residues
from fedkb.server import round_machine
from fedkb.server.app import create_app
from fedkb.server.config import (
    ClientConfig,
    CompressionConfig,
    ConfigError,
    PrivacyConfig,
    RoundConfig,
    SecAggConfig,
    ServerConfig,
    StrategyConfig,
)
from fedkb.server.rounds import percentile_higher
from fedkb.server.secure_round import POLL_S

N = 5  # t = ceil(0.6 * 5) = 3: up to n - t = 2 dropouts are survived


def expected_sum(sh: SecureHarness, members: list[int]) -> np.ndarray:
    return sum_mod([sh.codes(i).astype(np.uint32) for i in members], sh.round.secure.params.k)


def mean_bound(sh: SecureHarness) -> float:
    """A worst-case bound on the decoded mean's error: under one grid step per rotated
    coordinate, i.e. 2 * sigmas * C / L per rotation block, in norm."""
    layout = sh.round.secure.layout
    from fedkb.compression.rotate import block_sizes
    blocks = sum(len(block_sizes(n)) for n in layout.sizes)
    return float(np.sqrt(blocks) * 2 * layout.sigmas * CLIP / 255)


def _moved_by(h, before, want) -> float:
    """The L2 distance between the model's move and ``want``."""
    return np.sqrt(sum(float(np.sum(((b - a) - m) ** 2))
                       for a, b, m in zip(before, h.global_weights(), want, strict=True)))


EXAMPLES = [2, 4, 8, 16, 32]


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_the_secure_mean_is_weighted_by_examples_or_uniform(tmp_path, weighting):
    """With ``strategy.weighting = "examples"`` (the default), no DP and a previous round
    (its claims' 90th percentile 8: ŵ = 4 x 8 = 32 here), the model moves by FedAvg's
    example-weighted mean of the clipped deltas (each phone scales by ``min(n, ŵ) / ŵ``),
    though the server never sees one; with ``uniform`` by their plain mean. The two
    differ by more than the bound."""
    h = secure_harness(tmp_path, N, strategy=StrategyConfig(clip_norm=CLIP,
                                                             weighting=weighting))
    h.state.machine.last_examples_p90 = 8  # as if a round had committed: ŵ = 4 x 8
    before = h.global_weights()
    sh = SecureHarness(h, N, examples=EXAMPLES)
    assert sh.round.secure.weight_cap == (32 if weighting == "examples" else 0)
    sh.run()
    assert sh.round.state == "committed", sh.round.reason
    clipped = [clip_update(phone_delta(i), CLIP)[0] for i in range(N)]
    w = [e / 32 for e in EXAMPLES]
    assert [sh.weight(i) for i in range(N)] == (w if weighting == "examples" else [1.0] * N)
    weighted = [sum(wi * c[j] for wi, c in zip(w, clipped, strict=True)) / sum(w)
                for j in range(len(before))]
    uniform = [sum(c[j] for c in clipped) / N for j in range(len(before))]
    # each phone's rounding error is an unscaled delta's: the mean's grows as N / sum(w)
    bound = mean_bound(sh) * (N / sum(w) if weighting == "examples" else 1.0)
    want, other = (weighted, uniform) if weighting == "examples" else (uniform, weighted)
    assert _moved_by(h, before, want) < bound
    assert _moved_by(h, before, other) > 2 * bound


def test_the_cap_is_four_times_the_claims_p90_within_the_budget(tmp_path):
    """ŵ is 4x the 90th percentile of the last round's claims, at most the plan's budget:
    one phone claiming a huge count does not move it (a phone's rounding error does not
    shrink with its weight, so a ŵ blown up would drown every update), and a phone
    claiming more than ŵ weighs 1."""
    assert percentile_higher([5] * 19 + [10**6], 90) == 5  # RoundState.claim's
    assert percentile_higher([5, 1, 9], 90) == 9 and percentile_higher([], 90) == 0
    h = secure_harness(tmp_path, N, client=ClientConfig(max_steps=8))  # budget 4 x 8
    machine = h.state.machine
    machine.last_examples_p90 = 5  # e.g. 19 claims of 5 and one of a million: 4 x 5
    sh = SecureHarness(h, N, examples=[1, 2, 20, 21, 10_000])
    assert sh.round.secure.weight_cap == 20
    assert [sh.weight(i) for i in range(N)] == [0.05, 0.1, 1.0, 1.0, 1.0]
    machine.last_examples_p90 = 10  # 4 x 10 is above the budget of 32: the budget
    assert machine._secure_weight_cap(sh.round.plan) == 32


def test_the_first_secure_round_weighs_every_phone_one(tmp_path):
    """No round has committed yet, so there are no claims: weight 1 each. The round's
    claims are the next one's, and a restarted server reads them back from its row."""
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N, examples=EXAMPLES)
    assert sh.round.secure.weight_cap == 0
    sh.run()
    assert sh.round.state == "committed", sh.round.reason
    assert sh.round.stats.examples_p90 == 32  # of 2, 4, 8, 16, 32: the higher neighbour
    assert h.state.machine.last_examples_p90 == 32
    again = create_app(h.state.config, clock=h.clock)
    assert again.extensions["fedkb"].machine.last_examples_p90 == 32


def test_a_secure_round_commits_the_exact_sum(tmp_path):
    h = secure_harness(tmp_path, N)
    before = h.global_weights()
    sh = SecureHarness(h, N)
    assert [p.name for p in sh.round.phases] == [
        "selection", "advertise_keys", "share_keys", "masked_input", "unmasking"]
    sh.run()
    assert sh.round.state == "committed", sh.round.reason
    assert done(sh) == list(range(N))
    sec = sh.round.secure
    # exact modulo 2^k: the unmasked sum is the sum of the phones' quantized inputs
    assert np.array_equal(sec.result.total, expected_sum(sh, list(range(N))))
    # and the model moved by the weighted mean of the clipped deltas, within quantization
    # error (the weights: test_the_secure_mean_is_fedavgs_weighted_mean_or_uniform)
    w = [sh.weight(i) for i in range(N)]
    mean = [sum(w[i] * clip_update(phone_delta(i), CLIP)[0][j] for i in range(N)) / sum(w)
            for j in range(len(before))]
    assert _moved_by(h, before, mean) < mean_bound(sh)  # the first round: weight 1 each
    stats = sh.round.stats
    assert stats.reported == N and stats.num_examples == sum(10 + i for i in range(N))
    assert stats.secagg["survivors"] == {"advertise_keys": N, "share_keys": N,
                                         "masked_input": N, "unmasking": N}
    assert stats.secagg["threshold"] == 3 and stats.secagg["abort"] is None
    status = h.client.get(f"/v1/rounds/{sh.round_id}").get_json()
    assert status["secagg"]["modulus_bits"] == sec.params.k


def _arrays_reachable(root: object, limit: int = 200_000) -> list[np.ndarray]:
    """Every ndarray reachable from ``root`` (the server's state) by references."""
    seen, out, todo = set(), [], [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type | type(json) | str | bytes | int | float):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            out.append(obj)
            continue
        todo.extend(gc.get_referents(obj))
    return out


def test_the_server_never_holds_a_plaintext_update(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    h = secure_harness(tmp_path, N)
    masked: list[tuple[int, bytes]] = []

    def watch(task_id: str, body: dict) -> dict:
        if body["message"]["type"] == "masked_input":
            m = body["message"]
            masked.append((m["k"], base64.b64decode(m["data"])))
        return body

    sh = SecureHarness(h, N, tamper=watch)
    plain = [sh.codes(i) for i in range(N)]
    floats = [np.concatenate([a.ravel() for a in clip_update(phone_delta(i), CLIP)[0]])
              for i in range(N)]
    for _ in range(10):  # up to the masked inputs, not beyond
        if sh.phase() == "unmasking":
            break
        sh.step_all()
    assert sh.phase() == "unmasking"
    # the aggregator's memory while it holds every masked vector: no plaintext input
    held = _arrays_reachable(h.state)
    assert any(a is sh.round.secure.server._acc for a in held)  # the walk reaches the sum
    for arr in held:
        for p, f in zip(plain, floats, strict=True):
            if arr.shape == p.shape:
                assert not np.array_equal(arr.astype(np.int64), p.astype(np.int64))
            if arr.shape == f.shape and arr.dtype == np.float32:
                assert not np.allclose(arr, f)
    # each masked vector the server received is uniform over Z_{2^k}
    assert len(masked) == N
    k = sh.round.secure.params.k
    for mk, raw in masked:
        y = unpack_residues(raw, mk, sh.round.secure.layout.dim)
        assert CHI2_LOW < chi_square_top_byte(y, k) < CHI2_HIGH
        for p in plain:  # and unrelated to the plaintext codes
            assert np.mean(y == p) < 0.05
    sh.run()
    assert sh.round.state == "committed"
    # the database, the checkpoints and the logs: no plaintext, no masked vector
    needles = [p.astype("<u2").tobytes()[:64] for p in plain]
    needles += [f.tobytes()[:64] for f in floats]
    needles += [raw[:64] for _, raw in masked] + [base64.b64encode(raw[:48]) for _, raw in masked]
    con = sqlite3.connect(h.state.config.state_dir / "fedkb.db")
    dump = "\n".join(con.iterdump()).encode()
    con.close()
    files = b"".join(p.read_bytes() for p in (h.state.config.state_dir / "checkpoints").iterdir()
                     if p.is_file())
    logs = caplog.text.encode()
    for needle in needles:
        assert needle not in dump and needle not in files and needle not in logs
    # what is kept for the round: its counts, not its vectors
    assert len(json.dumps(h.client.get(f"/v1/rounds/{sh.round_id}").get_json())) < 20_000


@pytest.mark.parametrize("phase", ["share_keys", "masked_input", "unmasking"])
@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_dropouts_at_each_phase(tmp_path, phase, count):
    """Phones go silent after advertising keys (from share_keys on), after sharing (from
    masked input on) or after their masked input (in unmasking): up to n - t survived."""
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    gone = set(range(N - count, N))
    sh.run(drop={phase: gone})
    sec = sh.round.secure
    if count > N - 3:
        assert sh.round.state == "abandoned"
        assert sh.round.reason == f"secagg_{phase}"
        protocol_phase = {"masked_input": "masked_input_collection"}.get(phase, phase)
        assert sh.round.stats.secagg["abort"]["phase"] in (protocol_phase, "unmasking")
        assert h.global_weights()[0].any() == False  # noqa: E712 (the model did not move)
        return
    assert sh.round.state == "committed", sh.round.reason
    summands = list(range(N)) if phase == "unmasking" else list(range(N - count))
    assert list(sec.result.survivors) == [i + 1 for i in summands]
    assert np.array_equal(sec.result.total, expected_sum(sh, summands))
    drops = sh.round.stats.secagg["dropouts"]
    key = {"share_keys": "after_keys", "masked_input": "after_shares",
           "unmasking": "after_masked_input"}[phase]
    assert drops[key] == count
    if phase != "share_keys":
        assert sh.round.stats.secagg["recovered"][key] == count


def test_an_unplugged_phone_aborts_and_the_phase_ends_early(tmp_path):
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    sh.step_all()  # keys advertised
    sh.step_all()  # roster answered: share_keys
    t0 = h.clock()
    sh.members[4].device.abort(sh.members[4].task.task_id)
    sh.members[4].state = "stopped"
    sh.run()
    assert sh.round.state == "committed"
    assert h.clock() == t0  # nobody waited out a deadline for the unplugged phone
    assert sh.round.stats.aborted == {"not_charging": 1}
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, [0, 1, 2, 3]))


def _untrained(sh: SecureHarness) -> list[str]:
    """Every phone starts its protocol before it has trained (as the worker runs it);
    returns the list the transport's GETs are logged to (by task id)."""
    for m in sh.members:
        m.secure = SecureTask(m.task)
    gets: list[str] = []
    get = sh.transport.secagg_step

    def logged(token: str, task_id: str, wait_s: float = 0.0):
        gets.append(task_id)
        return get(token, task_id, wait_s)

    sh.transport.secagg_step = logged  # type: ignore[method-assign]
    return gets


def test_phones_share_keys_before_they_train_and_mask_once_trained(tmp_path):
    """The key phases need no delta; at the masked input an untrained phone keeps its
    relay and says TRAIN; once trained it masks from that relay with no new GET."""
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    gets = _untrained(sh)
    for _ in range(4):
        if sh.phase() == "masked_input":
            break
        sh.step_all()
    assert sh.phase() == "masked_input" and all(m.state == WAIT for m in sh.members)
    sh.step_all()  # each gets its relay and has nothing to mask yet
    assert [m.state for m in sh.members] == [TRAIN] * N
    assert all(m.secure.relay is not None and not m.secure.masked for m in sh.members)
    assert sh.phase() == "masked_input"  # nobody has answered it
    before = len(gets)
    for i, m in enumerate(sh.members):
        assert m.secure.advance(sh.transport, m.device.token) == (TRAIN, 0.0)
        m.secure.trained(phone_delta(i), 10 + i, 1.0, {"train_s": 0.5})
        m.state, _ = m.secure.advance(sh.transport, m.device.token)
        assert m.secure.masked and m.secure.relay is None and m.secure.update == []
    assert len(gets) == before  # masked from the kept relays
    assert sh.phase() == "unmasking"
    sh.run()
    assert sh.round.state == "committed", sh.round.reason
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, list(range(N))))
    assert sh.round.stats.num_examples == sum(10 + i for i in range(N))


def test_a_phone_lost_in_training_is_a_dropout_after_shares(tmp_path):
    """Phones 3 and 4 shared their keys, then never finish training: the survivors' sum
    is exact, the lost phones' pairwise masks recovered from their s_SK shares."""
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    _untrained(sh)
    for _ in range(4):
        sh.step_all()
    assert [m.state for m in sh.members] == [TRAIN] * N
    for i in range(3):
        sh.members[i].secure.trained(phone_delta(i), 10 + i, 1.0, {})
        sh.members[i].state = WAIT
    for i in (3, 4):
        sh.members[i].state = STOPPED
    sh.run()
    assert sh.round.state == "committed", sh.round.reason
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, [0, 1, 2]))
    assert sh.round.stats.secagg["dropouts"]["after_shares"] == 2
    assert sh.round.stats.secagg["recovered"]["after_shares"] == 2


def test_a_post_with_no_answer_is_sent_again_unchanged(tmp_path):
    """A masked input whose POST got no answer (Retry) is sent again as it was, not masked
    again (its plaintext is gone); a resend the server already had counts as sent."""
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    while sh.phase() != "masked_input":
        sh.step_all()
    submit = sh.transport.secagg_submit
    lost: list[int] = []

    def flaky(token: str, task_id: str, body: bytes, content_type: str):
        if task_id == sh.members[0].task.task_id and len(lost) < 2:
            lost.append(1)
            if len(lost) == 2:  # it got through; only the answer was lost
                submit(token, task_id, body, content_type)
            raise Retry("ConnectionResetError", 2.0)
        return submit(token, task_id, body, content_type)

    sh.transport.secagg_submit = flaky  # type: ignore[method-assign]
    m = sh.members[0]
    with pytest.raises(Retry):
        m.secure.advance(sh.transport, m.device.token)
    assert m.secure.unsent is not None and not m.secure.masked and m.secure.update == []
    with pytest.raises(Retry):  # the same body again; this time the server keeps it
        m.secure.advance(sh.transport, m.device.token)
    # the third try is refused as a repeat: the phone knows the server has it
    assert m.secure.advance(sh.transport, m.device.token) == (WAIT, 0.0)
    assert m.secure.unsent is None and m.secure.masked
    bodies = [b for t, b in sh.transport.sent if t == m.task.task_id
              and "masked" in json.dumps(b)[:200]]
    assert len(bodies) >= 2 and all(b == bodies[0] for b in bodies)
    sh.run()
    assert sh.round.state == "committed", sh.round.reason
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, list(range(N))))


def test_a_late_phone_with_stale_messages_is_refused(tmp_path):
    h = secure_harness(tmp_path, N)
    kept: dict[str, dict] = {}

    def keep(task_id: str, body: dict) -> dict:
        kept[f"{task_id}/{body['message']['type']}"] = copy.deepcopy(body)
        return body

    sh = SecureHarness(h, N, tamper=keep)
    late = sh.members[4]
    for _ in range(10):  # it shares keys, then goes quiet
        if sh.phase() == "unmasking":
            break
        sh.step_all({4} if sh.phase() == "masked_input" else set())
        if sh.phase() == "masked_input" and len(sh.round.secure.answered("masked_input")) == 4:
            h.clock.advance(sh.round.phase.deadline_s + 1)
            sh.machine.tick()
    assert sh.phase() == "unmasking"
    # it comes back: its masked input now (the phase is closed) and its stale shares again
    late.state = "wait"
    late.secure.advance(sh.transport, late.device.token)  # told it dropped
    assert late.state == "wait" and late.secure.refusal.startswith("server: dropped")
    stale = kept[f"{late.task.task_id}/share_keys"]
    r = sh.transport.post(late.device.token, late.task.task_id, stale)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "secagg_phase_closed"
    forged_input = {"message": {"type": "masked_input", "round_id": sh.round.secure.rid,
                                "sender": 5, "k": sh.round.secure.params.k,
                                "length": sh.round.secure.layout.dim,
                                "data": base64.b64encode(b"\0\0" * sh.round.secure.layout.dim
                                                         ).decode()}}
    r = sh.transport.post(late.device.token, late.task.task_id, forged_input)
    assert r.status_code == 409
    late.state = "stopped"
    sh.run()
    assert sh.round.state == "committed"
    assert sh.round.stats.rejected.get("secagg_phase_closed", 0) == 2
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, [0, 1, 2, 3]))


def _mutate(kind: str):
    """A tamper that breaks phone 1's (uid 1) first message of one type, once."""
    state = {"done": False}

    def tamper(task_id: str, body: dict) -> dict:
        m = body["message"]
        if state["done"] or m.get("sender") != 1:
            return body
        bad = copy.deepcopy(body)
        if kind == "short_vector" and m["type"] == "masked_input":
            raw = base64.b64decode(m["data"])
            bad["message"]["data"] = base64.b64encode(raw[:-2]).decode()
            bad["message"]["length"] = m["length"] - 1
        elif kind == "wrong_modulus" and m["type"] == "masked_input":
            bad["message"]["k"] = m["k"] + 1
        elif kind == "extra_byte" and m["type"] == "masked_input":
            # a byte past length x k bits (nonzero padding bits: tests/test_secagg_crypto.py)
            raw = base64.b64decode(m["data"]) + b"\x00"
            bad["message"]["data"] = base64.b64encode(raw).decode()
        elif kind == "wrong_sender" and m["type"] == "masked_input":
            bad["message"]["sender"] = 2
        elif kind == "misaddressed" and m["type"] == "share_keys":
            cts = m["ciphertexts"]
            first = sorted(cts)[0]
            cts = dict(cts)
            cts["9"] = cts.pop(first)  # a share for a phone not in the round
            bad["message"]["ciphertexts"] = cts
        elif kind == "both_shares" and m["type"] == "unmask_response":
            b = dict(m["b_shares"])
            bad["message"]["sk_shares"] = {**m["sk_shares"], **{"2": b["2"]}}  # b and s_SK
        elif kind == "wrong_peer" and m["type"] == "unmask_response":
            b = dict(m["b_shares"])
            bad["message"]["sk_shares"] = {"2": b.pop("2")}  # s_SK-share of a survivor
            bad["message"]["b_shares"] = b
        else:
            return body
        state["done"] = True
        return bad

    return tamper


@pytest.mark.parametrize("kind, code", [
    ("short_vector", "secagg_bad_vector"), ("wrong_modulus", "secagg_bad_vector"),
    ("extra_byte", "secagg_bad_vector"), ("wrong_sender", "secagg_wrong_sender"),
    ("misaddressed", "secagg_bad_recipients"), ("both_shares", "secagg_both_shares"),
    ("wrong_peer", "secagg_wrong_peer")])
def test_bad_messages_are_refused_counted_and_leave_the_sum_exact(tmp_path, kind, code):
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N, tamper=_mutate(kind))
    sh.run()
    phone = sh.members[0]
    assert phone.refused and phone.refused[0] in ("secagg_refused", "secagg_phase_closed")
    assert sh.round.stats.rejected.get(code) == 1, sh.round.stats.rejected
    # the refused phone dropped out; the round summed the others exactly
    assert sh.round.state == "committed", sh.round.reason
    survivors = [u - 1 for u in sh.round.secure.result.survivors]
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, survivors))


def test_a_forged_ciphertext_stops_its_recipient_not_the_round(tmp_path):
    def forge(task_id: str, body: dict) -> dict:
        m = body["message"]
        if m["type"] == "share_keys" and m["sender"] == 1:
            cts = dict(m["ciphertexts"])
            raw = bytearray(base64.b64decode(cts["2"]))
            raw[-1] ^= 1  # the GCM tag no longer matches
            cts["2"] = base64.b64encode(bytes(raw)).decode()
            body = {**body, "message": {**m, "ciphertexts": cts}}
        return body

    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N, tamper=forge)
    sh.run()
    assert "bad_ciphertext" in sh.members[1].secure.refusal
    assert sh.round.state == "committed"
    assert sh.round.stats.secagg["dropouts"]["after_shares"] == 1
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, [0, 2, 3, 4]))


def test_with_dp_the_noise_goes_on_the_unmasked_sum_over_the_report_goal(tmp_path):
    """[privacy] and [secagg]: phones clip to the privacy clip; the DP stage gets the
    unmasked sum of the survivors and divides by the fixed report goal m."""
    clip = 2.0
    h = secure_harness(tmp_path, N, privacy=PrivacyConfig(
        mechanism="fedavg", noise_multiplier=0.0, clip=clip, population=10),
        pipeline=False)
    before = h.global_weights()
    sh = SecureHarness(h, N)
    assert sh.round.secure.weight_cap == 0  # DP's sensitivity: every phone weight 1
    assert sh.members[0].task.plan.clip == clip
    sh.run(drop={"masked_input": {4}})
    assert sh.round.state == "committed", sh.round.reason
    r = h.client.get(f"/v1/rounds/{sh.round_id}").get_json()
    assert r["measurements"]["count"] == 4 and r["measurements"]["denominator"] == N
    # the noise is calibrated to a rounded update's bound Δ > C, recorded as the clip
    sensitivity = sh.round.secure.layout.sensitivity
    assert clip < sensitivity < 1.3 * clip
    assert r["privacy"]["event"]["clip"] == pytest.approx(sensitivity)
    want = [sum(clip_update(phone_delta(i), clip)[0][j] for i in range(4)) / N
            for j in range(len(before))]
    err = np.sqrt(sum(float(np.sum(((b - a) - m) ** 2))
                      for a, b, m in zip(before, h.global_weights(), want, strict=True)))
    assert err < mean_bound(sh) * clip / CLIP


def test_a_plain_upload_to_a_secure_round_is_refused(tmp_path):
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    d = sh.members[0]
    from server_support import Device
    r = Device.upload(d.device, d.task.to_json(), [np.zeros(s, np.float32) for s in
                                                   [(64, 64), (64, 64), (200,)]])
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "wrong_encoding"


def test_secagg_plus_over_http(tmp_path):
    h = secure_harness(tmp_path, 7, threshold=0.6, neighbours=4)
    sh = SecureHarness(h, 7)
    sh.run(drop={"masked_input": {6}})
    assert sh.round.state == "committed", sh.round.reason
    assert sh.round.secure.params.degree == 4
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, list(range(6))))


@pytest.mark.parametrize("secagg, extra, match", [
    (SecAggConfig(enabled=True, threshold=0.5), {}, "too small for the threat model"),
    (SecAggConfig(enabled=True, threshold=3), {}, "too small for the threat model"),
    (SecAggConfig(enabled=True, threshold=11), {}, "more than the 10 phones"),
    (SecAggConfig(enabled=True), {"compression": CompressionConfig()}, "quantized codes"),
    (SecAggConfig(enabled=True), {"strategy": StrategyConfig()}, "needs a clip"),
    (SecAggConfig(enabled=True, neighbours=10), {}, "below the cohort"),
])
def test_bad_settings_are_refused_at_start(secagg, extra, match):
    kw = {"round": RoundConfig(report_goal=10, overselect=1.0),
          "strategy": StrategyConfig(clip_norm=1.0),
          "compression": CompressionConfig(uplink="q8"), **extra}
    with pytest.raises(ConfigError, match=match):
        ServerConfig(secagg=secagg, **kw)


@pytest.mark.parametrize("raw", [0.0, 1.5, -2, 2.5])
def test_a_threshold_is_a_count_or_a_fraction(raw):
    with pytest.raises(ConfigError, match="count >= 2 or a fraction"):
        SecAggConfig(threshold=raw)
    assert SecAggConfig(threshold=0.7).threshold_for(20) == 14
    assert SecAggConfig(threshold=15).threshold_for(20) == 15


def test_unmasking_needs_t_responders_not_the_rounds_minimum_reports(tmp_path):
    """min_reports = 5 (every phone): all 5 masked inputs are in, one phone then goes
    quiet; 4 >= t responders unmask a sum of all 5 inputs, so the round commits."""
    h = secure_harness(tmp_path, N, min_fraction=1.0)
    sh = SecureHarness(h, N)
    assert [p.min_count for p in sh.round.phases[1:]] == [5, 5, 5, 3]
    sh.run(drop={"unmasking": {4}})
    assert sh.round.state == "committed", sh.round.reason
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, list(range(N))))


@pytest.mark.parametrize("body", ['{"message": {}}', "[]", "24", "null", '{"message": '
                                  '{"type": "masked_input", "round_id": "r1"}}', "{"])
def test_a_broken_message_is_a_400_and_counted(tmp_path, body):
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    m = sh.members[0]
    r = h.client.post(f"/v1/tasks/{m.task.task_id}/secagg", data=body,
                      headers={**m.device.auth, "Content-Type": "application/json"})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["code"] == "invalid_message"
    assert sh.round.stats.rejected == {"secagg_invalid_message": 1}


def test_a_masked_input_goes_framed_and_its_json_form_is_taken_too(tmp_path):
    """A phone frames its masked input (FKBS: the packed vector as raw bytes after a JSON
    header); the server also takes the base64 JSON form, and the two sum exactly."""
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    submit = sh.transport.secagg_submit
    first = sh.members[0].task.task_id
    types: list[str] = []

    def first_as_json(token: str, task_id: str, body: bytes, content_type: str):
        types.append(content_type)
        if task_id == first and content_type == wire.SECAGG_CONTENT_TYPE:
            body = json.dumps(as_json_form(body, True)).encode()
            content_type = "application/json"
        return submit(token, task_id, body, content_type)

    sh.transport.secagg_submit = first_as_json  # type: ignore[method-assign]
    sh.run()
    assert sh.round.state == "committed", sh.round.reason
    assert types.count(wire.SECAGG_CONTENT_TYPE) == N  # the masked inputs, and only them
    sec = sh.round.secure
    assert np.array_equal(sec.result.total, expected_sum(sh, list(range(N))))
    packed = packed_size(sec.layout.dim, sec.params.k)
    up = sorted(sh.round.stats.upload_bytes)  # each masked input's bytes on the wire
    assert all(packed < b < packed + 1024 for b in up[:-1]), (packed, up)
    assert up[-1] > 4 / 3 * packed  # the JSON one: base64


@pytest.mark.parametrize("make", ["empty", "upload_magic", "not_json", "other_message",
                                  "data_in_header"])
def test_a_broken_framed_message_is_a_400_and_counted(tmp_path, make):
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    m = sh.members[0]
    head = {"type": "masked_input", "round_id": "r1", "sender": 1, "k": 13, "length": 16}
    framed = wire.frame_secagg(wire.SecAggSubmit(head, 10), bytes(26))
    body = {"empty": b"",
            "upload_magic": wire.UPLOAD_MAGIC + framed[4:],
            "not_json": framed[:8] + b"!" + framed[9:],
            "other_message": wire.frame_secagg(wire.SecAggSubmit(
                {"type": "advertise_keys", "round_id": "r1", "sender": 1}), bytes(64)),
            "data_in_header": wire.frame_secagg(wire.SecAggSubmit(
                {**head, "data": base64.b64encode(bytes(26)).decode()}, 10), bytes(26)),
            }[make]
    r = h.client.post(f"/v1/tasks/{m.task.task_id}/secagg", data=body,
                      headers={**m.device.auth, "Content-Type": wire.SECAGG_CONTENT_TYPE})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["code"] == "invalid_message"
    assert sh.round.stats.rejected == {"secagg_invalid_message": 1}


def _held_step(sh: SecureHarness, i: int, wait_s: float, out: dict) -> threading.Thread:
    """Phone i asks for its step with ``wait_s`` on a thread of its own (as a fleet
    phone does); ``out`` gets the answer and how long it took."""
    m = sh.members[i]

    def ask() -> None:
        t0 = time.monotonic()
        out["step"] = sh.transport.secagg_step(m.device.token, m.task.task_id, wait_s)
        out["took_s"] = time.monotonic() - t0

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    return thread


def test_a_held_step_answers_the_moment_the_phase_changes(tmp_path, monkeypatch):
    # no look at the deadlines within the test: only the phase change can wake the hold
    monkeypatch.setattr(round_machine, "HOLD_RECHECK_S", 60.0)
    sh = SecureHarness(secure_harness(tmp_path, N), N)
    sh.step_all(skip={4})  # four phones advertised their keys; phone 4 has not
    out: dict = {}
    thread = _held_step(sh, 0, 20.0, out)
    time.sleep(0.5)
    assert thread.is_alive()  # nothing for phone 0 to do yet: the server holds it
    sh.step_all(skip={0, 1, 2, 3})  # the last phone advertises: the phase ends now
    thread.join(10)
    assert out["step"].phase == "share_keys" and out["step"].message is not None
    assert out["took_s"] < 10  # not the 20 s asked for: the phase change woke it
    sh.run()
    assert sh.round.state == "committed"
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, list(range(N))))


def test_a_held_step_ends_at_its_wait_and_the_phone_asks_again_at_once(tmp_path):
    sh = SecureHarness(secure_harness(tmp_path, N), N)
    sh.step_all(skip={4})
    m = sh.members[0]
    t0 = time.monotonic()
    what, after = m.secure.advance(sh.transport, m.device.token, wait_s=0.4)
    assert time.monotonic() - t0 >= 0.4
    assert (what, after) == ("wait", 0.0)  # held to the end: ask again now, not in 0.25 s
    # with no WSGI thread to spare for holding, it is answered at once with its retry
    holds = sh.h.state.holds
    taken = 0
    while holds.acquire(False):
        taken += 1
    try:
        t0 = time.monotonic()
        what, after = m.secure.advance(sh.transport, m.device.token, wait_s=5.0)
        assert time.monotonic() - t0 < 2.0
        assert what == "wait" and after == POLL_S
    finally:
        for _ in range(taken):
            holds.release()
    assert taken > 0


@pytest.mark.parametrize("query", ["wait_ms=-1", "wait_ms=30001", "wait_ms=soon",
                                   "wait_ms=1&wait_ms=2"])
def test_a_bad_wait_is_a_400(tmp_path, query):
    sh = SecureHarness(secure_harness(tmp_path, N), N)
    m = sh.members[0]
    r = sh.h.client.get(f"/v1/tasks/{m.task.task_id}/secagg?{query}",
                        headers={"Authorization": f"Bearer {m.device.token}"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_query"


def test_unmasking_ends_once_t_answered_and_the_rest_stay_quiet(tmp_path):
    """A phone that unplugs after its masked input cannot tell the server (its task is
    reported): unmasking ends ``unmask_quiet_s`` after the last answer once t phones
    have answered, not at the phase's deadline, and the sum is still every summand's."""
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    for _ in range(10):
        if sh.phase() == "unmasking":
            break
        sh.step_all()
    assert sh.phase() == "unmasking"
    quiet = sh.round.secure.cfg.unmask_quiet_s
    assert 0 < quiet < sh.round.phase.deadline_s
    sh.step_all(skip={3, 4})  # three answers: t = 3; phones 3 and 4 have unplugged
    h.clock.advance(quiet * 0.6)
    sh.machine.tick()
    assert sh.phase() == "unmasking"  # quiet for less than unmask_quiet_s: it waits
    h.clock.advance(quiet * 0.6)
    sh.machine.tick()
    assert sh.round.state == "committed", sh.round.reason
    assert np.array_equal(sh.round.secure.result.total, expected_sum(sh, list(range(N))))


def test_with_fewer_than_t_answers_unmasking_waits_for_its_deadline(tmp_path):
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    for _ in range(10):
        if sh.phase() == "unmasking":
            break
        sh.step_all()
    sh.step_all(skip={2, 3, 4})  # two answers, t = 3
    h.clock.advance(sh.round.secure.cfg.unmask_quiet_s * 2)
    sh.machine.tick()
    assert sh.phase() == "unmasking"
    h.clock.advance(sh.round.phase.deadline_s)
    sh.machine.tick()
    assert sh.round.state == "abandoned" and sh.round.reason == "secagg_unmasking"


def test_a_phone_that_says_it_left_after_its_masked_input_is_not_waited_for(tmp_path):
    """An unplugged phone whose masked input is in aborts its task: the server keeps it as
    a summand (its self-mask from the others' shares) and unmasking ends as soon as the
    rest have answered, with no quiet wait (saying it twice is saying it once)."""
    h = secure_harness(tmp_path, N)
    sh = SecureHarness(h, N)
    for _ in range(10):
        if sh.phase() == "unmasking":
            break
        sh.step_all()
    assert sh.phase() == "unmasking"
    t0 = h.clock()
    m = sh.members[4]
    r = m.device.abort(m.task.task_id)
    assert r.status_code == 200 and r.get_json()["status"] == "left"
    again = m.device.abort(m.task.task_id)
    assert again.status_code == 200 and again.get_json()["status"] == "left"
    m.state = STOPPED
    sh.step_all()  # the four others answer: the phase is over at once
    assert sh.round.state == "committed", sh.round.reason
    assert h.clock() == t0
    sec = sh.round.secure
    assert list(sec.result.survivors) == [1, 2, 3, 4, 5]
    assert np.array_equal(sec.result.total, expected_sum(sh, list(range(N))))
    assert sh.round.stats.secagg["left_after_masked_input"] == 1
    assert sh.round.stats.secagg["recovered"]["after_masked_input"] == 1
    assert sh.round.stats.aborted == {}  # not an aborted task: it is summed
    # once the round is over, an abort of a reported task is refused as before
    late = sh.members[0].device.abort(sh.members[0].task.task_id)
    assert late.status_code == 409 and late.get_json()["error"]["code"] == "task_finished"
