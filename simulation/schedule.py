"""Who trains in each round of a simulated federated run: sampled, or replayed.

Both federated engines of `fedkb simulate` describe a run's clients the same way: per
round, a list of ``[user, batch_seed]``. :func:`federated_rounds` samples them (the TFF
engine's clients, from ``--seed``); :func:`replay_schedule` reads them back from an
earlier run's report, whose rounds list their ``participants`` (the fleet logs which
phones' reports each round aggregated), so TFF can train exactly the clients our stack
trained and the two final models can be compared directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.errors import UserError


def federated_rounds(users: list[str], rounds: int, per_round: int, seed: int
                     ) -> list[list[list]]:
    """Client sampling shared by the federated engines: per round ``[[user, batch_seed]]``.

    Round r draws ``per_round`` distinct training users with ``default_rng([seed, r])``;
    each client's batch-order seed comes from the same generator.
    """
    out = []
    for r in range(rounds):
        rng = np.random.default_rng([seed, r])
        picked = rng.choice(len(users), size=min(per_round, len(users)), replace=False)
        out.append([[users[i], int(rng.integers(2**31))] for i in sorted(picked)])
    return out


def replay_schedule(path: Path, ds, knobs: dict[str, Any]) -> tuple[list[list[list]], int]:
    """The clients of every round of a federated report (``--json``), to train again,
    and the number of rounds that run was planned for (its lr decay spans them).

    ``knobs`` are the replay's ``lr``, ``server_lr``, ``epochs``, ``strategy``,
    ``clip_norm``, ``lr_decay``, ``grad_clip`` and ``weighting`` (TFF's is example-weighted
    FedAvg): each must be what the report's run used
    (a replay with other knobs would not be the same run). The report must list every round's
    participants (the fleet logs them) and name only training users of ``ds``.
    """
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        rows, cfg = report["rounds"], report.get("config", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--schedule {path}: not a federated report ({exc})") from None
    if not rows:
        raise UserError(f"--schedule {path}: the report has no rounds")
    for name, mine in knobs.items():
        if name in cfg:
            theirs = cfg[name]
        elif name == "lr" and "client_lr" in cfg:  # TFF's reports
            theirs = cfg["client_lr"]
        elif name in REPLAY_DEFAULTS:
            theirs = REPLAY_DEFAULTS[name]
        else:
            continue  # not recorded: nothing to check against
        if theirs is None and name not in REPLAY_DEFAULTS:
            continue  # e.g. the fleet's lr None: the preset's, resolved by the engine
        if not _same(theirs, mine):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"--schedule {path}: the run used {name} {theirs}, this replay "
                            f"{mine}; pass the same {flag}")
    known = set(ds.train_users)
    out = []
    for row in rows:
        clients = row.get("participants")
        if clients is None or len(clients) != row.get("clients"):
            raise UserError(f"--schedule {path}: round {row.get('round')} lists "
                            f"{None if clients is None else len(clients)} participants for "
                            f"{row.get('clients')} reports (the log is incomplete)")
        unknown = [u for u, _ in clients if u not in known]
        if unknown:
            raise UserError(f"--schedule {path}: round {row.get('round')} names users that "
                            f"are not training users of this dataset, e.g. {unknown[0]!r}")
        out.append([[u, int(seed)] for u, seed in clients])
    return out, int(cfg.get("rounds") or len(out))


# what a report that does not name a knob ran with (reports older than the knob)
REPLAY_DEFAULTS: dict[str, Any] = {"strategy": "fedavg", "clip_norm": None,
                                   "lr_decay": False, "grad_clip": None,
                                   "weighting": "examples"}


def _same(theirs: Any, mine: Any) -> bool:
    if theirs is None or mine is None:
        return theirs is mine
    if isinstance(theirs, bool) or isinstance(mine, bool) or isinstance(theirs, str) \
            or isinstance(mine, str):
        return theirs == mine
    return float(theirs) == float(mine)
