"""The prediction endpoint: next-word suggestions and completions from the latest model.

=======================  ==============================================================
``POST /v1/predict``     ``{"text": "...", "k": 3}`` -> ``{"suggestions": [{"word",
                         "p"}, ...], "model_version": v, "partial": "th" | null}``
=======================  ==============================================================

``k`` defaults to 3 and must be 1..``max_k`` (10). Refusals (400): ``bad_json`` (not a
JSON object), ``bad_text`` (missing or not a string), ``text_too_long``, ``bad_k``;
415 for another content type; 503 ``model_unavailable`` when the published model cannot
be served; 503 ``overloaded`` with ``Retry-After`` when ``predict.max_inflight``
predictions are being answered already (:mod:`fedkb.server.admission`). How text is
read and suggestions ranked: :mod:`fedkb.server.suggest`; how versions switch without
blocking: :mod:`fedkb.server.predictor`.

Registering the blueprint attaches a :class:`~fedkb.server.predictor.LivePredictor` to
the app (``app.extensions["fedkb.predict"]``), built on the app's round machine, and its
:class:`~fedkb.server.admission.AdmissionGate` (``app.extensions["fedkb.predict_gate"]``).
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from fedkb.server.admission import AdmissionGate, gate_size, queued_s
from fedkb.server.errors import ServiceUnavailable
from fedkb.server.http import json_body
from fedkb.server.predictor import LivePredictor, check_request

bp = Blueprint("predict", __name__)
EXTENSION = "fedkb.predict"
GATE = "fedkb.predict_gate"


@bp.record_once
def _attach(setup: BlueprintSetupState) -> None:
    state = setup.app.extensions["fedkb"]
    cfg = state.config.predict
    setup.app.extensions[EXTENSION] = LivePredictor(state.machine, cfg)
    setup.app.extensions[GATE] = AdmissionGate(gate_size(cfg.max_inflight,
                                                         state.config.threads),
                                               cfg.retry_after_s)


def predictor() -> LivePredictor:
    """The :class:`LivePredictor` of the application handling the current request."""
    return current_app.extensions[EXTENSION]


@bp.post("/v1/predict")
def predict():
    live = predictor()
    try:  # admitted before the body is even read: a shed request costs next to nothing
        with current_app.extensions[GATE].admit(queued_s(request.environ),
                                                live.cfg.max_queue_s):
            body = json_body(request)
            text, k = check_request(body.get("text"), body.get("k"), live.cfg)
            answer = live.predict(text, k)
    except ServiceUnavailable:
        current_app.extensions["fedkb"].metrics.shed.labels("predict").inc()
        raise
    resp = jsonify(answer.to_json())
    resp.headers["Cache-Control"] = "no-store"
    return resp
