"""The server's side of a secure round: relay, track survivors, reconstruct, unmask.

The server keeps, per round: the U1 roster of public keys, the sealed shares until it
has relayed them, one commitment to each phone's self-mask seed b, the *running sum* of
the accepted masked vectors (each is folded in and dropped as it arrives, so no
individual vector, masked or not, is kept), and then the shares the survivors reveal.
Survivor sets shrink phase by phase (Bonawitz et al. 2017, Fig. 4):

    U1 advertised keys  ⊇  U2 sent shares  ⊇  U3 sent a masked input  ⊇  U4 answered Unmask

``close_*`` ends a phase (its deadline passed, or all answered); if fewer than t phones
remain it returns an :class:`~.messages.Abort` with the reason, and the round is over.
``receive_*`` returns ``None`` when a message is accepted or a
:class:`~.messages.Refusal` (counted in :attr:`SecAggServer.refusals`) when it is not:
a message for another round or phase, from a phone not in the previous set, a second
message from one phone, a share map with the wrong recipients, ciphertexts of the wrong
size, a masked vector of the wrong length or modulus, a share held by another phone or
for a phone the sender does not hold shares of, or b- and s_SK-shares for one phone.
A refused message leaves the running sum untouched.

Reconstruction is checked: a recovered b must match its commitment and a recovered s_SK
must give the public key the phone advertised. A mismatch means a responder sent bad
shares (e.g. a late phone replaying stale ones); the server finds it by leaving one
responder out at a time, refuses all its shares and carries on if t remain.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fedkb.compression.field import residue_dtype
from fedkb.secagg import keys, shamir
from fedkb.secagg.client import PLAINTEXT_BYTES, commit_b
from fedkb.secagg.messages import (
    Abort,
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    MessageError,
    Refusal,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
    unpack_residues,
)
from fedkb.secagg.params import RoundParams
from fedkb.secagg.prg import MaskStream, reduce, work_dtype


class Phase(enum.Enum):
    ADVERTISE = "advertise_keys"
    SHARE = "share_keys"
    MASKED = "masked_input_collection"
    UNMASK = "unmasking"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True)
class SumResult:
    total: np.ndarray  # the sum of the survivors' inputs mod 2^k, dtype residue_dtype(k)
    survivors: tuple[int, ...]  # U3: whose inputs are in the sum
    dropouts: dict[str, int]  # phones lost after each phase
    refusals: tuple[Refusal, ...] = field(default=())

    @property
    def n_summands(self) -> int:
        return len(self.survivors)


class _Blame(Exception):
    def __init__(self, responder: int) -> None:
        self.responder = responder


class SecAggServer:
    def __init__(self, params: RoundParams) -> None:
        self.params = params
        self.phase = Phase.ADVERTISE
        self.abort: Abort | None = None
        self.refusals: list[Refusal] = []
        self.keys: dict[int, tuple[bytes, bytes]] = {}  # U1
        self._sealed: dict[int, dict[int, bytes]] = {}  # U2: sender -> recipient -> blob
        self.commitments: dict[int, bytes] = {}
        self.u3: set[int] = set()
        self._acc = np.zeros(params.dim, dtype=work_dtype(params.k))
        self._revealed: dict[int, tuple[int, ...]] = {}  # U4: responder -> owners it revealed
        # the revealed shares, by secret: _pool[0] b-shares, _pool[1] s_SK-shares,
        # each owner -> responder -> share
        self._pool: tuple[dict[int, dict[int, shamir.Share]], ...] = ({}, {})
        self.u4: set[int] = set()

    @property
    def u1(self) -> set[int]:
        return set(self.keys)

    @property
    def u2(self) -> set[int]:
        return set(self.commitments)

    def _refuse(self, code: str, reason: str) -> Refusal:
        r = Refusal(code, reason)
        self.refusals.append(r)
        return r

    def _gate(self, phase: Phase, round_id: str, sender: int, allowed: Iterable[int],
              seen: Iterable[int]) -> Refusal | None:
        if round_id != self.params.round_id:
            return self._refuse("wrong_round", f"message for round {round_id!r}")
        if self.phase is not phase:
            return self._refuse("phase_closed", f"{phase.value} is not open "
                                f"(round is at {self.phase.value}); phone {sender} is late")
        if sender not in allowed:
            return self._refuse("not_eligible", f"phone {sender} is not in the previous "
                                f"phase's survivors")
        if sender in seen:
            return self._refuse("duplicate", f"a second {phase.value} message from {sender}")
        return None

    def _close(self, survivors: set[int], nxt: Phase) -> Abort | None:
        if len(survivors) < self.params.threshold:
            self.abort = Abort(self.phase.value, f"{len(survivors)} phones left after "
                               f"{self.phase.value}, fewer than t={self.params.threshold}")
            self.phase = Phase.ABORTED
            self._sealed.clear()
            self._pool = ({}, {})
            self._acc[:] = 0
            return self.abort
        self.phase = nxt
        return None

    # -- AdvertiseKeys
    def receive_advertise(self, msg: AdvertiseKeys) -> Refusal | None:
        if (bad := self._gate(Phase.ADVERTISE, msg.round_id, msg.sender, self.params.clients,
                              self.keys)) is not None:
            return bad
        taken = {k for pair in self.keys.values() for k in pair}
        if msg.c_pk == msg.s_pk or {msg.c_pk, msg.s_pk} & taken:
            return self._refuse("reused_key", f"phone {msg.sender} advertised a key in use")
        self.keys[msg.sender] = (msg.c_pk, msg.s_pk)
        return None

    def close_advertise(self) -> KeyRoster | Abort:
        if (a := self._close(self.u1, Phase.SHARE)) is not None:
            return a
        return KeyRoster(self.params.round_id, dict(sorted(self.keys.items())))

    # -- ShareKeys
    def receive_shares(self, msg: ShareKeys) -> Refusal | None:
        if (bad := self._gate(Phase.SHARE, msg.round_id, msg.sender, self.keys,
                              self._sealed)) is not None:
            return bad
        want = (set(self.params.holders(msg.sender)) & self.u1) - {msg.sender}
        if set(msg.ciphertexts) != want:
            return self._refuse("bad_recipients", f"phone {msg.sender} sealed shares for "
                                "other phones than its holders in the roster")
        size = keys.sealed_size(PLAINTEXT_BYTES)
        if any(len(b) != size for b in msg.ciphertexts.values()):
            return self._refuse("bad_ciphertext", f"a ciphertext from {msg.sender} is not "
                                f"{size} bytes")
        self._sealed[msg.sender] = dict(msg.ciphertexts)
        self.commitments[msg.sender] = msg.b_commitment
        return None

    def close_shares(self) -> dict[int, ShareRelay] | Abort:
        if (a := self._close(self.u2, Phase.MASKED)) is not None:
            return a
        relays: dict[int, dict[int, bytes]] = {v: {} for v in self._sealed}
        for u, out in self._sealed.items():
            for v, blob in out.items():
                if v in relays:
                    relays[v][u] = blob
        self._sealed.clear()
        rid = self.params.round_id
        return {v: ShareRelay(rid, v, dict(sorted(cts.items()))) for v, cts in relays.items()}

    # -- MaskedInputCollection
    def receive_masked(self, msg: MaskedInput) -> Refusal | None:
        p = self.params
        if (bad := self._gate(Phase.MASKED, msg.round_id, msg.sender, self.commitments,
                              self.u3)) is not None:
            return bad
        if msg.k != p.k or msg.length != p.dim:
            return self._refuse("bad_vector", f"phone {msg.sender} sent {msg.length} entries "
                                f"mod 2^{msg.k}, the round is {p.dim} mod 2^{p.k}")
        try:
            y = unpack_residues(msg.data, p.k, p.dim)
        except MessageError as e:
            return self._refuse("bad_vector", f"phone {msg.sender}: {e}")
        np.add(self._acc, y, out=self._acc)  # fold and forget
        del y
        self.u3.add(msg.sender)
        return None

    def close_masked(self) -> UnmaskRequest | Abort:
        if (a := self._close(self.u3, Phase.UNMASK)) is not None:
            return a
        return UnmaskRequest(self.params.round_id, tuple(sorted(self.u3)))

    # -- Unmasking
    def receive_unmask(self, msg: UnmaskResponse) -> Refusal | None:
        p = self.params
        if (bad := self._gate(Phase.UNMASK, msg.round_id, msg.sender, self.u3,
                              self._revealed)) is not None:
            return bad
        dropped = self.u2 - self.u3
        if set(msg.b_shares) & set(msg.sk_shares):
            return self._refuse("both_shares", f"phone {msg.sender} revealed b and s_SK "
                                "shares of one phone")
        if not set(msg.b_shares) <= self.u3 or not set(msg.sk_shares) <= dropped:
            return self._refuse("wrong_peer", f"phone {msg.sender} sent b-shares of "
                                "non-survivors or s_SK-shares of survivors")
        owners = (*msg.b_shares, *msg.sk_shares)
        for owner in owners:
            if not p.holds(msg.sender, owner):
                return self._refuse("wrong_peer", f"phone {msg.sender} holds no share of {owner}")
        parsed: list[dict[int, shamir.Share]] = [{}, {}]
        try:
            for which, shares in enumerate((msg.b_shares, msg.sk_shares)):
                for owner, raw in shares.items():
                    sh = shamir.Share.from_bytes(raw)
                    if sh.x != msg.sender or sh.t != p.share_threshold:
                        return self._refuse("wrong_peer", f"phone {msg.sender} sent a share "
                                            "held by another phone or for another threshold")
                    parsed[which][owner] = sh
        except shamir.ShamirError as e:
            return self._refuse("bad_share", f"phone {msg.sender}: {e}")
        for which in (0, 1):
            for owner, sh in parsed[which].items():
                self._pool[which].setdefault(owner, {})[msg.sender] = sh
        self._revealed[msg.sender] = owners
        return None

    def _drop_responder(self, r: int) -> None:
        for owner in self._revealed.pop(r):
            for pool in self._pool:
                pool.get(owner, {}).pop(r, None)

    def _recover(self, owner: int, which: int, size: int, cache: dict) -> bytes:
        st = self.params.share_threshold
        have = sorted(self._pool[which].get(owner, {}).items())
        if len(have) < st:
            raise ValueError(f"{len(have)} shares of phone {owner}'s "
                             f"{'b' if which == 0 else 's_SK'}, {st} needed")

        def attempt(rows: list[tuple[int, shamir.Share]]) -> bytes | None:
            xs = tuple(r for r, _ in rows)
            if xs not in cache:
                cache[xs] = shamir.lagrange_at_zero(xs)
            try:
                secret = shamir.to_secret(shamir.interpolate([sh for _, sh in rows], cache[xs]),
                                          size)
            except shamir.ShamirError:
                return None
            ok = (commit_b(secret, self.params.round_id, owner) == self.commitments[owner]
                  if which == 0 else
                  keys.KeyPair.from_private_bytes(secret).public == self.keys[owner][1])
            return secret if ok else None

        if (s := attempt(have[:st])) is not None:
            return s
        for r, _ in have[:st]:  # one bad responder: leave each out in turn
            rest = [row for row in have if row[0] != r]
            if len(rest) >= st and attempt(rest[:st]) is not None:
                raise _Blame(r)
        raise ValueError(f"the shares of phone {owner} do not reconstruct its secret")

    def close_unmask(self) -> SumResult | Abort:
        """Reconstruct the masks, remove them and return the sum mod 2^k."""
        p = self.params
        if (a := self._close(set(self._revealed), Phase.UNMASK)) is not None:
            return a
        while True:
            try:
                cache: dict = {}
                bs = {u: self._recover(u, 0, 32, cache) for u in sorted(self.u3)}
                sks = {u: self._recover(u, 1, 32, cache) for u in sorted(self.u2 - self.u3)}
                break
            except _Blame as b:
                self._drop_responder(b.responder)
                self._refuse("bad_shares", f"phone {b.responder}'s shares do not match the "
                             "commitments: refused")
                if (a := self._close(set(self._revealed), Phase.UNMASK)) is not None:
                    return a
            except ValueError as e:
                self.abort = Abort(Phase.UNMASK.value, str(e))
                self.phase = Phase.ABORTED
                self._acc[:] = 0
                return self.abort
        stream = MaskStream(p.dim, p.k)
        for b in bs.values():
            stream.add(self._acc, b, -1)
        for u, sk in sks.items():
            pair = keys.KeyPair.from_private_bytes(sk)
            for v in sorted(p.peers(u) & self.u3):
                seed = keys.derive(pair.private, self.keys[v][1], purpose=keys.PURPOSE_MASK,
                                   round_id=p.round_id, a=u, b=v)
                stream.add(self._acc, seed, -1 if v < u else 1)  # v added sign(v, u)
        total = reduce(self._acc, p.k).astype(residue_dtype(p.k))
        self._acc = total
        self.u4 = set(self._revealed)
        self._revealed.clear()
        self._pool = ({}, {})
        self.phase = Phase.DONE
        return SumResult(total, tuple(sorted(self.u3)), self.dropouts(), tuple(self.refusals))

    def dropouts(self) -> dict[str, int]:
        u1, u2, u3 = self.u1, self.u2, self.u3
        return {"before_keys": len(self.params.clients) - len(u1),
                "after_keys": len(u1 - u2), "after_shares": len(u2 - u3),
                "after_masked_input": len(u3 - (self.u4 or set(self._revealed)))
                if self.phase in (Phase.UNMASK, Phase.DONE) else 0}
