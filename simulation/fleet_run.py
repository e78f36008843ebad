"""One federated run of the fleet against a running server, and how it can stop.

:func:`run_federated` is the one call the demo, the notebook, `fedkb simulate --engine
fleet` and the benchmarks share: run the fleet until R rounds commit, then collect rounds,
evaluations and the final weights from the server. A run that stops committing (rounds
abandoned in a row, or a committed round whose loss says the model diverged) is
``stalled``; :func:`stall_diagnosis` says why and :class:`TrainingStalled` carries what
the run did (failures are data).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from fedkb.codec import decode_arrays
from fedkb.device_runtime.faults import FaultSpec
from fedkb.device_runtime.ray_options import RayOptions
from fedkb.errors import UserError
from fedkb.simulation.communication import served_downlink


def get_json(url: str, path: str) -> Any:
    return requests.get(url + path, timeout=30).json()


def _last_train_loss(url: str) -> float | None:
    """The typical device's training loss in the newest committed training round (None if
    unknown): see :func:`typical_loss`."""
    try:
        rows = get_json(url, "/v1/rounds?limit=20")["rounds"]
    except (requests.RequestException, ValueError, KeyError):
        return None
    for r in rows:  # newest first
        if r.get("kind") == "train" and r.get("state") == "committed":
            return typical_loss(r.get("metrics") or {})
    return None


def get_weights(url: str, version: int) -> list:
    r = requests.get(f"{url}/v1/models/{version}/weights", timeout=60)
    r.raise_for_status()
    return decode_arrays(r.content)


@dataclass
class FederatedRun:
    """What a federated run leaves behind, read back from the server."""

    url: str
    fleet: dict[str, Any]
    status: dict[str, Any]
    rounds: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    final_weights: list = field(repr=False, default_factory=list)
    wall_s: float = 0.0
    # the fleet's log of accepted training reports: [round_id, user, batch_seed] each
    accepted: list[list] = field(repr=False, default_factory=list)
    stalled: bool = False  # stopped: rounds kept being abandoned, or the model diverged
    # the server's own downlink counters (simulation.communication.served_downlink)
    served: dict[str, dict[str, int]] = field(default_factory=dict)


def run_federated(url: str, data: Path, devices: int, rounds: int, workers: int,
                  speedup: float = 60.0, start_hour: float = 22.0, seed: int = 0,
                  on_progress: Callable | None = None, final_eval: bool = True,
                  eval_timeout_s: float = 120.0, timeout_s: float | None = None,
                  stall_rounds: int | None = 25, claim_hold_s: float = 0.0,
                  faults: FaultSpec | None = None, ray: RayOptions | None = None
                  ) -> FederatedRun:
    """Run a fleet against the server at ``url`` until it has committed ``rounds`` rounds.

    With ``final_eval``, the fleet keeps going (at most ``eval_timeout_s`` more) until the
    held-out phones have evaluated the final model version too. ``timeout_s`` bounds the
    whole run (the fleet then stops wherever it is: rounds may be fewer than asked).
    ``stall_rounds``: stop (``stalled``) once that many training rounds in a row were
    abandoned: a diverged model whose phones can no longer finish, or no phone eligible,
    would otherwise keep the run going forever. With it, a committed training round whose
    loss says the model diverged (:func:`diverged`) stops the run at once, and so do
    :data:`DIVERGED_ROUNDS` abandoned rounds in a row whose blown-up updates the server
    refused (:func:`devices_diverging`).
    ``claim_hold_s``: see :class:`~fedkb.device_runtime.fleet.FleetConfig` (the server
    needs spare WSGI threads: ``ServerProcess(threads=...)``). ``faults``: phones that
    misbehave on purpose (:mod:`fedkb.device_runtime.faults`). ``ray``: run the phones on a
    Ray cluster instead of ``workers`` processes (:mod:`fedkb.device_runtime.ray_fleet`).
    """
    from fedkb.device_runtime.fleet import Fleet, FleetConfig

    t0 = time.monotonic()
    trained_at: list[float] = []
    progress = {"committed": -1, "abandoned": 0, "stalled": False}

    def done(status: dict[str, Any]) -> bool:
        committed, abandoned = status.get("rounds_committed", 0), status.get(
            "rounds_abandoned", 0)
        if committed != progress["committed"]:
            progress.update(committed=committed, abandoned=abandoned)
            if stall_rounds is not None and committed > 0 and diverged(_last_train_loss(url)):
                progress["stalled"] = True
                return True
        elif stall_rounds is not None and abandoned - progress["abandoned"] >= stall_rounds:
            progress["stalled"] = True
            return True
        elif (stall_rounds is not None and abandoned != progress.get("checked")
              and abandoned - progress["abandoned"] >= min(stall_rounds, DIVERGED_ROUNDS)):
            progress["checked"] = abandoned  # one look per newly abandoned round
            if devices_diverging(get_json(url, f"/v1/rounds?limit={DIVERGED_ROUNDS + 2}")
                                 ["rounds"]):
                progress["stalled"] = True
                return True
        if committed < rounds and status.get("training") != "finished":
            return False  # ("finished" early: the privacy budget stopped training)
        if not final_eval:
            return True
        trained_at.append(time.monotonic()) if not trained_at else None
        if time.monotonic() - trained_at[0] > eval_timeout_s:
            return True
        evals = get_json(url, "/v1/evaluations")["evaluations"]
        return any(e["model_version"] >= status["model_version"] for e in evals)

    fleet = Fleet(FleetConfig(url, Path(data), devices, speedup=speedup, start_hour=start_hour,
                              workers=workers, rounds=rounds, seed=seed,
                              duration_s=timeout_s, claim_hold_s=claim_hold_s,
                              faults=faults, ray=ray),
                  on_progress=on_progress, stop_when=done)
    summary = fleet.run()
    wall = time.monotonic() - t0
    status = get_json(url, "/v1/status")
    rows = get_json(url, "/v1/rounds?limit=1000")["rounds"]
    evals = get_json(url, "/v1/evaluations")["evaluations"]
    # read before fetching the final weights below, which the server would count too
    served = served_downlink(requests.get(f"{url}/metrics", timeout=30).text)
    final = get_weights(url, status["model_version"])
    return FederatedRun(url, summary, status, sorted(rows, key=lambda r: r["id"]), evals,
                        final, wall, fleet.accepted, bool(progress["stalled"]), served)


class TrainingStalled(UserError):
    """A fleet run stopped committing; ``report`` is what it did until then (failures as
    data: its rounds and their participants, so the run can be replayed elsewhere)."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


