"""Contract violations as named exceptions, mapped to JSON errors at the HTTP boundary.

Every refusal the server makes is an :class:`ApiError` subclass carrying an HTTP status
and a stable machine-readable ``code``; :func:`register_error_handlers` turns it (and
Werkzeug's own 404/405/413) into ``{"error": {"code": ..., "message": ...}}``.

Every code the server answers with (``tests/test_error_codes.py`` reads the raises in
``server/`` and keeps this table exact):

==========================  ======  =====================================================
code                        status  meaning
==========================  ======  =====================================================
``bad_json``                400     body is not JSON / not an object
``invalid_message``         400     JSON that does not match :mod:`fedkb.wire`
``malformed_upload``        400     upload framing or codec bytes broken
``round_mismatch``          400     the upload names another round than its task's
``bad_query``               400     ``limit`` / ``before`` in a listing not integers, a
                                    query parameter the listing does not take, or a
                                    weights ``dtype`` other than float32/float16
``malformed_encoding``      400     an encoded (FKBQ) update that is truncated,
                                    over-long, corrupt or has a broken grid
``bad_text``/``bad_k``      400     ``/v1/predict``: text missing or not a string; k
                                    not an integer in 1..max_k
``text_too_long``           400     ``/v1/predict``: text over ``predict.max_text_chars``
``missing_token``           401     no ``Authorization: Bearer`` header
``invalid_token``           401     token not signed by this server (forged, damaged)
``token_expired``           401     token older than its lifetime
``unknown_device``          401     token for a device this server does not know
``forbidden``               403     admin action without the admin token
``wrong_device``            403     the task belongs to another device
``not_found``               404     unknown path
``unknown_task``            404     no such task
``unknown_round``           404     no such round
``not_secure``              404     ``/v1/tasks/<id>/secagg`` of a task not in a secure
                                    round
``method_not_allowed``      405     the path does not take this method
``late_report``             409     the round has closed (committed or past its deadline)
``round_abandoned``         409     the round was abandoned (deadline, or server restart)
``already_submitted``       409     a different second upload for the same task
``task_aborted``            409     upload for a task the device aborted
``task_finished``           409     abort of a task already reported or late
``secagg_phase_closed``     409     a secure round's message after its phase closed,
                                    a second one, or from a phone that dropped earlier
``no_model``                409     no model has been published yet
``model_exists``            409     admin publish on a server that has a model
``payload_too_large``       413     body over the upload limit
``unsupported_media_type``  415     wrong ``Content-Type``
``rate_limited``            429     too many registrations from this address, or in all,
                                    in the last minute (``Retry-After`` says when to retry)
``bad_shape``/``bad_dtype`` 422     arrays that do not fit the model
``non_finite``              422     NaN or Inf in the update
``no_examples``             422     a training report with ``num_examples`` < 1
``too_many_examples``       422     ``num_examples`` over the task plan's budget
                                    (batch_size x max_steps x epochs)
``update_too_large``        422     an update whose global L2 norm is over the round's
                                    bound (``round.max_update_norm``, or derived)
``missing_update``          422     a training report without update arrays
``wrong_encoding``          422     an update not encoded as its task's plan asks
                                    (encoding, format version or rotation seed)
``unexpected_update``       422     update arrays in an evaluation report
``secagg_refused``          422     a secure round's message the protocol refuses
                                    (forged or misaddressed shares, a masked vector
                                    of the wrong length or modulus, ...; the reason
                                    is in the message)
``bad_config``              422     admin config PATCH with a value that cannot be used
``bad_artifact``            422     admin publish of a directory that is not an artifact
``model_unavailable``       503     ``/v1/predict``: the model cannot be served (LiteRT)
``storage_full``            507     the server's disk is full: nothing of the request was
                                    recorded; retry later (``Retry-After``)
``overloaded``              503     ``/v1/predict``: ``predict.max_inflight`` predictions
                                    are being answered; shed at once (``Retry-After``)
``http_error``              4xx     any other HTTP error raised by Werkzeug or waitress
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


class TooManyRequests(ApiError):
    """Refused for now: ``retry_after_s`` goes out as the ``Retry-After`` header."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, code: str | None = None,
                 retry_after_s: int = 1) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(ApiError):
    """The server sheds this request for now: ``Retry-After`` says when to try again."""

    status, code = 503, "overloaded"

    def __init__(self, message: str, code: str | None = None,
                 retry_after_s: int = 1) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s


# Werkzeug's own errors (unknown path, wrong method, ...) by status; others: "http_error"
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                    415: "unsupported_media_type"}


def error_response(status: int, code: str, message: str):
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    return resp


def register_error_handlers(app: Flask) -> None:
    """JSON bodies for :class:`ApiError` and for Werkzeug's HTTP errors."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        resp = error_response(exc.status, exc.code, exc.message)
        retry_after_s = getattr(exc, "retry_after_s", None)
        if retry_after_s is not None:
            resp.headers["Retry-After"] = str(retry_after_s)
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = HTTP_ERROR_CODES.get(exc.code or 500, "http_error")
        return error_response(exc.code or 500, code, exc.description or exc.name)
