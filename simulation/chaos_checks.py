"""What a chaos run must prove, read off the server's state directory and its own counts.

Pure readers of a state directory (the server may be dead or alive: the database is
opened read-only) and of the fleet's fault counters:

- :func:`committed_versions` / :func:`versions_lost`: every model version the database
  recorded before a kill is still recorded after the restart, with the same SHA-256, and
  its checkpoint file still hashes to it;
- :func:`replay_commits`: the server keeps no device's update, but each checkpoint holds
  the optimizer state, from which each committed round's folded mean update is recovered
  (FedAvgM: Δ_v = m_v − μ m_{v−1}). Every one must be finite, no longer than the bound
  one update may have (``strategy.clip_norm``, else the norm bound), and replaying the
  server's step on the parent must give the child: no unbounded update was ever folded;
- :func:`fault_accounting`: per fault kind, what the fleet injected, how the server
  answered each, and the server's own refusal counts by reason (its rounds' ``rejected``);
- :func:`orphans`: processes left behind (the run's children, or anything naming its
  state directory).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.device_runtime.faults import EXPECTED_REFUSAL, FAULT_KINDS
from fedkb.server.config import StrategyConfig

CHECKPOINTS = "checkpoints"  # fedkb.server.app.CHECKPOINT_DIR
DB_FILE = "fedkb.db"


def _connect(state: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{state / DB_FILE}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def committed_versions(state: Path) -> dict[int, str]:
    """Version -> SHA-256 of every model the database recorded (undamaged)."""
    conn = _connect(state)
    try:
        rows = conn.execute("SELECT version, sha256 FROM models WHERE damaged = 0").fetchall()
    finally:
        conn.close()
    return {int(r["version"]): str(r["sha256"]) for r in rows}


def versions_lost(before: dict[int, str], state: Path) -> list[int]:
    """Versions of ``before`` that the database no longer records as they were, or whose
    file no longer hashes to the recorded SHA-256."""
    after = committed_versions(state)
    lost = []
    for v, sha in sorted(before.items()):
        path = state / CHECKPOINTS / f"v{v:06d}.safetensors"
        ok = after.get(v) == sha and path.is_file() and \
            hashlib.sha256(path.read_bytes()).hexdigest() == sha
        if not ok:
            lost.append(v)
    return lost


def stale_temporaries(state: Path) -> list[str]:
    """Half-written checkpoint files (``.NAME.tmp-PID``): what a kill during a commit
    leaves, and what the next server start must remove."""
    d = state / CHECKPOINTS
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name) if d.is_dir() else []


def _load(state: Path, specs: list, version: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from fedkb.server.checkpoints import decode_checkpoint

    return decode_checkpoint(specs, (state / CHECKPOINTS / f"v{version:06d}.safetensors")
                             .read_bytes())


def _norm(arrays: list[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in arrays))


def replay_commits(state: Path, strategy: StrategyConfig, bound: float) -> dict[str, Any]:
    """Recover each committed round's folded mean update from the checkpoints and check it
    (see the module docstring); ``bound``: the longest update one device may contribute."""
    from fedkb.artifact import Artifact
    from fedkb.server.strategy import scheduled_lr

    if strategy.name not in ("fedavg", "fedavgm"):
        return {"replayable": False, "why": f"{strategy.name}'s state is not replayed"}
    specs = Artifact.load(state / "artifact").specs
    versions = sorted(committed_versions(state))
    rows, bad = [], []
    prev_w, prev_m = _load(state, specs, versions[0])
    for v in versions[1:]:
        w, m = _load(state, specs, v)
        lr = scheduled_lr(strategy.server_lr, strategy.decay_rounds, v)
        if strategy.name == "fedavgm":
            mu = strategy.momentum
            pm = prev_m or [np.zeros_like(a) for a in m]
            delta = [a.astype(np.float64) - mu * b for a, b in zip(m, pm, strict=True)]
            step = [mu * a + d for a, d in zip(m, delta, strict=True)] \
                if strategy.nesterov else [a.astype(np.float64) for a in m]
        else:
            delta = [(a.astype(np.float64) - b) / lr for a, b in zip(w, prev_w, strict=True)]
            step = delta
        want = [b + lr * s for b, s in zip(prev_w, step, strict=True)]
        err = max(float(np.max(np.abs(a - b))) for a, b in zip(w, want, strict=True))
        scale = max(1.0, max(float(np.max(np.abs(a))) for a in w))
        norm = _norm(delta)
        finite = all(bool(np.isfinite(a).all()) for a in [*w, *m])
        ok = finite and norm <= bound * (1 + 1e-3) + 1e-6 and err <= 1e-4 * scale
        rows.append({"version": v, "mean_update_norm": round(norm, 4),
                     "replay_error": err, "finite": finite, "ok": ok})
        if not ok:
            bad.append(v)
        prev_w, prev_m = w, m
    return {"replayable": True, "bound": bound, "versions": len(rows), "bad": bad,
            "max_mean_update_norm": max((r["mean_update_norm"] for r in rows), default=0.0),
            "max_replay_error": max((r["replay_error"] for r in rows), default=0.0),
            "rows": rows}


def fault_accounting(faults: dict[str, int], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fault kind: injected, the server's answers to them, and (for the refused kinds)
    the server's own count of refusals with that kind's code, summed over its rounds.

    ``folded`` counts the bad updates (every kind but boost and unplug) the server
    answered "accepted": it must be 0.
    """
    rejected: dict[str, int] = {}
    for r in rounds:
        for code, n in (r.get("rejected") or {}).items():
            rejected[code] = rejected.get(code, 0) + int(n)
    kinds: dict[str, Any] = {}
    for kind in FAULT_KINDS:
        injected = int(faults.get(f"fault_{kind}", 0))
        answers = {k.split(":", 1)[1]: v for k, v in faults.items()
                   if k.startswith(f"fault_{kind}:")}
        row: dict[str, Any] = {"injected": injected, "answers": answers}
        if kind in EXPECTED_REFUSAL:
            code = EXPECTED_REFUSAL[kind]
            row["server_rejected"] = rejected.get(code, 0)
            row["refused_as_expected"] = answers.get(code, 0)
        kinds[kind] = row
    folded = sum(kinds[k]["answers"].get("accepted", 0) for k in EXPECTED_REFUSAL)
    return {"kinds": kinds, "server_rejected_by_reason": rejected, "bad_updates_folded": folded}


def orphans(root_pid: int, state: Path) -> list[str]:
    """Live processes the run left: children of ``root_pid``, or naming ``state``.

    Not counted: ``root_pid`` itself and its ancestors (a bench's own command line names
    its work directory), and multiprocessing's resource tracker, which every process that
    used multiprocessing keeps until it exits.
    """
    import psutil

    me = psutil.Process(root_pid)
    mine = {root_pid, os.getpid(), *(p.pid for p in me.parents())}
    found = {}
    candidates = list(me.children(recursive=True))
    needle = str(state)
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if needle in " ".join(p.info.get("cmdline") or []):
                candidates.append(p)
    for p in candidates:
        try:
            cmd = " ".join(p.cmdline())
            if p.pid in mine or p.status() == psutil.STATUS_ZOMBIE or \
                    "multiprocessing.resource_tracker" in cmd:
                continue
            found[p.pid] = cmd
        except psutil.Error:
            continue
    return [f"{pid}: {cmd[:160]}" for pid, cmd in sorted(found.items())]
