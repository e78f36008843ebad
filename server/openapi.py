"""The OpenAPI 3.1 document of the whole HTTP API, served at ``GET /openapi.json``.

Message schemas are generated from the typed dataclasses they are read and written with
(:func:`schema_of`): the wire messages of :mod:`fedkb.wire`, the admin config tables of
:mod:`fedkb.server.config` and a round's counters (:class:`~fedkb.server.rounds.RoundStats`),
so a field added there is documented at once. The paths (:data:`OPERATIONS`) are written
here, one line of purpose each, with every status an operation answers; every error body
is ``{"error": {"code", "message"}}`` with a code of :mod:`fedkb.server.errors`.

``tests/test_openapi.py`` keeps the paths and the app's routes equal (every route
documented, every documented path routed, the same methods), and runs Schemathesis
against a live server: no 5xx, no answer outside its documented statuses or schema.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal

from flask import Blueprint, jsonify

from fedkb import wire
from fedkb.server.config import ClientConfig, RoundConfig
from fedkb.server.rounds import RoundStats
from fedkb.strict_json import INT64_MAX, INT64_MIN

bp = Blueprint("openapi", __name__)

INT64 = {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}
NUMBER = {"type": "number"}
# what from_json checks beyond a field's type, by (message, field)
LIMITS: dict[tuple[str, str], dict[str, Any]] = {
    ("Conditions", "battery"): {"minimum": 0, "maximum": 1},
    ("CheckinRequest", "wait_s"): {"minimum": 0, "maximum": wire.MAX_CHECKIN_WAIT_S},
    ("UploadMetadata", "num_examples"): {"minimum": 0},
    ("AbortRequest", "reason"): {"examples": list(wire.ABORT_REASONS)},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _type_schema(hint: Any) -> dict[str, Any]:
    """JSON Schema of one type hint (str, int, float, bool, Literal, X | None, dict[str,
    X], list[X], a dataclass, Any)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:  # free-form JSON (a DP round's recorded event: its shape is the event's)
        return {}
    if hint is type(None):
        return {"type": "null"}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1])}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])}
    if dataclasses.is_dataclass(hint):
        return _ref(hint.__name__)
    simple = {bool: {"type": "boolean"}, int: INT64, float: NUMBER, str: {"type": "string"}}
    if hint in simple:
        return dict(simple[hint])
    raise TypeError(f"no JSON Schema for the type {hint!r}")


def schema_of(cls: type, required: bool = True, null_is_default: bool = False
              ) -> dict[str, Any]:
    """An object schema of dataclass ``cls``: a property per field, the fields without a
    default required (none if not ``required``: a PATCH of some of them). With
    ``null_is_default`` (the wire messages: ``from_json`` reads ``null`` as absent) a
    field with a default also takes ``null``."""
    hints = typing.get_type_hints(cls)
    props, needed = {}, []
    for f in dataclasses.fields(cls):
        schema = {**_type_schema(hints[f.name]), **LIMITS.get((cls.__name__, f.name), {})}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            needed.append(f.name)
        elif null_is_default and "anyOf" not in schema:
            schema = {"anyOf": [schema, {"type": "null"}]}
        props[f.name] = schema
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required and needed:
        out["required"] = needed
    return out


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


NULLABLE_INT = {"anyOf": [INT64, {"type": "null"}]}
NULLABLE_NUMBER = {"anyOf": [NUMBER, {"type": "null"}]}


