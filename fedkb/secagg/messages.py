"""The protocol's messages, typed, with strict JSON forms (bytes as standard base64).

``to_json`` gives a JSON string; ``from_json`` (a string or an already parsed dict)
checks the ``type`` tag, the field set, every field's type and size and raises
:class:`MessageError` with the reason. Phone ids are integers in [1, 2^32); in JSON maps
they are decimal-string keys without sign or leading zeros.

A masked vector travels as ``ceil(k / 8)`` little-endian bytes per entry
(:func:`pack_residues`), so its size is ``dim * ceil(k/8)`` bytes before base64, and an
entry at or above 2^k is refused on reading (:func:`unpack_residues`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

import numpy as np

from fedkb.secagg.params import _ROUND_ID, MAX_ID
from fedkb.secagg.prg import work_dtype


class MessageError(ValueError):
    """A message that does not parse or does not have the protocol's shape."""


@dataclass(frozen=True)
class Refusal:
    """Why a party did not accept a message (or aborted): failures as data."""

    code: str  # machine-readable, e.g. "duplicate", "bad_ciphertext", "phase_closed"
    reason: str


@dataclass(frozen=True)
class Abort:
    """The round stopped at ``phase`` with ``reason`` (e.g. fewer than t phones left)."""

    phase: str
    reason: str


