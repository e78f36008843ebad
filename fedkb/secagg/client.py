"""A phone's side of a secure round: a state machine over the four phases.

    NEW --advertise--> ADVERTISED --share_keys--> SHARED --masked_input--> MASKED
        --unmask--> DONE          (any refusal of the phone's own making: ABORTED)

Each step takes the server's message of the previous phase and returns the phone's
next message or a :class:`~.messages.Refusal` saying why it stops; a phone that stops is
a dropout to the server, which the protocol survives. What a phone checks:

- ShareKeys: the roster has the phone's own keys unchanged, no key twice, and at least
  t phones (and a share threshold's worth of its holders);
- MaskedInputCollection: every relayed ciphertext opens (AES-GCM, bound to the round,
  the sender and this phone) and holds shares for this phone from that sender; a single
  forged, replayed or misdelivered ciphertext makes the phone stop, because masking with
  a peer set the server does not know would corrupt the sum;
- Unmasking: the survivor set has at least t phones, includes this phone, and only
  phones it exchanged shares with. It answers once per round, with b-shares for
  survivors and s_SK-shares for the others it holds shares of, never both for one peer.
"""

from __future__ import annotations

import enum
import hashlib
import secrets

import numpy as np

from fedkb.secagg import keys, shamir
from fedkb.secagg.messages import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    Refusal,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
    pack_residues,
)
from fedkb.secagg.params import RoundParams
from fedkb.secagg.prg import MaskStream, reduce, work_dtype

PLAINTEXT_BYTES = 8 + 2 * shamir.SHARE_BYTES