def components() -> dict[str, Any]:
    schemas = {cls.__name__: schema_of(cls, null_is_default=True) for cls in wire.MESSAGES}
    schemas["CheckinResponse"] = {"oneOf": [  # to_json: one of the two, never both
        _obj(["task"], task=_ref("Task")),
        _obj(["retry_after_s", "reason"], retry_after_s=NUMBER, reason={"type": "string"})]}
    schemas["ErrorBody"] = _obj(["error"], error=schema_of(wire.ErrorBody))
    schemas["RoundConfig"] = schema_of(RoundConfig)
    schemas["RoundConfigPatch"] = schema_of(RoundConfig, required=False)
    schemas["ClientConfig"] = schema_of(ClientConfig)
    schemas["ClientConfigPatch"] = schema_of(ClientConfig, required=False)
    stats = schema_of(RoundStats)
    columns = {"id": INT64, "kind": {"enum": ["train", "evaluate"]}, "state": {"type": "string"},
               "base_version": INT64, "committed_version": NULLABLE_INT, "goal": INT64,
               "target": INT64, "min_reports": INT64, "opened_at": NUMBER,
               "selection_closed_at": NULLABLE_NUMBER, "deadline": NULLABLE_NUMBER,
               "closed_at": NULLABLE_NUMBER,
               "reason": {"anyOf": [{"type": "string"}, {"type": "null"}]}}
    schemas["Round"] = _obj([*columns, *stats["properties"]], **columns, **stats["properties"])
    schemas["Status"] = _obj(
        ["model_version", "rounds_committed", "rounds_abandoned", "training", "open_rounds",
         "devices", "strategy", "time"],
        model_version=NULLABLE_INT, rounds_committed=INT64, rounds_abandoned=INT64,
        evaluation_rounds_committed=INT64, evaluation_rounds_abandoned=INT64,
        training={"enum": ["no_model", "finished", "running", "stopped"]},
        current_round={"anyOf": [_ref("Round"), {"type": "null"}]},
        open_rounds={"type": "array", "items": _ref("Round")},
        devices={"type": "object", "additionalProperties": INT64},
        damaged_versions={"type": "array", "items": INT64},
        strategy={"type": "string"}, time=NUMBER)
    file_info = _obj(["url", "sha256", "bytes"], url={"type": "string"},
                     sha256={"type": "string"}, bytes=INT64)
    schemas["Manifest"] = _obj(["version", "weights", "files"], version=INT64,
                               weights=file_info,
                               files={"type": "object", "additionalProperties": file_info})
    schemas["ModelVersions"] = _obj(["latest", "versions"], latest=NULLABLE_INT,
                                    versions={"type": "array", "items": INT64})
    schemas["Evaluations"] = _obj(["evaluations"], evaluations={"type": "array", "items": {
        "type": "object", "required": ["model_version", "round_id"],
        "properties": {"model_version": INT64, "round_id": INT64},
        "additionalProperties": NUMBER}})
    schemas["PredictRequest"] = _obj(["text"], text={"type": "string"},
                                     k={"anyOf": [{"type": "integer"}, {"type": "null"}]})
    schemas["Prediction"] = _obj(
        ["suggestions", "model_version", "partial"],
        suggestions={"type": "array", "items": _obj(["word", "p"], word={"type": "string"},
                                                    p=NULLABLE_NUMBER)},
        model_version=NULLABLE_INT, partial={"anyOf": [{"type": "string"}, {"type": "null"}]})
    schemas["TrainingRequest"] = _obj(["enabled"], enabled={"type": "boolean"})
    schemas["TrainingState"] = _obj(["training"], training={"type": "string"})
    schemas["PublishRequest"] = _obj(["path"], path={"type": "string"})
    schemas["Published"] = _obj(["model_version"], model_version=INT64)
    return schemas


ERRORS = {400: "bad request", 401: "no valid device token", 403: "not allowed",
          404: "no such resource", 409: "conflict with the round's state",
          413: "body too large", 415: "wrong Content-Type",
          422: "well-formed but unusable", 429: "rate limited (Retry-After)",
          503: "overloaded or unavailable (Retry-After when shed)",
          507: "storage full (Retry-After)"}