# field kinds: how each is written to and read from JSON
def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(v: Any, name: str) -> bytes:
    if not isinstance(v, str):
        raise MessageError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(v.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise MessageError(f"{name} is not valid base64") from None


def _id(v: Any, name: str) -> int:
    if isinstance(v, str):
        if not v.isdigit() or v != str(int(v)):
            raise MessageError(f"{name} id {v!r} is not a canonical decimal")
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ID:
        raise MessageError(f"{name} must be a phone id in [1, 2^32)")
    return v


def _write(kind: str, v: Any) -> Any:
    if kind in ("bytes", "key"):
        return _b64(v)
    if kind == "idmap":
        return {str(u): _b64(b) for u, b in sorted(v.items())}
    if kind == "keymap":
        return {str(u): [_b64(c), _b64(s)] for u, (c, s) in sorted(v.items())}
    if kind == "ids":
        return list(v)
    return v


def _read(kind: str, v: Any, name: str) -> Any:
    if kind == "str":
        if not isinstance(v, str) or not _ROUND_ID.match(v):
            raise MessageError(f"{name} must be a round id")
        return v
    if kind == "id":
        return _id(v, name)
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise MessageError(f"{name} must be a non-negative integer")
        return v
    if kind == "bytes":
        return _unb64(v, name)
    if kind == "key":
        raw = _unb64(v, name)
        if len(raw) != 32:
            raise MessageError(f"{name} must be 32 bytes, not {len(raw)}")
        return raw
    if kind == "idmap":
        if not isinstance(v, dict):
            raise MessageError(f"{name} must be an object")
        return {_id(u, name): _unb64(b, name) for u, b in v.items()}
    if kind == "keymap":
        if not isinstance(v, dict):
            raise MessageError(f"{name} must be an object")
        out = {}
        for u, pair in v.items():
            if not isinstance(pair, list) or len(pair) != 2:
                raise MessageError(f"{name} entries are [c_pk, s_pk]")
            out[_id(u, name)] = (_read("key", pair[0], name), _read("key", pair[1], name))
        return out
    if kind == "ids":
        if not isinstance(v, list):
            raise MessageError(f"{name} must be a list")
        ids = tuple(_id(u, name) for u in v)
        if list(ids) != sorted(set(ids)):
            raise MessageError(f"{name} must be distinct and sorted")
        return ids
    raise AssertionError(kind)


class _Message:
    TYPE: ClassVar[str]
    KINDS: ClassVar[dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for f in fields(self):  # type: ignore[arg-type]
            out[f.name] = _write(self.KINDS[f.name], getattr(self, f.name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, Any]) -> Self:
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise MessageError("not JSON") from None
        if not isinstance(data, dict):
            raise MessageError("a message is a JSON object")
        if data.get("type") != cls.TYPE:
            raise MessageError(f"expected a {cls.TYPE!r} message, got {data.get('type')!r}")
        expected = set(cls.KINDS) | {"type"}
        if set(data) != expected:
            raise MessageError(f"fields {sorted(set(data) ^ expected)} missing or unexpected")
        return cls(**{name: _read(kind, data[name], name) for name, kind in cls.KINDS.items()})


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    TYPE = "advertise_keys"
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "str",
        "sender": "id",
        "c_pk": "key",
        "s_pk": "key",
    }
    round_id: str
    sender: int
    c_pk: bytes
    s_pk: bytes


@dataclass(frozen=True)
class KeyRoster(_Message):
    """Server to phones: the U1 phones' public keys, ``{id: (c_pk, s_pk)}``."""

    TYPE = "key_roster"
    KINDS: ClassVar[dict[str, str]] = {"round_id": "str", "keys": "keymap"}
    round_id: str
    keys: dict[int, tuple[bytes, bytes]]


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Phone to server: one sealed share pair per holder, and a commitment to b."""

    TYPE = "share_keys"
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "str",
        "sender": "id",
        "ciphertexts": "idmap",
        "b_commitment": "key",
    }
    round_id: str
    sender: int
    ciphertexts: dict[int, bytes]  # recipient -> sealed (sender, recipient, b share, s_SK share)
    b_commitment: bytes


@dataclass(frozen=True)
class ShareRelay(_Message):
    """Server to one phone: the ciphertexts addressed to it, by sender (U2)."""

    TYPE = "share_relay"
    KINDS: ClassVar[dict[str, str]] = {"round_id": "str", "recipient": "id", "ciphertexts": "idmap"}
    round_id: str
    recipient: int
    ciphertexts: dict[int, bytes]


@dataclass(frozen=True)
class MaskedInput(_Message):
    TYPE = "masked_input"
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "str",
        "sender": "id",
        "k": "int",
        "length": "int",
        "data": "bytes",
    }
    round_id: str
    sender: int
    k: int
    length: int
    data: bytes  # pack_residues(y, k)


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Server to survivors: U3, the phones whose masked input was accepted."""

    TYPE = "unmask_request"
    KINDS: ClassVar[dict[str, str]] = {"round_id": "str", "survivors": "ids"}
    round_id: str
    survivors: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Shares of b for survivors and of s_SK for dropped phones; never both for one phone."""

    TYPE = "unmask_response"
    KINDS: ClassVar[dict[str, str]] = {
        "round_id": "str",
        "sender": "id",
        "b_shares": "idmap",
        "sk_shares": "idmap",
    }
    round_id: str
    sender: int
    b_shares: dict[int, bytes]
    sk_shares: dict[int, bytes]


def pack_residues(y: np.ndarray, k: int) -> bytes:
    """``ceil(k/8)`` little-endian bytes per entry."""
    nb = -(-k // 8)
    w = work_dtype(k).itemsize
    le = np.ascontiguousarray(y, dtype=np.dtype(f"<u{w}"))
    if nb == w:
        return le.tobytes()
    return np.ascontiguousarray(le.view(np.uint8).reshape(-1, w)[:, :nb]).tobytes()


def unpack_residues(raw: bytes, k: int, length: int) -> np.ndarray:
    """The inverse of :func:`pack_residues` (dtype :func:`~.prg.work_dtype`); refuses
    a wrong byte count or an entry >= 2^k with :class:`MessageError`."""
    nb = -(-k // 8)
    dt = work_dtype(k)
    w = dt.itemsize
    if len(raw) != length * nb:
        raise MessageError(f"{len(raw)} bytes do not hold {length} entries of {nb} bytes")
    if nb == w:
        y = np.frombuffer(raw, dtype=np.dtype(f"<u{w}")).astype(dt)
    else:
        buf = np.zeros((length, w), dtype=np.uint8)
        buf[:, :nb] = np.frombuffer(raw, dtype=np.uint8).reshape(length, nb)
        y = buf.view(np.dtype(f"<u{w}")).reshape(length).astype(dt)
    if k < 8 * w and length and int(y.max()) >> k:
        raise MessageError(f"an entry is not in Z_2^{k}: wrong modulus")
    return y
