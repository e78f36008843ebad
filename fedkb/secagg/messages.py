"""The protocol's messages, typed, with strict JSON forms (bytes as standard base64).

``to_json`` gives a JSON string; ``from_json`` (a string or an already parsed dict)
checks the ``type`` tag, the field set, every field's type and size and raises
:class:`MessageError` with the reason. Phone ids are integers in [1, 2^32); in JSON maps
they are decimal-string keys without sign or leading zeros.

A masked vector travels as ``k`` bits per entry, least significant bit first, entries
back to back (:func:`pack_residues`): ``ceil(dim * k / 8)`` bytes before base64 (13 bits
for 20 phones of q8: 2.26 MB for the `small` model instead of 2.79 MB at two bytes an
entry); the unused bits of the last byte must be zero (:func:`unpack_residues`).
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

    def to_dict(self, omit: tuple[str, ...] = ()) -> dict[str, Any]:
        """The JSON object; ``omit``: bytes fields sent outside it (:meth:`from_json`'s
        ``raw``)."""
        out: dict[str, Any] = {"type": self.TYPE}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name not in omit:
                out[f.name] = _write(self.KINDS[f.name], getattr(self, f.name))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, obj: str | bytes | dict[str, Any], /, **raw: bytes) -> Self:
        """The message from its JSON; ``raw``: bytes fields that came outside the JSON
        (the framed masked input's vector), which the JSON then must not have."""
        if any(cls.KINDS.get(name) != "bytes" for name in raw):
            raise MessageError(f"only bytes fields of a {cls.TYPE!r} come outside its JSON")
        data = obj
        if isinstance(data, str | bytes):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError):
                raise MessageError("not JSON") from None
        if not isinstance(data, dict):
            raise MessageError("a message is a JSON object")
        if data.get("type") != cls.TYPE:
            raise MessageError(f"expected a {cls.TYPE!r} message, got {data.get('type')!r}")
        expected = (set(cls.KINDS) - set(raw)) | {"type"}
        if set(data) != expected:
            raise MessageError(f"fields {sorted(set(data) ^ expected)} missing or unexpected")
        return cls(**{name: bytes(raw[name]) if name in raw else _read(kind, data[name], name)
                      for name, kind in cls.KINDS.items()})


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

    def header(self) -> dict[str, Any]:
        """The message without its vector: the framed form's JSON
        (:func:`fedkb.wire.frame_secagg`; read back with ``from_json(header, data=...)``)."""
        return self.to_dict(omit=("data",))


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


CHUNK = 1 << 16  # entries packed at a time (a multiple of 8: whole bytes per chunk)


def packed_size(length: int, k: int) -> int:
    """Bytes of ``length`` entries of ``k`` bits."""
    return -(-length * k // 8)


def pack_residues(y: np.ndarray, k: int) -> bytes:
    """``k`` bits per entry, least significant first, entries back to back; the bits of
    the last byte past the end are zero. Entries must be below 2^k (the caller's
    residues are: :func:`~fedkb.compression.field.encode` reduces them)."""
    w = work_dtype(k).itemsize
    le = np.ascontiguousarray(y, dtype=np.dtype(f"<u{w}")).reshape(-1)
    if k == 8 * w:
        return le.tobytes()
    if k <= 32:
        return _pack_groups(le, k)
    out = []
    for i in range(0, len(le), CHUNK):
        bits = np.unpackbits(le[i:i + CHUNK].view(np.uint8).reshape(-1, w), axis=1,
                             bitorder="little")[:, :k]
        out.append(np.packbits(bits.reshape(-1), bitorder="little").tobytes())
    return b"".join(out)


def _pack_groups(le: np.ndarray, k: int) -> bytes:
    """Entries of ``k`` <= 32 bits, 8 at a time: 8 entries are exactly ``k`` bytes, built
    as ``ceil(k / 8)`` little-endian 64-bit words by shifts (a phone packs 1.39M entries
    of 13 bits in ~15 ms, where the bit-matrix path takes ~90 ms)."""
    n = len(le)
    groups = -(-n // 8)
    y = np.zeros(groups * 8, dtype=np.uint64)
    y[:n] = le
    y = y.reshape(groups, 8)
    nwords = -(-k // 8)  # 8k bits a group, in 64-bit words
    words = np.zeros((groups, nwords), dtype=np.dtype("<u8"))
    for j in range(8):
        wi, shift = divmod(j * k, 64)
        words[:, wi] |= y[:, j] << np.uint64(shift)
        if shift + k > 64:
            words[:, wi + 1] |= y[:, j] >> np.uint64(64 - shift)
    return words.view(np.uint8).reshape(groups, 8 * nwords)[:, :k].tobytes()[
        :packed_size(n, k)]


def unpack_residues(raw: bytes, k: int, length: int) -> np.ndarray:
    """The inverse of :func:`pack_residues` (dtype :func:`~.prg.work_dtype`); refuses a
    wrong byte count or nonzero padding bits with :class:`MessageError`."""
    dt = work_dtype(k)
    w = dt.itemsize
    if len(raw) != packed_size(length, k):
        raise MessageError(f"{len(raw)} bytes do not hold {length} entries of {k} bits")
    if k == 8 * w:
        return np.frombuffer(raw, dtype=np.dtype(f"<u{w}")).astype(dt)
    pad = len(raw) * 8 - length * k
    if pad and int(raw[-1]) >> (8 - pad):
        raise MessageError("the padding bits after the last entry are not zero")
    if k <= 25:  # every entry lies in the 4 bytes from its first: one gather and a shift
        return _unpack_gather(raw, k, length).astype(dt)
    buf = np.frombuffer(raw, dtype=np.uint8)
    y = np.empty(length, dtype=dt)
    step = CHUNK * k // 8  # bytes of one chunk
    for j, i in enumerate(range(0, length, CHUNK)):
        n = min(CHUNK, length - i)
        bits = np.unpackbits(buf[j * step:j * step + packed_size(n, k)],
                             bitorder="little")[:n * k].reshape(n, k)
        wide = np.zeros((n, 8 * w), dtype=np.uint8)
        wide[:, :k] = bits
        y[i:i + n] = np.packbits(wide, axis=1, bitorder="little").view(
            np.dtype(f"<u{w}")).reshape(n)
    return y


def _unpack_gather(raw: bytes, k: int, length: int) -> np.ndarray:
    """Entries of ``k`` <= 25 bits as uint32: the server unpacks each phone's masked
    vector (1.39M entries of 13 bits: ~20 ms, where the bit-matrix path takes ~85 ms)."""
    buf = np.frombuffer(raw + bytes(4), dtype=np.uint8).astype(np.uint32)
    offset = np.arange(length, dtype=np.int64) * k
    at = offset >> 3
    word = buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16) | (buf[at + 3] << 24)
    return (word >> (offset & 7).astype(np.uint32)) & np.uint32((1 << k) - 1)
