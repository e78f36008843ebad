"""Contract violations as named exceptions, mapped to JSON errors at the HTTP boundary.

Every refusal the server makes is an :class:`ApiError` subclass carrying an HTTP status
and a stable machine-readable ``code``; :func:`register_error_handlers` turns it (and
Werkzeug's own 404/405/413) into ``{"error": {"code": ..., "message": ...}}``.

Codes a device should know:

==========================  ======  =====================================================
code                        status  meaning
==========================  ======  =====================================================
``bad_json``                400     body is not JSON / not an object
``invalid_message``         400     JSON that does not match :mod:`fedkb.wire`
``malformed_upload``        400     upload framing or codec bytes broken
``missing_token``           401     no ``Authorization: Bearer`` header
``invalid_token``           401     token not signed by this server (forged, damaged)
``token_expired``           401     token older than its lifetime
``unknown_device``          401     token for a device this server does not know
``forbidden``               403     admin action without the admin token
``wrong_device``            403     the task belongs to another device
``not_found``               404     unknown path, task, round or model version
``late_report``             409     the round has closed (committed or past its deadline)
``round_abandoned``         409     the round was abandoned (deadline, or server restart)
``already_submitted``       409     a different second upload for the same task
``task_aborted``            409     the task was aborted before
``wrong_kind``              409     update arrays for an evaluation task, or none for train
``no_model``                409     no model has been published yet
``payload_too_large``       413     body over the upload limit
``unsupported_media_type``  415     wrong ``Content-Type``
``bad_shape``/``bad_dtype`` 422     arrays that do not fit the model
``non_finite``              422     NaN or Inf in the update
``bad_text``/``bad_k``      400     ``/v1/predict``: text missing or not a string; k
                                    not an integer in 1..10
``text_too_long``           400     ``/v1/predict``: text over the limit (1000 chars)
``model_unavailable``       503     ``/v1/predict``: the model cannot be served (LiteRT)
==========================  ======  =====================================================
"""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """Base: ``status`` and ``code`` say what went wrong; the message says it to a human."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "invalid_token"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(ApiError):
    status, code = 422, "unprocessable"


def error_response(status: int, code: str, message: str):
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    return resp


def register_error_handlers(app: Flask) -> None:
    """JSON bodies for :class:`ApiError` and for Werkzeug's HTTP errors."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                415: "unsupported_media_type"}.get(exc.code or 500, "http_error")
        return error_response(exc.code or 500, code, exc.description or exc.name)
