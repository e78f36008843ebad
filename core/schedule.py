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


def replay_schedule(path: Path, ds, lr: float, server_lr: float, epochs: int
                    ) -> list[list[list]]:
    """The clients of every round of a federated report (``--json``), to train again.

    The report must be of plain FedAvg with the same client lr, server lr and epochs (a
    replay with other knobs would not be the same run), list every round's participants
    (the fleet logs them), and name only training users of ``ds``.
    """
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        rows, cfg = report["rounds"], report.get("config", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--schedule {path}: not a federated report ({exc})") from None
    if not rows:
        raise UserError(f"--schedule {path}: the report has no rounds")
    if cfg.get("strategy", "fedavg") != "fedavg" or cfg.get("clip_norm") is not None \
            or cfg.get("lr_decay"):
        raise UserError(f"--schedule {path}: the run was not plain FedAvg (strategy "
                        f"{cfg.get('strategy')}, clip_norm {cfg.get('clip_norm')}, lr_decay "
                        f"{cfg.get('lr_decay')}); TFF's engine replays FedAvg only")
    for name, mine in (("lr", lr), ("server_lr", server_lr), ("epochs", epochs)):
        theirs = cfg.get(name, cfg.get("client_lr") if name == "lr" else None)
        if theirs is not None and float(theirs) != float(mine):
            raise UserError(f"--schedule {path}: the run used {name} {theirs}, this replay "
                            f"{mine}; pass the same value")
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
    return out
