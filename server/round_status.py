"""Read-only views of the round machine: one round, and the server's status.

Both advance the machine first (a deadline that passed is applied before it is shown),
then read under its lock: open rounds from memory (live counters), closed ones from
their rows.
"""

from __future__ import annotations

from typing import Any

from fedkb.server.compression import communication_status
from fedkb.server.db import row_dict
from fedkb.server.errors import NotFound
from fedkb.server.round_machine import RoundMachine
from fedkb.server.rounds import ABANDONED, COMMITTED, EVALUATE, POPULATION_OF, TRAIN, round_json


def round_info(m: RoundMachine, round_id: int) -> dict[str, Any]:
    """The JSON of round ``round_id``, open or closed (``GET /v1/rounds/<id>``)."""
    with m.lock:
        m.advance()
        rnd = m.open.get(round_id)
        if rnd is not None:
            return round_json(rnd.row())
    row = row_dict(m.db.one("SELECT * FROM rounds WHERE id = ?", (round_id,)))
    if row is None:
        raise NotFound(f"no round {round_id}", "unknown_round")
    return round_json(row)


def status(m: RoundMachine) -> dict[str, Any]:
    """The server's status (``GET /v1/status``)."""
    with m.lock:
        m.advance()
        counts = {(r["kind"], r["state"]): r["n"] for r in m.db.query(
            "SELECT kind, state, COUNT(*) n FROM rounds GROUP BY kind, state")}
        trains = sorted((r for r in m.open.values() if r.kind == TRAIN), key=lambda r: r.id)
        done = m.cfg.max_rounds is not None and \
            counts.get((TRAIN, COMMITTED), 0) >= m.cfg.max_rounds
        if m.privacy is not None and m.privacy.stopped is not None and not trains:
            done = True  # the privacy budget is spent: no training round opens again
        out = {
            "model_version": m.model.version if m.model else None,
            "rounds_committed": counts.get((TRAIN, COMMITTED), 0),
            "rounds_abandoned": counts.get((TRAIN, ABANDONED), 0),
            "evaluation_rounds_committed": counts.get((EVALUATE, COMMITTED), 0),
            "evaluation_rounds_abandoned": counts.get((EVALUATE, ABANDONED), 0),
            "training": ("no_model" if m.model is None else "finished" if done
                         else "running" if m.training_enabled else "stopped"),
            "current_round": round_json(trains[-1].row()) if trains else None,
            "open_rounds": [round_json(r.row()) for r in m.open.values()],
            "devices": {p: m.devices.count(p) for p in POPULATION_OF.values()},
            "damaged_versions": m.models.damaged_versions,
            "strategy": m.strategy.name,
            "communication": communication_status(
                m.compression, m.last_round_bytes,
                m.artifact.update_bytes if m.artifact else None),
            "time": m.clock(),
        }
        if m.privacy is not None:
            out["privacy"] = m.privacy.status()
        return out
