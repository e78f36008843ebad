"""Read-only views: status, rounds, evaluations, Prometheus metrics.

=============================  =========================================================
``GET /v1/status``             model_version, rounds_committed, rounds_abandoned,
                               current_round, open_rounds, devices, training, ...
``GET /v1/rounds``             ``{"rounds": [...]}`` newest first (``?limit=&before=``;
                               another query parameter: 400 ``bad_query``)
``GET /v1/rounds/<id>``        one round: state, times, selected/reported/late,
                               aborted and rejected by reason, durations, metrics
``GET /v1/evaluations``        ``{"evaluations": [{model_version, round_id, loss,
                               top1_recall, top3_recall, reports, num_examples}]}``
``GET /metrics``               Prometheus text format
=============================  =========================================================
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from fedkb.server import round_status
from fedkb.server.app import server_state
from fedkb.server.db import row_dict
from fedkb.server.errors import BadRequest
from fedkb.server.http import query_int
from fedkb.server.rounds import round_json

bp = Blueprint("status", __name__)


@bp.get("/v1/status")
def status():
    return jsonify(round_status.status(server_state().machine))


@bp.get("/v1/rounds")
def rounds():
    s = server_state()
    unknown = sorted(set(request.args) - {"limit", "before"})
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(unknown)[:200]}",
                         "bad_query")
    limit = min(max(query_int(request.args, "limit", 50), 1), 1000)
    before = query_int(request.args, "before", 2**62)
    ids = [r["id"] for r in s.db.query("SELECT id FROM rounds WHERE id < ? ORDER BY id DESC "
                                       "LIMIT ?", (before, limit))]
    out = []
    for rid in ids:  # open rounds come from memory (live counters), closed ones from rows
        info = round_status.round_info(s.machine, rid) if rid in s.machine.open else \
            round_json(row_dict(s.db.one("SELECT * FROM rounds WHERE id = ?", (rid,))))  # type: ignore[arg-type]
        out.append(info)
    return jsonify({"rounds": out})


@bp.get("/v1/rounds/<int:round_id>")
def round_detail(round_id: int):
    return jsonify(round_status.round_info(server_state().machine, round_id))


@bp.get("/v1/evaluations")
def evaluations():
    """Evaluation metrics per model version, one entry per evaluation round."""
    out: dict[int, dict] = {}
    for r in server_state().db.query(
            "SELECT * FROM metrics WHERE kind = 'evaluate' ORDER BY round_id"):
        d = out.setdefault(r["round_id"], {"model_version": r["model_version"],
                                           "round_id": r["round_id"]})
        d[r["name"]] = r["value"]
    return jsonify({"evaluations": list(out.values())})


@bp.get("/metrics")
def metrics():
    m = server_state().metrics
    return Response(m.render(), mimetype=m.content_type.split(";")[0],
                    headers={"Content-Type": m.content_type})
