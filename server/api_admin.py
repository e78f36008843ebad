"""Admin endpoints (``Authorization: Bearer <admin token>``).

=================================  =========================================================
``POST /v1/admin/training``        ``{"enabled": true|false}``: start or stop training rounds
``GET /v1/admin/round-config``     the round config in force
``PATCH /v1/admin/round-config``   ``{"report_goal": 20, ...}``: change it for new rounds
``GET /v1/admin/client-config``    what training tasks ask of phones (lr, epochs, max_steps)
``PATCH /v1/admin/client-config``  ``{"lr": 0.1, ...}``: change it for new rounds
``POST /v1/admin/model``           ``{"path": "<artifact dir on the server>"}``: publish v0
=================================  =========================================================
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, request

from fedkb.artifact import ArtifactError
from fedkb.server import round_status
from fedkb.server.app import server_state
from fedkb.server.auth import check_admin
from fedkb.server.config import ConfigError
from fedkb.server.errors import BadRequest, Unprocessable
from fedkb.server.http import json_body

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")
log = logging.getLogger(__name__)


@bp.before_request
def _admin_only() -> None:
    check_admin(request, server_state().admin_token)


@bp.post("/training")
def training():
    body = json_body(request)
    if not isinstance(body.get("enabled"), bool):
        raise BadRequest("expected {\"enabled\": true|false}", "invalid_message")
    s = server_state()
    s.machine.set_training(body["enabled"])
    return jsonify({"training": round_status.status(s.machine)["training"]})


@bp.get("/round-config")
def get_round_config():
    return jsonify(dataclasses.asdict(server_state().machine.cfg))


@bp.patch("/round-config")
def patch_round_config():
    return _patched(server_state().set_round_config)


@bp.get("/client-config")
def get_client_config():
    return jsonify(dataclasses.asdict(server_state().machine.strategy.client))


@bp.patch("/client-config")
def patch_client_config():
    return _patched(server_state().set_client_config)


def _patched(apply: Callable[[dict[str, Any]], Any]):
    """Apply a PATCH body to one config table for new rounds; answer the table in force."""
    try:
        cfg = apply(json_body(request))
    except ConfigError as exc:
        raise Unprocessable(str(exc), "bad_config") from exc
    return jsonify(dataclasses.asdict(cfg))


@bp.post("/model")
def publish():
    body = json_body(request)
    if not isinstance(body.get("path"), str):
        raise BadRequest("expected {\"path\": \"<artifact directory>\"}", "invalid_message")
    try:
        version = server_state().publish(Path(body["path"]))
    except ArtifactError as exc:
        # One answer whatever went wrong: the details (a missing directory, a missing
        # file, a symbolic link) would tell the caller what exists on the server.
        log.warning("admin publish of %r refused: %s", body["path"], exc)
        raise Unprocessable("the path is not a model artifact this server can publish "
                            "(details in the server log)", "bad_artifact") from exc
    return jsonify({"model_version": version}), 201
