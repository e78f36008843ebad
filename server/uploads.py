"""Reading one upload: framing, metadata, arrays, and whether they fit the model.

Pure functions of the request body and the task (no locks, no database writes), so the
round machine runs them outside its lock. Each refusal is a named :class:`ApiError` whose
``code`` is also the reason the round counts it under.

An upload is on the wire, not at rest: it keeps its framing (``FKBU`` + JSON metadata +
:mod:`fedkb.codec` arrays, :func:`fedkb.wire.split_upload`). Its arrays pass the
contract's one gate, :func:`fedkb.weights.check_weights`, whose reason codes map to the
API's error codes by :data:`UPDATE_ERROR_CODES` (the codes devices see are unchanged:
a wrong number of arrays has always been ``bad_shape``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from fedkb.codec import CodecError, decode_arrays
from fedkb.server.errors import BadRequest, NotFound, Unprocessable
from fedkb.weights import WeightsError, WeightSpec, check_weights
from fedkb.wire import UploadMetadata, WireError, split_upload

# check_weights reason -> the API error code (and the round's refusal reason)
UPDATE_ERROR_CODES = {"bad_count": "bad_shape", "bad_name": "bad_shape",
                      "not_array": "bad_dtype", "bad_dtype": "bad_dtype",
                      "bad_shape": "bad_shape", "non_finite": "non_finite"}


def upload_fingerprint(body: bytes) -> str:
    """Identifies an upload for replay detection without hashing megabytes twice.

    SHA-256 over the framed JSON header, the body length and the codec trailer (which holds
    the CRC-32 of all array bytes, verified when the arrays are decoded). Two different
    updates of one task collide only if their array bytes share a CRC-32 (p = 2^-32), and
    then only that device's own second upload is affected.
    """
    n = int.from_bytes(body[4:8], "little") if len(body) >= 8 else 0
    h = hashlib.sha256(body[: 8 + n])
    h.update(len(body).to_bytes(8, "little"))
    h.update(body[-8:] if len(body) > 8 + n else b"")
    return h.hexdigest()


def parse_upload(body: bytes, task_id: str, round_id: int, kind: str,
                 specs: Sequence[WeightSpec],
                 round_exists: Callable[[int], bool]) -> tuple[UploadMetadata, list[np.ndarray]]:
    """The metadata and update arrays of ``body`` for task ``task_id``, or a named error.

    A training report carries ``num_examples >= 1`` and arrays that match ``specs``
    (count, shapes, dtypes) and are all finite; an evaluation report carries no arrays.
    """
    try:
        meta, payload = split_upload(body)
    except WireError as exc:
        raise BadRequest(str(exc), "malformed_upload") from exc
    if meta.task_id != task_id:
        raise BadRequest("the metadata's task_id is not the task of the URL", "invalid_message")
    if meta.round_id != round_id:
        if not round_exists(meta.round_id):
            raise NotFound(f"no round {meta.round_id}", "unknown_round")
        raise BadRequest(f"task {task_id} is in round {round_id}, not {meta.round_id}",
                         "round_mismatch")
    if kind == "evaluate":
        if len(payload):
            raise Unprocessable("an evaluation task uploads metrics only", "unexpected_update")
        return meta, []
    if meta.num_examples < 1:
        raise Unprocessable("a training report needs num_examples >= 1", "no_examples")
    if not len(payload):
        raise Unprocessable("a training report needs the update arrays", "missing_update")
    try:
        arrays = decode_arrays(payload)
    except CodecError as exc:
        raise BadRequest(f"update bytes: {exc}", "malformed_upload") from exc
    try:
        arrays = check_weights(specs, arrays)
    except WeightsError as exc:
        raise Unprocessable(str(exc), UPDATE_ERROR_CODES[exc.reason]) from exc
    return meta, arrays
