"""The ``secure_aggregation`` object of a fleet run's JSON report, from its rounds' JSON
(``GET /v1/rounds``: each secure round's ``secagg`` counts, written by
:class:`fedkb.server.secure_round.SecureRound`)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from fedkb.server.config import SecAggConfig
from fedkb.server.secure_round import SECURE_PHASES

SECURE_PHASE_KEYS = tuple(f"{name}_s" for name in SECURE_PHASES)  # in a round's durations


def secure_aggregation(rounds: list[dict[str, Any]], cfg: SecAggConfig,
                       phones: dict[str, int] | None = None) -> dict[str, Any] | None:
    """Rounds run securely and aborted (by reason), dropouts seen and recovered per
    phase, refused messages by code, the server's CPU seconds, each phase's median
    duration, and the phones' own counts (``phones``: the fleet summary's
    ``secure_steps``); None when the run was not secure."""
    if not cfg.enabled:
        return None
    train = [r for r in rounds if r["kind"] == "train"]
    secure = [r for r in train if r.get("secagg")]
    committed = [r for r in secure if r["state"] == "committed"]
    aborted = Counter(str(r["reason"]) for r in train if r["state"] == "abandoned")
    sums: dict[str, Counter[str]] = {k: Counter() for k in
                                     ("dropouts", "recovered", "refused", "server_cpu_s")}
    for r in secure:
        for key, acc in sums.items():
            if key == "recovered" and r["state"] != "committed":
                continue
            acc.update(r["secagg"].get(key) or {})
    phase_s = {name: statistics.median(r["durations"].get(f"{name}_s", 0.0)
                                       for r in committed) if committed else None
               for name in SECURE_PHASES}
    first = secure[0]["secagg"] if secure else {}
    return {
        "threshold": cfg.threshold, "neighbours": cfg.neighbours,
        "modulus_bits": first.get("modulus_bits"), "dim": first.get("dim"),
        "phone_noise": first.get("phone_noise"),  # distributed DP's, else None
        "rounds_secure": len(committed), "rounds_aborted": sum(aborted.values()),
        "aborted": dict(aborted),
        "dropouts": dict(sums["dropouts"]), "dropouts_recovered": dict(sums["recovered"]),
        "refused": dict(sums["refused"]),
        "clipped_values": sum(int(r["secagg"].get("clipped_values") or 0) for r in secure),
        "server_cpu_s": {k: round(v, 4) for k, v in sums["server_cpu_s"].items()},
        "phase_s_median": phase_s,
        "phones": dict(phones or {}),
    }
