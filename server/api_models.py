"""Model downloads by version: immutable, cacheable (ETag = SHA-256, ``immutable``).

===================================  =====================================================
``GET /v1/models``                   ``{"latest": v, "versions": [...]}`` (not cached)
``GET /v1/models/<v>``               manifest: URLs, hashes and sizes of weights and files
``GET /v1/models/<v>/weights``       the global weights of version v (fedkb.codec bytes)
``GET /v1/models/<v>/weights?dtype=float16``  the same rounded to float16 (half the bytes)
``GET /v1/models/<v>/files/<name>``  an artifact file (model.tflite, metadata.json, ...)
===================================  =====================================================

The artifact files are the same for every version (only the weights change), but their
URLs carry the version so that a phone caches everything of one version together.
Every answer carries an ETag (the SHA-256 of its bytes): a phone that sends it back in
``If-None-Match`` gets a bodyless 304. Bytes sent with a 200 are counted in
``fedkb_downlink_bytes{what=weights|weights_float16|manifest|file}``, and each 304 in
``fedkb_downlink_not_modified{what}``.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, Response, jsonify, request

from fedkb.server.app import server_state
from fedkb.server.errors import BadRequest, NotFound

bp = Blueprint("models", __name__, url_prefix="/v1/models")
IMMUTABLE = "public, max-age=31536000, immutable"


def _immutable(data: bytes, etag: str, mimetype: str, what: str) -> Response:
    resp = Response(data, mimetype=mimetype)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = IMMUTABLE
    return _counted(resp.make_conditional(request), what)


def _counted(resp: Response, what: str) -> Response:
    metrics = server_state().metrics
    if resp.status_code == 200:
        metrics.downlink_bytes.labels(what).inc(resp.calculate_content_length() or 0)
    elif resp.status_code == 304:
        metrics.downlink_not_modified.labels(what).inc()
    return resp


def _artifact():
    s = server_state()
    if s.machine.artifact is None:
        raise NotFound("no model has been published", "no_model")
    return s.machine.artifact


@bp.get("")
def versions():
    s = server_state()
    rows = s.db.query("SELECT version FROM models WHERE damaged = 0 ORDER BY version")
    latest = s.machine.model.version if s.machine.model else None
    resp = jsonify({"latest": latest, "versions": [r["version"] for r in rows]})
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/<int:version>")
def manifest(version: int):
    art = _artifact()
    ckpt = server_state().machine.weights(version)
    base = f"/v1/models/{version}"
    s = server_state()
    body: dict = {
        "version": version,
        "weights": {"url": f"{base}/weights", "sha256": ckpt.sha256,
                    "bytes": len(ckpt.weights_bytes)},
        "files": {name: {"url": f"{base}/files/{name}", "sha256": f.sha256, "bytes": len(f.data)}
                  for name, f in art.files.items()},
    }
    etag = ckpt.sha256
    if s.config.compression.downlink == "float16":
        data16, sha16 = s.float16.get(ckpt)
        body["weights_float16"] = {"url": f"{base}/weights?dtype=float16", "sha256": sha16,
                                   "bytes": len(data16)}
        etag = hashlib.sha256(f"{ckpt.sha256}:{sha16}".encode()).hexdigest()
    resp = jsonify(body)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = IMMUTABLE
    return _counted(resp.make_conditional(request), "manifest")


@bp.get("/<int:version>/weights")
def weights(version: int):
    s = server_state()
    ckpt = s.machine.weights(version)
    dtype = request.args.get("dtype", "float32")
    if dtype == "float16":
        data, sha = s.float16.get(ckpt)
        return _immutable(data, sha, "application/octet-stream", "weights_float16")
    if dtype != "float32":
        raise BadRequest("dtype must be float32 or float16", "bad_query")
    return _immutable(ckpt.weights_bytes, ckpt.sha256, "application/octet-stream", "weights")


@bp.get("/<int:version>/files/<name>")
def artifact_file(version: int, name: str):
    art = _artifact()
    server_state().machine.weights(version)  # the version must exist
    f = art.files.get(name)
    if f is None:
        raise NotFound(f"the artifact has no file {name!r}")
    mimetype = "application/json" if name.endswith(".json") else "application/octet-stream"
    return _immutable(f.data, f.sha256, mimetype, "file")
