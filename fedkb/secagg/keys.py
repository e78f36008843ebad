"""Key agreement and authenticated share encryption: X25519, HKDF-SHA256, AES-256-GCM.

Each phone makes two fresh X25519 key pairs per round (Bonawitz et al. 2017, sec. 4):
``c`` to encrypt the shares it sends its peers, ``s`` to agree the pairwise mask seeds.
A shared secret is never used raw: :func:`derive` runs the X25519 output through
HKDF-SHA256 with an ``info`` string that names the purpose and the round, so the same
pair of keys gives unrelated keys for encryption and for masking, and a key from one
round is useless in another. Both ends of a pair derive the same key because ``info``
names the pair in sorted order.

:func:`seal` encrypts with AES-256-GCM under a random 96-bit nonce and binds the round,
the sender and the recipient as associated data: a ciphertext replayed into another
round, relayed to the wrong recipient or claimed by another sender fails authentication
(:class:`CryptoError`), as does any bit flipped in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
PURPOSE_ENCRYPT = "enc"
PURPOSE_MASK = "mask"


class CryptoError(ValueError):
    """A key that cannot be used or a ciphertext that fails authentication."""


@dataclass(frozen=True, eq=False)
class KeyPair:
    """An X25519 key pair; ``public`` is the 32-byte raw encoding that travels."""

    private: X25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        sk = X25519PrivateKey.generate()
        return cls(sk, sk.public_key().public_bytes_raw())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        if len(raw) != KEY_BYTES:
            raise CryptoError(f"an X25519 private key is {KEY_BYTES} bytes, not {len(raw)}")
        sk = X25519PrivateKey.from_private_bytes(raw)
        return cls(sk, sk.public_key().public_bytes_raw())

    def private_bytes(self) -> bytes:
        return self.private.private_bytes_raw()


def public_key(raw: bytes) -> X25519PublicKey:
    if len(raw) != KEY_BYTES:
        raise CryptoError(f"an X25519 public key is {KEY_BYTES} bytes, not {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def _info(purpose: str, round_id: str, a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return f"fedkb-secagg/v1/{purpose}/{round_id}/{lo}/{hi}".encode()


def derive(own: X25519PrivateKey, peer_public: bytes | X25519PublicKey, *, purpose: str,
           round_id: str, a: int, b: int) -> bytes:
    """The 256-bit key ``HKDF-SHA256(X25519(own, peer), info=purpose|round|min(a,b)|max(a,b))``."""
    peer = peer_public if isinstance(peer_public, X25519PublicKey) else public_key(peer_public)
    try:
        shared = own.exchange(peer)
    except ValueError as e:  # a low-order point gives the all-zero secret
        raise CryptoError(f"key agreement failed: {e}") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=_info(purpose, round_id, a, b)).derive(shared)


def _aad(round_id: str, sender: int, recipient: int) -> bytes:
    return f"fedkb-secagg/v1/shares/{round_id}/{sender}->{recipient}".encode()


def sealed_size(plaintext_bytes: int) -> int:
    return NONCE_BYTES + plaintext_bytes + TAG_BYTES


def seal(key: bytes, plaintext: bytes, *, round_id: str, sender: int, recipient: int) -> bytes:
    """``nonce || AES-256-GCM(key, nonce, plaintext, aad=round|sender|recipient)``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(round_id, sender, recipient))


def open_sealed(key: bytes, blob: bytes, *, round_id: str, sender: int, recipient: int) -> bytes:
    """The plaintext of :func:`seal`, or :class:`CryptoError` if anything was changed."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                   _aad(round_id, sender, recipient))
    except InvalidTag:
        raise CryptoError(f"ciphertext from {sender} to {recipient} in round {round_id!r} "
                          "fails authentication (forged, replayed or misdelivered)") from None