JSON = "application/json"
DEVICE, ADMIN = [{"deviceToken": []}], [{"adminToken": []}]
# (path, method, operationId, summary, request body, (status, schema or media type), auth,
#  error statuses)
Op = tuple[str, str, str, str, str | None, tuple[int, str], list, tuple[int, ...]]
OPERATIONS: list[Op] = [
    ("/v1/devices", "post", "register", "register a device", "RegisterRequest",
     (201, "RegisterResponse"), [], (400, 413, 415, 429, 507)),
    ("/v1/checkin", "post", "checkin", "check in: a task, or when to come back",
     "CheckinRequest", (200, "CheckinResponse"), DEVICE, (400, 401, 413, 415, 507)),
    ("/v1/tasks/{task_id}/result", "post", "upload", "upload a task's result (FKBU framing)",
     wire.UPLOAD_CONTENT_TYPE, (200, "UploadResult"), DEVICE,
     (400, 401, 403, 404, 409, 413, 415, 422, 507)),
    ("/v1/tasks/{task_id}/abort", "post", "abort", "give up a task", "AbortRequest",
     (200, "AbortResult"), DEVICE, (400, 401, 403, 404, 409, 413, 415, 507)),
    ("/v1/tasks/{task_id}/secagg", "get", "secaggStep",
     "a secure round: what its current phase wants of this task's phone", None,
     (200, "SecAggStep"), DEVICE, (400, 401, 403, 404)),
    ("/v1/tasks/{task_id}/secagg", "post", "secaggSubmit",
     "a secure round: the phone's message for the current phase (a masked input may "
     "come framed, FKBS)", f"SecAggSubmit|{wire.SECAGG_CONTENT_TYPE}",
     (200, "SecAggAck"), DEVICE, (400, 401, 403, 404, 409, 413, 415, 422, 507)),
    ("/v1/models", "get", "listModels", "committed model versions", None,
     (200, "ModelVersions"), [], ()),
    ("/v1/models/{version}", "get", "manifest", "one version's files, hashes and sizes",
     None, (200, "Manifest"), [], (404,)),
    ("/v1/models/{version}/weights", "get", "weights", "one version's weights (codec bytes)",
     None, (200, "application/octet-stream"), [], (404,)),
    ("/v1/models/{version}/files/{name}", "get", "artifactFile", "an artifact file", None,
     (200, "application/octet-stream"), [], (404,)),
    ("/v1/status", "get", "status", "the server's status", None, (200, "Status"), [], ()),
    ("/v1/rounds", "get", "listRounds", "rounds, newest first", None, (200, "RoundList"), [],
     (400,)),
    ("/v1/rounds/{round_id}", "get", "round", "one round", None, (200, "Round"), [], (404,)),
    ("/v1/evaluations", "get", "evaluations", "evaluation metrics per model version", None,
     (200, "Evaluations"), [], ()),
    ("/metrics", "get", "metrics", "Prometheus metrics", None, (200, "text/plain"), [], ()),
    ("/v1/admin/training", "post", "setTraining", "start or stop training rounds",
     "TrainingRequest", (200, "TrainingState"), ADMIN, (400, 403, 413, 415)),
    ("/v1/admin/round-config", "get", "getRoundConfig", "the round config in force", None,
     (200, "RoundConfig"), ADMIN, (403,)),
    ("/v1/admin/round-config", "patch", "patchRoundConfig", "change it for new rounds",
     "RoundConfigPatch", (200, "RoundConfig"), ADMIN, (400, 403, 413, 415, 422, 507)),
    ("/v1/admin/client-config", "get", "getClientConfig", "what tasks ask of phones", None,
     (200, "ClientConfig"), ADMIN, (403,)),
    ("/v1/admin/client-config", "patch", "patchClientConfig", "change it for new rounds",
     "ClientConfigPatch", (200, "ClientConfig"), ADMIN, (400, 403, 413, 415, 422, 507)),
    ("/v1/admin/model", "post", "publish", "publish an artifact on the server as version 0",
     "PublishRequest", (201, "Published"), ADMIN, (400, 403, 409, 413, 415, 422, 507)),
    ("/v1/predict", "post", "predict", "next-word suggestions and completions",
     "PredictRequest", (200, "Prediction"), [], (400, 413, 415, 503)),
    ("/openapi.json", "get", "openapi", "this document", None, (200, "object"), [], ()),
    ("/", "get", "keyboard", "the keyboard demo page", None, (200, "text/html"), [], ()),
    ("/dashboard", "get", "dashboard", "the rounds dashboard", None, (200, "text/html"), [],
     ()),
    ("/static/{filename}", "get", "static", "the pages' scripts and styles", None,
     (200, "*/*"), [], (404,)),
]
FILE_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"}
# ids and names as the server makes them (anything else is not found: 404)
PATH_PARAMS = {"task_id": {"type": "string", "pattern": "^t-[0-9a-f]{24}$"},
               "version": {**INT64, "minimum": 0}, "round_id": {**INT64, "minimum": 0},
               "name": FILE_NAME, "filename": FILE_NAME}
