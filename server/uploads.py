"""Reading one upload: framing, metadata, arrays, and whether they fit the model.

Pure functions of the request body and the task (no locks, no database writes), so the
round machine runs them outside its lock. Each refusal is a named :class:`ApiError` whose
``code`` is also the reason the round counts it under.

An upload is on the wire, not at rest: it keeps its framing (``FKBU`` + JSON metadata +
:mod:`fedkb.codec` arrays, :func:`fedkb.wire.split_upload`). Its arrays pass the
contract's one gate, :func:`fedkb.weights.check_weights`, whose reason codes map to the
API's error codes by :data:`UPDATE_ERROR_CODES` (the codes devices see are unchanged:
a wrong number of arrays has always been ``bad_shape``).

Beyond fitting the model, an upload must be plausible for its task
(:class:`UploadLimits`): a training update no longer than the round's norm bound
(``update_too_large``) and a ``num_examples`` no larger than the plan lets a phone train
on (``too_many_examples``). Both are refused rather than clipped: an honest phone never
comes near either bound (see :func:`fedkb.server.aggregate.derived_update_norm`), so such
an upload is a bug or an attack, and folding it, even scaled down, would give its
direction the full weight it claims. Checked here, before the fold, so a refused upload
changes nothing but the round's refusal counts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedkb.codec import CodecError
from fedkb.compression.encoding import EncodingError
from fedkb.plan_codec import decode_delta
from fedkb.server.aggregate import global_norm64
from fedkb.server.errors import BadRequest, NotFound, Unprocessable
from fedkb.weights import WeightsError, WeightSpec, check_weights
from fedkb.wire import Plan, UploadMetadata, WireError, split_upload

# check_weights reason -> the API error code (and the round's refusal reason)
UPDATE_ERROR_CODES = {"bad_count": "bad_shape", "bad_name": "bad_shape",
                      "not_array": "bad_dtype", "bad_dtype": "bad_dtype",
                      "bad_shape": "bad_shape", "non_finite": "non_finite"}

# EncodingError reason -> the API error code: an encoding the plan did not ask for is
# refused as such (422); a body of the right kind that is broken is malformed (400)
ENCODING_ERROR_CODES = {"wrong_encoding": "wrong_encoding", "wrong_version": "wrong_encoding",
                        "wrong_seed": "wrong_encoding", "shape_mismatch": "bad_shape",
                        "bad_value": "non_finite", "malformed": "malformed_encoding",
                        "truncated": "malformed_encoding", "oversized": "malformed_encoding",
                        "corrupt": "malformed_encoding", "bad_scale": "malformed_encoding"}


# the most examples any report may claim (exact as a float; sums of them fit SQLite's
# 64-bit integers); an evaluation report, which is not capped by steps, is held to this
MAX_CLAIMED_EXAMPLES = 2**53
_FLOAT32_PLAN = Plan("train", 1.0, 1, 1, 1)  # a plan that asks for plain float32 arrays


@dataclass(frozen=True)
class UploadLimits:
    """What one round accepts of an upload besides fitting the model.

    Attributes:
        max_update_norm: the longest training update (global L2 norm) folded.
        max_examples: the largest ``num_examples`` a report may claim.
    """

    max_update_norm: float
    max_examples: int = MAX_CLAIMED_EXAMPLES


def examples_budget(plan: Plan) -> int:
    """The most examples a phone can train on under ``plan``: ``batch_size x max_steps x
    epochs`` (an honest phone reports distinct windows used, at most ``batch_size x
    max_steps``); an evaluation plan, which runs over the whole shard, is not capped by
    steps, only by :data:`MAX_CLAIMED_EXAMPLES`."""
    if plan.kind != "train" or plan.max_steps <= 0:
        return MAX_CLAIMED_EXAMPLES
    return min(MAX_CLAIMED_EXAMPLES, plan.batch_size * plan.max_steps * plan.epochs)


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
                 round_exists: Callable[[int], bool], limits: UploadLimits,
                 plan: Plan | None = None) -> tuple[UploadMetadata, list[np.ndarray]]:
    """The metadata and update arrays of ``body`` for task ``task_id``, or a named error.

    A training report carries ``1 <= num_examples <= limits.max_examples`` and arrays
    that match ``specs`` (count, shapes, dtypes), are all finite and whose global norm is
    at most ``limits.max_update_norm``; an evaluation report carries no arrays and no
    more than ``limits.max_examples`` examples. The arrays are encoded as the task's
    ``plan`` asks (:func:`fedkb.plan_codec.decode_delta`; None: float32 codec
    arrays); any other encoding is refused (``wrong_encoding``), a broken one too
    (``malformed_encoding``).
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
    if meta.num_examples > limits.max_examples:
        raise Unprocessable(f"num_examples {meta.num_examples} is more than the task's "
                            f"plan allows ({limits.max_examples})", "too_many_examples")
    if kind == "evaluate":
        if len(payload):
            raise Unprocessable("an evaluation task uploads metrics only", "unexpected_update")
        return meta, []
    if meta.num_examples < 1:
        raise Unprocessable("a training report needs num_examples >= 1", "no_examples")
    if not len(payload):
        raise Unprocessable("a training report needs the update arrays", "missing_update")
    try:
        arrays = decode_delta(payload, plan or _FLOAT32_PLAN, [s.shape for s in specs])
    except CodecError as exc:
        raise BadRequest(f"update bytes: {exc}", "malformed_upload") from exc
    except EncodingError as exc:
        code = ENCODING_ERROR_CODES[exc.reason]
        if code in ("wrong_encoding", "bad_shape", "non_finite"):
            raise Unprocessable(f"encoded update: {exc}", code) from exc
        raise BadRequest(f"encoded update: {exc}", code) from exc
    try:
        arrays = check_weights(specs, arrays)
    except WeightsError as exc:
        raise Unprocessable(str(exc), UPDATE_ERROR_CODES[exc.reason]) from exc
    norm = global_norm64(arrays)
    if not norm <= limits.max_update_norm:
        raise Unprocessable(f"the update's global norm {norm:.4g} is over the bound "
                            f"{limits.max_update_norm:.4g}", "update_too_large")
    return meta, arrays
