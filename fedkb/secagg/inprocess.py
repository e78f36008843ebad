"""One secure round with in-process emulated phones, every message through its JSON form.

For tests and ``bench/bench_secagg.py``: no HTTP, no processes; each phone is a
:class:`~.client.Phone` object and every message is serialized with ``to_json`` by its
sender and parsed with ``from_json`` by its receiver, so the byte counts are the JSON
bodies the HTTP phases will carry. Compute is thread CPU time (``time.thread_time``) of
each party's own work, serialization included.

``drop`` says who vanishes when: ``"before_keys"`` (never advertise), ``"after_keys"``
(advertise, send no shares), ``"after_shares"`` (send shares, no masked input),
``"after_masked_input"`` (send the masked input, never answer Unmask).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedkb.secagg.client import Phone
from fedkb.secagg.messages import (
    Abort,
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    Refusal,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from fedkb.secagg.params import RoundParams
from fedkb.secagg.server import SecAggServer, SumResult

DROP_POINTS = ("before_keys", "after_keys", "after_shares", "after_masked_input")


@dataclass
class Cost:
    cpu_s: float = 0.0
    up: int = 0
    down: int = 0
    masked_input_bytes: int = 0


@dataclass
class RoundRun:
    server: SecAggServer
    phones: dict[int, Phone]
    phone_cost: dict[int, Cost]
    server_cpu_s: dict[str, float] = field(default_factory=dict)
    phone_refusals: dict[int, Refusal] = field(default_factory=dict)
    outcome: SumResult | Abort | None = None


def _timed(acc: Cost | dict, key: str | None, fn: Callable[[], object]) -> object:
    t0 = time.thread_time()
    out = fn()
    dt = time.thread_time() - t0
    if isinstance(acc, Cost):
        acc.cpu_s += dt
    else:
        acc[key] = acc.get(key, 0.0) + dt
    return out


def run_round(params: RoundParams, inputs: Mapping[int, np.ndarray],
              drop: Mapping[str, set[int]] | None = None,
              tamper: Callable[[str, object], object] | None = None) -> RoundRun:
    """Run all four phases; ``tamper(stage, msg)`` may replace a message in flight
    (stages: "shares", "relay", "masked", "unmask"), to test what the parties refuse."""
    drop = {k: set(v) for k, v in (drop or {}).items()}
    if set(drop) - set(DROP_POINTS):
        raise ValueError(f"drop points are {DROP_POINTS}")
    gone: set[int] = set()
    tamper = tamper or (lambda _stage, m: m)
    phones = {u: Phone(u, params) for u in params.clients}
    cost = {u: Cost() for u in params.clients}
    server = SecAggServer(params)
    scpu: dict[str, float] = {}
    run = RoundRun(server, phones, cost, scpu)

    def finish(outcome: SumResult | Abort) -> RoundRun:
        run.outcome = outcome
        return run

    def alive(point: str) -> list[int]:
        gone.update(drop.get(point, ()))
        return [u for u in params.clients if u not in gone and u not in run.phone_refusals]

    # AdvertiseKeys
    for u in alive("before_keys"):
        body = _timed(cost[u], None, lambda u=u: phones[u].advertise().to_json())
        cost[u].up += len(body)
        _timed(scpu, "advertise",
               lambda b=body: server.receive_advertise(AdvertiseKeys.from_json(b)))
    roster = _timed(scpu, "advertise", server.close_advertise)
    if isinstance(roster, Abort):
        return finish(roster)
    roster_body = roster.to_json()
    # ShareKeys
    for u in alive("after_keys"):
        if u not in server.keys:
            continue
        cost[u].down += len(roster_body)
        msg = _timed(cost[u], None,
                     lambda u=u: phones[u].share_keys(KeyRoster.from_json(roster_body)))
        if isinstance(msg, Refusal):
            run.phone_refusals[u] = msg
            continue
        msg = tamper("shares", msg)
        body = _timed(cost[u], None, lambda m=msg: m.to_json())
        cost[u].up += len(body)
        _timed(scpu, "share_keys", lambda b=body: server.receive_shares(ShareKeys.from_json(b)))
    relays = _timed(scpu, "share_keys", server.close_shares)
    if isinstance(relays, Abort):
        return finish(relays)
    # MaskedInputCollection
    for u in alive("after_shares"):
        if u not in relays:
            continue
        relay = tamper("relay", relays[u])
        body = relay.to_json()
        cost[u].down += len(body)
        msg = _timed(cost[u], None, lambda u=u, b=body: phones[u].masked_input(
            ShareRelay.from_json(b), inputs[u]))
        if isinstance(msg, Refusal):
            run.phone_refusals[u] = msg
            continue
        msg = tamper("masked", msg)
        body = _timed(cost[u], None, lambda m=msg: m.to_json())
        cost[u].up += len(body)
        cost[u].masked_input_bytes = len(body)
        _timed(scpu, "masked_input",
               lambda b=body: server.receive_masked(MaskedInput.from_json(b)))
    del relays
    req = _timed(scpu, "masked_input", server.close_masked)
    if isinstance(req, Abort):
        return finish(req)
    req_body = req.to_json()
    # Unmasking
    for u in alive("after_masked_input"):
        if u not in server.u3:
            continue
        cost[u].down += len(req_body)
        msg = _timed(cost[u], None,
                     lambda u=u: phones[u].unmask(UnmaskRequest.from_json(req_body)))
        if isinstance(msg, Refusal):
            run.phone_refusals[u] = msg
            continue
        msg = tamper("unmask", msg)
        body = _timed(cost[u], None, lambda m=msg: m.to_json())
        cost[u].up += len(body)
        _timed(scpu, "unmasking",
               lambda b=body: server.receive_unmask(UnmaskResponse.from_json(b)))
    return finish(_timed(scpu, "unmasking", server.close_unmask))