QUERY = {"listRounds": [
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}},
    {"name": "before", "in": "query", "required": False, "schema": {"type": "integer"}}],
    "secaggStep": [  # hold the request until the phase changes, at most this long
        {"name": "wait_ms", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 0, "maximum": 30_000}}]}
LINKS = {  # for stateful runs: a check-in's task, a listing's round, the latest version
    "checkin": {"upload": ("upload", {"task_id": "$response.body#/task/task_id"}),
                "abort": ("abort", {"task_id": "$response.body#/task/task_id"})},
    "listModels": {"manifest": ("manifest", {"version": "$response.body#/latest"}),
                   "weights": ("weights", {"version": "$response.body#/latest"})},
    "listRounds": {"round": ("round", {"round_id": "$response.body#/rounds/0/id"})},
}


def _content(what: str) -> dict[str, Any]:
    if "/" in what:
        return {what: {"schema": {"type": "string"}}}
    if what == "object":
        return {JSON: {"schema": {"type": "object"}}}
    return {JSON: {"schema": _ref(what)}}


def _operation(path: str, op: Op) -> dict[str, Any]:
    _, _, op_id, summary, body, (status, answer), auth, errors = op
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "security": auth}
    params = [{"name": p, "in": "path", "required": True, "schema": PATH_PARAMS[p]}
              for p in PATH_PARAMS if f"{{{p}}}" in path] + QUERY.get(op_id, [])
    if params:
        out["parameters"] = params
    if body is not None:  # a schema (JSON), a media type (binary), or several, by "|"
        out["requestBody"] = {"required": True, "content": {
            b if "/" in b else JSON: {"schema": {"type": "string", "format": "binary"}}
            if "/" in b else {"schema": _ref(b)} for b in body.split("|")}}
    ok: dict[str, Any] = {"description": summary, "content": _content(answer)}
    if op_id in LINKS:
        ok["links"] = {name: {"operationId": target, "parameters": params_}
                       for name, (target, params_) in LINKS[op_id].items()}
    out["responses"] = {str(status): ok, **{
        str(code): {"description": ERRORS[code], "content": _content("ErrorBody")}
        for code in errors}}
    if op_id in ("manifest", "weights", "artifactFile"):
        out["responses"]["304"] = {"description": "not modified (If-None-Match)"}
    return out


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once per process)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op[0], {})[op[1]] = _operation(op[0], op)
    schemas = components()
    schemas["RoundList"] = _obj(["rounds"], rounds={"type": "array", "items": _ref("Round")})
    return {
        "openapi": "3.1.0",
        "info": {"title": "fedkb", "version": "1",
                 "description": "Federated next-word prediction: the round server's API."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "deviceToken": {"type": "http", "scheme": "bearer",
                            "description": "the token of POST /v1/devices"},
            "adminToken": {"type": "http", "scheme": "bearer",
                           "description": "the server's admin token"}}},
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(document())


__all__ = ["OPERATIONS", "bp", "document", "schema_of"]
