"""Device endpoints: register, check in, upload a result, abort a task.

=======================================  ==============================================
``POST /v1/devices``                     RegisterRequest -> RegisterResponse (201)
``POST /v1/checkin``                     CheckinRequest -> CheckinResponse
``POST /v1/tasks/<task_id>/result``      framed upload (fedkb.wire) -> UploadResult
``POST /v1/tasks/<task_id>/abort``       AbortRequest -> AbortResult
``GET /v1/tasks/<task_id>/secagg``       a secure round's phase for the task -> SecAggStep
                                         (``?wait_ms=``: held until the phase changes)
``POST /v1/tasks/<task_id>/secagg``      SecAggSubmit -> SecAggAck
=======================================  ==============================================
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from fedkb.server.app import server_state
from fedkb.server.errors import (
    BadRequest,
    PayloadTooLarge,
    TooManyRequests,
    UnsupportedMediaType,
)
from fedkb.server.http import json_body, parse, query_int
from fedkb.wire import (
    SECAGG_CONTENT_TYPE,
    UPLOAD_CONTENT_TYPE,
    AbortRequest,
    CheckinRequest,
    RegisterRequest,
    RegisterResponse,
)

bp = Blueprint("devices", __name__, url_prefix="/v1")
SECAGG_JSON_SLACK = 4  # a masked vector in base64 JSON: under 4x the float32 update
# (framed, FKBS, it is its packed bytes: under 1x; the same limit holds for both)
MAX_SECAGG_WAIT_MS = 30_000  # the longest a secure step may be held (?wait_ms=)


@bp.post("/devices")
def register():
    s = server_state()
    msg = parse(RegisterRequest, json_body(request))
    try:  # limited per client address (the socket's peer: no proxy header is trusted)
        device_id = s.devices.register(msg.population, msg.name,
                                       address=request.remote_addr or "unknown")
    except TooManyRequests:
        s.metrics.rejections.labels("rate_limited").inc()
        raise
    s.metrics.registrations.inc()
    resp = RegisterResponse(device_id, s.tokens.issue(device_id), s.tokens.ttl_s)
    return jsonify(resp.to_json()), 201


@bp.post("/checkin")
def checkin():
    s = server_state()
    device_id = s.authenticate(request)
    msg = parse(CheckinRequest, json_body(request))
    resp = s.machine.checkin(device_id, msg.conditions)
    # Selected ahead of its round's model and willing to wait: hold the request (one of
    # the WSGI threads) until the model exists, if a thread can be spared for it.
    if msg.wait_s > 0 and resp.reason == "selected_waiting" and s.holds.acquire(False):
        try:
            if s.machine.wait_for_claim(device_id, msg.wait_s):
                resp = s.machine.checkin(device_id, msg.conditions)
        finally:
            s.holds.release()
    return jsonify(resp.to_json())


@bp.post("/tasks/<task_id>/result")
def upload(task_id: str):
    s = server_state()
    device_id = s.authenticate(request)
    if request.mimetype != UPLOAD_CONTENT_TYPE:
        s.machine.reject_for_task(task_id, "unsupported_media_type")
        raise UnsupportedMediaType(f"uploads are {UPLOAD_CONTENT_TYPE}, "
                                   f"not {request.mimetype or 'none'!r}")
    limit = s.max_upload_bytes
    if (request.content_length or 0) > limit:
        s.machine.reject_for_task(task_id, "payload_too_large")
        raise PayloadTooLarge(f"upload of {request.content_length} bytes is over the "
                              f"{limit}-byte limit")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        s.machine.reject_for_task(task_id, "payload_too_large")
        raise PayloadTooLarge(f"upload is over the {limit}-byte limit")
    return jsonify(s.machine.report(device_id, task_id, body).to_json())


@bp.post("/tasks/<task_id>/abort")
def abort(task_id: str):
    s = server_state()
    device_id = s.authenticate(request)
    msg = parse(AbortRequest, json_body(request))
    return jsonify(s.machine.abort(device_id, task_id, msg.reason).to_json())


@bp.get("/tasks/<task_id>/secagg")
def secagg_step(task_id: str):
    s = server_state()
    device_id = s.authenticate(request)
    wait_ms = query_int(request.args, "wait_ms", 0)
    if not 0 <= wait_ms <= MAX_SECAGG_WAIT_MS:
        raise BadRequest(f"wait_ms must be in 0..{MAX_SECAGG_WAIT_MS}", "bad_query")
    step = s.machine.secagg_step(device_id, task_id)
    # Nothing to do yet and willing to wait: hold the request (one of the WSGI threads
    # that may be held, shared with held check-ins) until the round's phase changes
    if wait_ms > 0 and step.phase == "waiting" and s.holds.acquire(False):
        try:
            step = s.machine.secagg_step(device_id, task_id, wait_s=wait_ms / 1000)
        finally:
            s.holds.release()
    return jsonify(step.to_json())


@bp.post("/tasks/<task_id>/secagg")
def secagg_submit(task_id: str):
    s = server_state()
    device_id = s.authenticate(request)
    if request.mimetype not in ("application/json", SECAGG_CONTENT_TYPE):
        s.machine.reject_for_task(task_id, "unsupported_media_type")
        raise UnsupportedMediaType(f"secure-aggregation messages are application/json "
                                   f"(or a framed masked input, {SECAGG_CONTENT_TYPE}), "
                                   f"not {request.mimetype or 'none'!r}")
    limit = SECAGG_JSON_SLACK * s.max_upload_bytes
    if (request.content_length or 0) > limit:
        s.machine.reject_for_task(task_id, "payload_too_large")
        raise PayloadTooLarge(f"message of {request.content_length} bytes is over the "
                              f"{limit}-byte limit")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        s.machine.reject_for_task(task_id, "payload_too_large")
        raise PayloadTooLarge(f"message is over the {limit}-byte limit")
    return jsonify(s.machine.secagg_submit(device_id, task_id, body,
                                           framed=request.mimetype == SECAGG_CONTENT_TYPE
                                           ).to_json())
