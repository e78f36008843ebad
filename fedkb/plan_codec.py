"""The task plan's compression, applied: what a phone encodes and what the server expects.

A training :class:`~fedkb.wire.Plan` names its uplink encoding (``uplink``: ``float32``,
``q8``, ``q4``, ``q2``), whether the update is rotated first (``rotate``, with the task's
own ``rotation_seed``, which the server stores with the task) and the dtype of the global
weights the phone downloads (``downlink``: ``float32`` or ``float16``). The phone never
guesses: :func:`plan_encoding` turns the plan into the one :class:`Encoding` both ends
use, :func:`encode_delta` is the phone's side and :func:`decode_delta` the server's.

A plain ``float32`` plan keeps the upload as it always was (:mod:`fedkb.codec` arrays,
``FKBA`` bytes); any other plan sends a self-describing ``FKBQ`` body
(:mod:`fedkb.compression.encoding`). :func:`decode_delta` refuses a body of the other
kind as ``wrong_encoding``, so a phone cannot pick its own encoding.

The quantizer's random rounding draws from a generator seeded by the task's batch seed:
the same task encodes to the same bytes, so a retried upload is the identical retry the
server recognizes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from fedkb.codec import decode_arrays, encode_arrays
from fedkb.compression.encoding import MAGIC, Encoding, EncodingError, decode_update, encode_update
from fedkb.wire import Plan

ROUNDING_STREAM = 0x51A7  # separates the rounding generator from the batch order's
FLOAT16_MAX = float(np.finfo(np.float16).max)


def plan_encoding(plan: Plan) -> Encoding | None:
    """The encoding ``plan`` asks for; None: plain float32 codec arrays (the default)."""
    if plan.uplink == "float32" and not plan.rotate:
        return None
    return Encoding(name=plan.uplink, rotate=plan.rotate, min_elements=plan.min_elements)


def encode_delta(arrays: Sequence[np.ndarray], plan: Plan) -> tuple[bytes, float]:
    """The upload payload of ``arrays`` as ``plan`` says, and the seconds encoding took."""
    t0 = time.perf_counter()
    enc = plan_encoding(plan)
    if enc is None:
        return encode_arrays(list(arrays)), time.perf_counter() - t0
    rng = np.random.default_rng([plan.seed, ROUNDING_STREAM]) if enc.quantized else None
    body = encode_update(arrays, enc, plan.rotation_seed if enc.rotate else None, rng)
    return body, time.perf_counter() - t0


def decode_delta(payload: bytes | memoryview, plan: Plan,
                 shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The float32 arrays of an upload payload encoded as ``plan`` asks.

    Raises :class:`EncodingError` (``wrong_encoding`` for a body of another kind than
    the plan's) or :class:`fedkb.codec.CodecError` for broken float32 codec bytes.
    """
    enc = plan_encoding(plan)
    quantized_body = bytes(payload[:4]) == MAGIC
    if enc is None:
        if quantized_body:
            raise EncodingError("wrong_encoding", "the plan asks for float32 codec arrays, "
                                                  "the update is an encoded (FKBQ) body")
        return decode_arrays(payload)
    if not quantized_body:
        raise EncodingError("wrong_encoding", f"the plan asks for {enc.name}"
                                              f"{' rotated' if enc.rotate else ''}, the "
                                              "update is not an encoded (FKBQ) body")
    return decode_update(payload, shapes, enc, plan.rotation_seed)


# --- downlink ----------------------------------------------------------------------------


def float16_weights(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The global weights as float16 for a ``downlink = "float16"`` broadcast.

    Values beyond float16's range are saturated to it (the server's own model stays
    exact float32; the phone trains in float32 from what it got)."""
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = np.clip(a, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
        out.append(a)
    return out


def as_float32(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Downloaded weights as the float32 the phone trains in."""
    return [np.asarray(a, np.float32) if np.asarray(a).dtype.kind == "f" else a
            for a in arrays]
