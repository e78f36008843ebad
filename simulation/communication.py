"""The ``communication`` object of a fleet run's report: bytes on the wire, measured.

From the server's round rows (:class:`fedkb.server.rounds.RoundStats`):

- ``uplink_bytes_per_update``: the median, over the run's accepted training uploads, of
  each upload's request Content-Length as the server read it (framing, metadata and the
  encoded update: what crossed the wire);
- ``downlink_bytes_per_task``: the bytes the reporting phones downloaded per task (the
  global weights when a newer version than the cached one, the artifact's files the first
  time a phone works, as each phone reports in its ``download_bytes`` timing), their mean;
- ``server_sent_bytes`` (with ``..._by_what`` and ``..._per_round``): what the server
  itself counted sending, from its ``/metrics`` (``fedkb_downlink_bytes``: weights, float16
  weights, manifests, artifact files; training *and* evaluation tasks, 200s only), and
  ``not_modified``: the downloads it answered 304 because the phone's cached copy was
  current (an unchanged artifact is never sent twice);
- ``encoding``: the uplink encoding (``float32``, ``q8``, ``q4``, ``q2``, ``+rotate``) and
  ``downlink`` its dtype, with per-round totals beside them.
"""

from __future__ import annotations

import statistics
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fedkb.server.config import CompressionConfig


def served_downlink(metrics_text: str) -> dict[str, dict[str, int]]:
    """The server's own downlink counters from its ``/metrics`` text: bytes sent and 304s,
    by what was asked for."""
    out: dict[str, dict[str, int]] = {"sent": {}, "not_modified": {}}
    names = {"fedkb_downlink_bytes_total": "sent",
             "fedkb_downlink_not_modified_total": "not_modified"}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            key = names.get(sample.name)
            if key is not None:
                out[key][sample.labels["what"]] = int(sample.value)
    return out


def communication(rounds: list[dict[str, Any]], cfg: CompressionConfig,
                  served: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """The run's ``communication`` object from its rounds' JSON (``GET /v1/rounds``) and,
    when given, the server's downlink counters (:func:`served_downlink`)."""
    train = [r for r in rounds if r["kind"] == "train" and r["state"] == "committed"]
    ups = [int(b) for r in train for b in r.get("upload_bytes") or []]
    down = sum(int(r.get("download_bytes") or 0) for r in train)
    reports = sum(int(r.get("reported") or 0) for r in train)
    per_round_up = [sum(r.get("upload_bytes") or []) for r in train]
    sent = sum((served or {}).get("sent", {}).values())
    server_side = {} if served is None else {
        "server_sent_bytes": sent, "server_sent_bytes_by_what": served["sent"],
        "server_sent_bytes_per_round": round(sent / len(train)) if train else None,
        "not_modified": served["not_modified"]}
    return {**server_side,
        "encoding": cfg.label, "uplink": cfg.uplink, "rotate": cfg.rotate,
        "downlink": cfg.downlink,
        "uplink_bytes_per_update": int(statistics.median(ups)) if ups else None,
        "downlink_bytes_per_task": round(down / reports) if reports else None,
        "updates": len(ups),
        "uplink_bytes_per_round": round(statistics.mean(per_round_up)) if train else None,
        "downlink_bytes_per_round": round(down / len(train)) if train else None,
    }