class Phase(enum.Enum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    DONE = "done"
    ABORTED = "aborted"


def commit_b(b: bytes, round_id: str, sender: int) -> bytes:
    """SHA-256 commitment to a self-mask seed (b has 256 bits of entropy, so it hides b)."""
    return hashlib.sha256(f"fedkb-secagg/v1/b/{round_id}/{sender}/".encode() + b).digest()


def pack_plaintext(sender: int, recipient: int, b_share: shamir.Share,
                   sk_share: shamir.Share) -> bytes:
    return (sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")
            + b_share.to_bytes() + sk_share.to_bytes())


class Phone:
    """One phone's secure-aggregation state for one round."""

    def __init__(self, uid: int, params: RoundParams) -> None:
        if uid not in params.clients:
            raise ValueError(f"phone {uid} is not selected for round {params.round_id}")
        self.uid = uid
        self.params = params
        self.phase = Phase.NEW
        self._c = keys.KeyPair.generate()
        self._s = keys.KeyPair.generate()
        self._b = b""
        self._roster: dict[int, tuple[bytes, bytes]] = {}
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (b share, s_SK share)
        self.refusal: Refusal | None = None

    def _stop(self, code: str, reason: str) -> Refusal:
        self.phase = Phase.ABORTED
        self.refusal = Refusal(code, f"phone {self.uid}: {reason}")
        return self.refusal

    def _expect(self, phase: Phase, round_id: str) -> Refusal | None:
        if round_id != self.params.round_id:
            return Refusal("wrong_round", f"message for round {round_id!r}, "
                           f"this is {self.params.round_id!r}")
        if self.phase is not phase:
            return Refusal("wrong_phase", f"phone {self.uid} is {self.phase.value}, "
                           f"not {phase.value}")
        return None

    def advertise(self) -> AdvertiseKeys:
        if self.phase is not Phase.NEW:
            raise RuntimeError("keys are advertised once per round")
        self.phase = Phase.ADVERTISED
        return AdvertiseKeys(self.params.round_id, self.uid, self._c.public, self._s.public)

    def share_keys(self, roster: KeyRoster) -> ShareKeys | Refusal:
        if (bad := self._expect(Phase.ADVERTISED, roster.round_id)) is not None:
            return bad
        p = self.params
        if roster.keys.get(self.uid) != (self._c.public, self._s.public):
            return self._stop("bad_roster", "the roster does not carry this phone's keys")
        if not set(roster.keys) <= set(p.clients):
            return self._stop("bad_roster", "the roster names phones not selected")
        flat = [k for pair in roster.keys.values() for k in pair]
        if len(set(flat)) != len(flat):
            return self._stop("bad_roster", "a public key appears twice in the roster")
        if len(roster.keys) < p.threshold:
            return self._stop("too_few", f"{len(roster.keys)} phones advertised keys, "
                              f"t={p.threshold}")
        holders = [v for v in p.holders(self.uid) if v in roster.keys]
        if len(holders) < p.share_threshold:
            return self._stop("too_few", f"{len(holders)} holders, {p.share_threshold} needed")
        self._roster = dict(roster.keys)
        self._b = secrets.token_bytes(32)
        t = p.share_threshold
        b_sh = shamir.split(self._b, t, holders)
        sk_sh = shamir.split(self._s.private_bytes(), t, holders)
        out: dict[int, bytes] = {}
        for v, bs, ss in zip(holders, b_sh, sk_sh, strict=True):
            if v == self.uid:
                self._held[v] = (bs.to_bytes(), ss.to_bytes())
                continue
            key = keys.derive(self._c.private, self._roster[v][0], purpose=keys.PURPOSE_ENCRYPT,
                              round_id=p.round_id, a=self.uid, b=v)
            out[v] = keys.seal(key, pack_plaintext(self.uid, v, bs, ss), round_id=p.round_id,
                               sender=self.uid, recipient=v)
        self.phase = Phase.SHARED
        return ShareKeys(p.round_id, self.uid, out, commit_b(self._b, p.round_id, self.uid))

    def _open(self, sender: int, blob: bytes) -> tuple[bytes, bytes]:
        p = self.params
        key = keys.derive(self._c.private, self._roster[sender][0], purpose=keys.PURPOSE_ENCRYPT,
                          round_id=p.round_id, a=self.uid, b=sender)
        pt = keys.open_sealed(key, blob, round_id=p.round_id, sender=sender, recipient=self.uid)
        if len(pt) != PLAINTEXT_BYTES:
            raise keys.CryptoError(f"shares from {sender} have the wrong size")
        if (int.from_bytes(pt[:4], "big"), int.from_bytes(pt[4:8], "big")) != (sender, self.uid):
            raise keys.CryptoError(f"shares from {sender} name another sender or recipient")
        raw_b, raw_sk = pt[8:8 + shamir.SHARE_BYTES], pt[8 + shamir.SHARE_BYTES:]
        for raw in (raw_b, raw_sk):
            sh = shamir.Share.from_bytes(raw)
            if sh.x != self.uid or sh.t != p.share_threshold:
                raise keys.CryptoError(f"a share from {sender} is not this phone's")
        return raw_b, raw_sk

    def masked_input(self, relay: ShareRelay, x: np.ndarray) -> MaskedInput | Refusal:
        """``y = x + PRG(b) + sum_v ±PRG(s_uv) mod 2^k`` over the peers whose shares arrived."""
        if (bad := self._expect(Phase.SHARED, relay.round_id)) is not None:
            return bad
        p = self.params
        if relay.recipient != self.uid:
            return self._stop("misdelivered", f"relay for phone {relay.recipient}")
        senders = set(relay.ciphertexts)
        if not senders <= (p.peers(self.uid) & set(self._roster)):
            return self._stop("bad_relay", "shares from phones that are not peers in the roster")
        x = np.asarray(x)
        if x.shape != (p.dim,) or x.dtype.kind != "u":
            return self._stop("bad_input", f"input must be unsigned [{p.dim}], not "
                              f"{x.dtype}{list(x.shape)}")
        if x.size and int(x.max()) >> p.k:
            return self._stop("bad_input", f"input is not in Z_2^{p.k}")
        try:
            opened = {v: self._open(v, blob) for v, blob in sorted(relay.ciphertexts.items())}
        except (keys.CryptoError, shamir.ShamirError) as e:
            return self._stop("bad_ciphertext", str(e))
        if len(senders) + 1 < p.share_threshold or (p.full and len(senders) + 1 < p.threshold):
            return self._stop("too_few", f"shares from only {len(senders)} peers")
        self._held.update(opened)
        stream = MaskStream(p.dim, p.k)
        y = x.astype(work_dtype(p.k))
        stream.add(y, self._b)
        for v in sorted(senders):
            seed = keys.derive(self._s.private, self._roster[v][1], purpose=keys.PURPOSE_MASK,
                               round_id=p.round_id, a=self.uid, b=v)
            stream.add(y, seed, 1 if self.uid < v else -1)
        reduce(y, p.k)
        self.phase = Phase.MASKED
        return MaskedInput(p.round_id, self.uid, p.k, p.dim, pack_residues(y, p.k))

    def unmask(self, req: UnmaskRequest) -> UnmaskResponse | Refusal:
        if (bad := self._expect(Phase.MASKED, req.round_id)) is not None:
            return bad
        p = self.params
        u3 = set(req.survivors)
        if self.uid not in u3:
            return self._stop("bad_survivors", "this phone is not in the survivor set")
        if len(u3) < p.threshold:
            return self._stop("too_few", f"{len(u3)} survivors, t={p.threshold}")
        if not u3 <= set(p.clients):
            return self._stop("bad_survivors", "survivors include phones not selected")
        if len(u3 & set(p.holders(self.uid))) < p.share_threshold:
            # SecAgg+: with too few surviving neighbours the masks left on this phone's
            # vector would be ones the server can remove (Bell et al. 2020)
            return self._stop("too_few", f"only {len(u3 & set(p.holders(self.uid)))} of "
                              f"this phone's holders survived, {p.share_threshold} needed")
        strangers = (u3 & p.peers(self.uid)) - set(self._held)
        if strangers:
            return self._stop("bad_survivors", f"survivors {sorted(strangers)[:5]} never "
                              "shared keys with this phone")
        b_out = {v: pair[0] for v, pair in self._held.items() if v in u3}
        sk_out = {v: pair[1] for v, pair in self._held.items() if v not in u3}
        self.phase = Phase.DONE
        self._held.clear()
        return UnmaskResponse(p.round_id, self.uid, b_out, sk_out)