# the server's refusals of updates that a diverging device training produces
DIVERGED_REFUSALS = ("update_too_large", "non_finite")
DIVERGED_LOSS = 100.0  # a training loss above this (nats per token; ln V ~ 9.2) is a blow-up
DIVERGED_ROUNDS = 5  # this many abandoned in a row, each with blown-up updates refused


def devices_diverging(rounds: list[dict[str, Any]]) -> bool:
    """Whether the newest :data:`DIVERGED_ROUNDS` training rounds were all abandoned with
    updates refused as blown up (:data:`DIVERGED_REFUSALS`): the devices' training
    diverges, and waiting for ``stall_rounds`` abandoned rounds would only lose time."""
    train = sorted((r for r in rounds if r["kind"] == "train"
                    and r["state"] in ("abandoned", "committed")),
                   key=lambda r: r["id"])[-DIVERGED_ROUNDS:]
    return len(train) == DIVERGED_ROUNDS and all(
        r["state"] == "abandoned"
        and any((r.get("rejected") or {}).get(k) for k in DIVERGED_REFUSALS) for r in train)


def typical_loss(metrics: dict[str, Any]) -> float | None:
    """The median device's training loss of a round (its mean when no median was kept).

    One device whose local SGD blew up (a long shard at a high client lr) reports a loss
    of thousands: it moves the round's mean loss as much as a diverged model would,
    although the server clipped its delta and the model is fine. A diverged *model*
    starts every device's training from a bad point, so the median shows it.
    """
    loss = metrics.get("loss_median", metrics.get("loss"))
    return None if loss is None else float(loss)


def diverged(loss: float | None) -> bool:
    """Whether a committed round's training loss says the model blew up."""
    return loss is not None and not (math.isfinite(loss) and loss < DIVERGED_LOSS)


def stall_diagnosis(rounds: list[dict[str, Any]]) -> str:
    """Why a run stopped: a diverged model, or rounds abandoned since the last commit."""
    train = [r for r in rounds if r["kind"] == "train"]
    committed = [r for r in train if r["state"] == "committed"]
    last = committed[-1] if committed else None
    version = last["committed_version"] if last else 0
    since = [r for r in train if r["state"] == "abandoned" and (last is None
                                                              or r["id"] > last["id"])]
    reasons = Counter(r.get("reason") or "?" for r in since)
    msg = (f"training stalled at model version {version}: the last {len(since)} training "
           f"rounds were abandoned ({', '.join(f'{k}: {v}' for k, v in reasons.most_common())})"
           if since else f"training stopped at model version {version}")
    loss = typical_loss((last or {}).get("metrics", {}))
    if diverged(loss):
        return (msg + f"; the last committed round's training loss was {loss:.3g}: the "
                "model diverged (lower --lr, or clip the devices' deltas)")
    # the server refuses updates over its norm bound, so a diverging fleet usually never
    # commits its blown-up model: its rounds are abandoned, their updates refused
    refused: Counter[str] = Counter()
    for r in since:
        refused.update({k: v for k, v in (r.get("rejected") or {}).items()
                        if k in DIVERGED_REFUSALS})
    if refused:
        return (msg + f"; {sum(refused.values())} updates were refused ("
                f"{', '.join(f'{k}: {v}' for k, v in refused.most_common())}): the devices' "
                "training diverged (lower --lr, or clip the devices' deltas)")
    return msg + ("; too few phones were eligible or finished in time (more --devices, a "
                  "longer --reporting-deadline, or a smaller --clients-per-round)")
