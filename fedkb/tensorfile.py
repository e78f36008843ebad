"""Weights at rest: named tensors in safetensors bytes, with string metadata.

The artifact's initial weights (``weights.safetensors``) and the server's checkpoints
are safetensors files (https://huggingface.co/docs/safetensors): an 8-byte header length,
a JSON header naming every tensor's dtype, shape and byte range, then the raw
little-endian data. No pickle, nothing executed on load, and any safetensors reader in
any language opens them. The header is written with sorted keys, so equal tensors and
metadata always give equal bytes (and equal SHA-256). The header's ``__metadata__``
holds strings only; this project puts there the format id and :data:`ORDER_KEY`, the
canonical weight order as a JSON list of names (safetensors itself keeps tensors by
name, sorted, not in the model's order).

What moves over the network is not "at rest" and keeps its own framing: updates and
downloaded weights use :mod:`fedkb.codec` inside :mod:`fedkb.wire`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from fedkb.weights import BAD_NAME, WeightsError, WeightSpec, check_weights

FORMAT_KEY = "format"
ORDER_KEY = "weights"  # JSON list of the weight names in canonical order


class TensorFileError(ValueError):
    """Bytes that are not a readable safetensors file (or lack what the reader needs)."""


def encode_tensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
                   ) -> bytes:
    """``tensors`` (name -> array) as safetensors bytes with ``metadata`` (strings)."""
    meta = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TypeError("safetensors metadata holds strings only")
    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta or None)
    return _canonical(data)


def _canonical(data: bytes) -> bytes:
    """The same file with its header's keys sorted, so equal tensors give equal bytes.

    safetensors writes ``__metadata__`` from a hash map whose order changes from call to
    call; artifacts and checkpoints are compared by SHA-256, so their bytes must not. The
    header stays space-padded to a multiple of 8 bytes, as safetensors writes it.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":"))
    raw = header.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (``{}`` if none), without reading tensors."""
    if len(data) < 8:
        raise TensorFileError("not a safetensors file: shorter than its header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise TensorFileError("not a safetensors file: header longer than the data")
    try:
        header = json.loads(data[8 : 8 + n])
    except ValueError as exc:
        raise TensorFileError(f"not a safetensors file: bad header ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def decode_tensors(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors (name -> array) and the metadata of safetensors bytes."""
    meta = read_metadata(data)
    try:
        return load(bytes(data)), meta
    except SafetensorError as exc:
        raise TensorFileError(f"not a safetensors file: {exc}") from exc


def encode_weights(specs: Sequence[WeightSpec], weights: Sequence[np.ndarray],
                   metadata: Mapping[str, str] | None = None,
                   extra: Mapping[str, np.ndarray] | None = None) -> bytes:
    """Checked ``weights`` (spec order) named by their specs, plus ``extra`` tensors.

    The canonical order is recorded under :data:`ORDER_KEY`; ``extra`` names (e.g. the
    server optimizer's ``state.0``, ``state.1``, ...) must not collide with weight names.
    """
    arrays = check_weights(specs, weights)
    tensors = {s.name: a for s, a in zip(specs, arrays, strict=True)}
    for name, a in (extra or {}).items():
        if name in tensors:
            raise ValueError(f"extra tensor {name!r} has a weight's name")
        tensors[name] = a
    meta = {**(metadata or {}), ORDER_KEY: json.dumps([s.name for s in specs])}
    return encode_tensors(tensors, meta)


def decode_weights(specs: Sequence[WeightSpec], data: bytes
                   ) -> tuple[list[np.ndarray], dict[str, np.ndarray], dict[str, str]]:
    """The weights (checked, spec order), the other tensors and the metadata of ``data``.

    :class:`TensorFileError` if the bytes are no safetensors file or record the specs'
    names in another order; :class:`~fedkb.weights.WeightsError` if the weights do not
    fit ``specs`` (``bad_name`` for a missing one).
    """
    tensors, meta = decode_tensors(data)
    if ORDER_KEY in meta:
        try:
            order = json.loads(meta[ORDER_KEY])
        except ValueError as exc:
            raise TensorFileError(f"metadata {ORDER_KEY!r} is not JSON") from exc
        names = [s.name for s in specs]
        if order != names and sorted(order) == sorted(names):
            raise TensorFileError(f"weights recorded in order {order}, the model's is "
                                  f"{[s.name for s in specs]}")
    names = {s.name for s in specs}
    missing = sorted(names - set(tensors))
    if missing:
        raise WeightsError(BAD_NAME, f"weights by name: missing {missing}")
    weights = check_weights(specs, {k: tensors[k] for k in names})
    return weights, {k: v for k, v in tensors.items() if k not in names}, meta


__all__ = ["TensorFileError", "decode_tensors", "decode_weights", "encode_tensors",
           "encode_weights", "read_metadata"]
