"""The ``communication`` object of a fleet run's report: bytes on the wire, measured.

From the server's round rows (:class:`fedkb.server.rounds.RoundStats`):

- ``uplink_bytes_per_update``: the median, over the run's accepted training uploads, of
  each upload's request Content-Length as the server read it (framing, metadata and the
  encoded update: what crossed the wire);
- ``downlink_bytes_per_task``: the bytes the reporting phones downloaded per task (the
  global weights when a newer version than the cached one, the artifact's files the first
  time a phone works, as each phone reports in its ``download_bytes`` timing), their mean;
- ``encoding``: the uplink encoding (``float32``, ``q8``, ``q4``, ``q2``, ``+rotate``) and
  ``downlink`` its dtype, with per-round totals beside them.
"""

from __future__ import annotations

import statistics
from typing import Any

from fedkb.server.config import CompressionConfig


def communication(rounds: list[dict[str, Any]], cfg: CompressionConfig) -> dict[str, Any]:
    """The run's ``communication`` object from its rounds' JSON (``GET /v1/rounds``)."""
    train = [r for r in rounds if r["kind"] == "train" and r["state"] == "committed"]
    ups = [int(b) for r in train for b in r.get("upload_bytes") or []]
    down = sum(int(r.get("download_bytes") or 0) for r in train)
    reports = sum(int(r.get("reported") or 0) for r in train)
    per_round_up = [sum(r.get("upload_bytes") or []) for r in train]
    return {
        "encoding": cfg.label, "uplink": cfg.uplink, "rotate": cfg.rotate,
        "downlink": cfg.downlink,
        "uplink_bytes_per_update": int(statistics.median(ups)) if ups else None,
        "downlink_bytes_per_task": round(down / reports) if reports else None,
        "updates": len(ups),
        "uplink_bytes_per_round": round(statistics.mean(per_round_up)) if train else None,
        "downlink_bytes_per_round": round(down / len(train)) if train else None,
    }
