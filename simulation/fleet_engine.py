"""Federated training with our own stack, end to end: export, serve, fleet, evaluate.

:func:`run_fleet_engine` is `fedkb simulate --engine fleet` and the heart of `fedkb demo`:
it exports (or reuses) the model artifact, starts `fedkb server` as its own process with
a round config built from the same knobs the TFF engine takes, runs the emulated fleet
until the rounds are committed, and evaluates the final global model on the held-out
users with LiteRT (the same metric every engine reports).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.datasets.store import Dataset
from fedkb.metrics import EngineReport, RecallCounts

INELIGIBLE_RETRY_PHONE_S = 300.0  # simulated seconds a phone the server refused waits


@dataclass(frozen=True)
class FleetRunConfig:
    """The knobs shared with `--engine tff`, plus the fleet's own."""

    data: Path
    preset: str = "small"
    rounds: int = 20
    clients_per_round: int = 20
    epochs: int = 1
    max_steps: int = 50
    lr: float | None = None  # None: the preset's
    server_lr: float = 1.0
    strategy: str = "fedavg"
    devices: int = 300
    workers: int = 2
    speedup: float = 60.0
    start_hour: float = 22.0
    selection_window_s: float = 5.0
    reporting_deadline_s: float = 15.0
    pipeline: bool = True  # next round selects while the previous one trains
    claim_poll_s: float = 0.25  # wall seconds: how often a phone selected ahead asks again
    claim_hold_s: float = 5.0  # ... or how long it keeps one check-in open (0: it polls)
    overselect: float = 1.3  # devices selected per report wanted (Bonawitz et al.)
    pace_margin: float = 3.0  # check-ins steered per device a round needs (server config)
    clip_norm: float | None = None  # clip each device's delta to this L2 norm (server side)
    lr_decay: bool = False  # server lr: cosine decay to a tenth over the run's rounds
    eval_every: int = 0  # federated evaluation every N versions (0: none)
    eval_goal: int = 10
    seed: int = 0
    artifact: Path | None = None  # export here once and reuse it (None: workdir/model-P)
    rejoin_after_rounds: int | None = None  # None: see rejoin_rounds (a quarter of a cycle)


def ensure_artifact(data_dir: Path, preset: str, out: Path) -> Path:
    """Export ``preset`` for ``data_dir`` into ``out`` unless an identical export is there.

    "Identical" means the same preset fitted to this dataset (every hyperparameter, V and
    T included), the same vocabulary file, the current artifact format and the exporter's
    current graph revision, so a changed preset, re-prepared data or an export by older
    code is exported again.
    """
    from fedkb.artifact import ARTIFACT_FORMAT, METADATA_FILE
    from fedkb.model.config import get_preset
    from fedkb.model.export import GRAPH_REVISION

    ds = Dataset.open(data_dir)
    cfg = get_preset(preset).fit_to_data(len(ds.vocab), ds.seq_len)
    meta_file = out / METADATA_FILE
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") == ARTIFACT_FORMAT and meta.get("config") == cfg.to_dict() and \
                meta.get("graph_revision") == GRAPH_REVISION and \
                meta.get("data", {}).get("vocab_sha256") == ds.vocab.sha256:
            return out
    from fedkb.model.export import export_from_dataset

    export_from_dataset(get_preset(preset), data_dir, out)
    return out


def default_artifact_dir(data_dir: Path, preset: str) -> Path:
    """Where `fedkb simulate --engine fleet` keeps its export: next to the dataset.

    Re-preparing the dataset replaces its whole directory, cached exports included, so a
    cached export can never outlive the data it was made for.
    """
    return Path(data_dir) / "models" / preset


def heldout_eval(artifact: Path, weights: list[np.ndarray], ds: Dataset
                 ) -> tuple[RecallCounts, float]:
    """Top-k recall and mean loss of ``weights`` on every held-out user (LiteRT).

    The fleet is done, so both cores are free: two interpreters of one thread each take
    half the batches in two threads (LiteRT releases the GIL): 3.2 s against 4.1 s for one
    interpreter of two threads, 6 s for one of one. The sums are the same either way.
    """
    from concurrent.futures import ThreadPoolExecutor

    from fedkb.device_runtime.trainer import Trainer

    trainers = [Trainer(artifact, num_threads=1) for _ in range(2)]
    windows = ds.all_windows("heldout", "eval")
    half = len(windows) // 2 // trainers[0].B * trainers[0].B  # whole batches: same padding
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda tp: tp[0].evaluate(weights, tp[1]),
                              zip(trainers, (windows[:half], windows[half:]), strict=True)))
    iv = sum(e.iv_count for e in parts)
    counts = RecallCounts(iv, sum(e.top1_hits for e in parts), sum(e.top3_hits for e in parts))
    count = sum(e.count for e in parts)
    return counts, (sum(e.loss_sum for e in parts) / count if count else 0.0)


def rejoin_rounds(cfg: FleetRunConfig, train_phones: int) -> int:
    """The server's ``rejoin_after_rounds`` for this run (see :class:`RoundConfig`).

    Unless set, a phone rests for a quarter of the rounds it would take to give every
    training phone one task. Only the phones eligible right now can be picked, and at
    night that is about 40% of them, staying so for hours; resting longer than the
    eligible phones can cover starves the rounds (measured: after ~24 rounds with half).
    """
    if cfg.rejoin_after_rounds is not None:
        return cfg.rejoin_after_rounds
    per_round = max(1, math.ceil(cfg.clients_per_round * cfg.overselect))
    return max(0, train_phones // per_round // 4)


def server_config(cfg: FleetRunConfig, lr: float, train_phones: int,
                  eval_phones: int | None = None) -> dict[str, Any]:
    # A small fleet has few held-out phones, ~40% of them eligible at a time: ask an
    # evaluation round for no more than a quarter of them, or it can never fill.
    eval_goal = cfg.eval_goal if eval_phones is None else \
        max(1, min(cfg.eval_goal, eval_phones // 4))
    return {
        "round": {"report_goal": cfg.clients_per_round, "selection_window_s":
                  cfg.selection_window_s, "reporting_deadline_s": cfg.reporting_deadline_s,
                  "pipeline": cfg.pipeline, "claim_poll_s": cfg.claim_poll_s,
                  "overselect": cfg.overselect,
                  "eval_every": cfg.eval_every, "eval_goal": eval_goal,
                  "rejoin_after_rounds": rejoin_rounds(cfg, train_phones),
                  # round 1 waits for the fleet to register, not just the server to start;
                  # a phone registers once eligible (~40% at a time): ask for no more than
                  # a quarter of the training phones, or a small fleet would never start
                  "min_registered": min(train_phones // 4, math.ceil(cfg.clients_per_round
                                                                     * cfg.overselect)),
                  "pace_margin": cfg.pace_margin,
                  # The server counts wall seconds; phones live `speedup` times faster. Its
                  # "come back in 5 minutes" to a phone with a low battery is meant in the
                  # phone's time (300 wall seconds would be 5 simulated hours at 60x).
                  "ineligible_retry_s": round(max(0.05, INELIGIBLE_RETRY_PHONE_S / cfg.speedup),
                                              3)},
        "client": {"lr": lr, "epochs": cfg.epochs, "max_steps": cfg.max_steps},
        "strategy": {"name": cfg.strategy, "server_lr": cfg.server_lr,
                     **({"clip_norm": cfg.clip_norm} if cfg.clip_norm is not None else {}),
                     **({"decay_rounds": cfg.rounds} if cfg.lr_decay else {})},
    }


def train_phones(ds: Dataset, cfg: FleetRunConfig) -> int:
    """How many of the fleet's phones hold a training user's shard (the rest evaluate)."""
    from fedkb.device_runtime.fleet import FleetConfig, phone_users

    fc = FleetConfig("http://unused", cfg.data, cfg.devices, seed=cfg.seed)
    return sum(1 for _, role in phone_users(fc, ds) if role == "train")


def round_rows(rounds: list[dict[str, Any]], accepted: list[list] | None = None
               ) -> list[dict[str, Any]]:
    """Per committed training round: what the report schema lists.

    ``accepted`` is the fleet's log of accepted training reports ([round_id, user,
    batch_seed]); each row then names its ``participants`` ([user, batch_seed], sorted),
    the schedule `fedkb simulate --engine tff --schedule` replays.
    """
    by_round: dict[int, list[list]] = {}
    for round_id, user, seed in accepted or []:
        by_round.setdefault(int(round_id), []).append([user, int(seed)])
    out = []
    for r in rounds:
        if r["kind"] != "train" or r["state"] != "committed":
            continue
        row = {"round": r["committed_version"], "clients": r["reported"],
               "selected": r["selected"], "late": r["late"],
               "aborted": sum(r["aborted"].values()),
               "train_loss": r["metrics"].get("loss"),
               "wall_s": round(sum(r["durations"].get(k) or 0.0 for k in
                                   ("selection_s", "reporting_s", "commit_s")), 3)}
        if accepted is not None:
            row["participants"] = sorted(by_round.get(r["id"], []))
        out.append(row)
    return out


def run_fleet_engine(cfg: FleetRunConfig, workdir: Path | None = None,
                     on_progress: Callable | None = None, keep_server: bool = False):
    """Train with server + fleet; returns (EngineReport, FederatedRun, ServerProcess|None)."""
    from fedkb.model.config import get_preset
    from fedkb.simulation.fleet_run import TrainingStalled, run_federated, stall_diagnosis
    from fedkb.simulation.server_process import ServerProcess

    ds = Dataset.open(cfg.data)
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fedkb-fleet-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    artifact = ensure_artifact(cfg.data, cfg.preset,
                               cfg.artifact or workdir / f"model-{cfg.preset}")
    lr = cfg.lr if cfg.lr is not None else get_preset(cfg.preset).learning_rate
    config_file = workdir / "server-config.json"
    trainers = train_phones(ds, cfg)
    rc = server_config(cfg, lr, trainers, cfg.devices - trainers)
    config_file.write_text(json.dumps(rc, indent=2), encoding="utf-8")
    state = workdir / "server-state"
    if state.exists():
        import shutil

        shutil.rmtree(state)
    # phones selected ahead hold a check-in open (one server thread each) until their
    # round's model exists: a thread per seat, the four the server never lends, four more
    threads = max(8, math.ceil(cfg.clients_per_round * cfg.overselect) + 8)
    server = ServerProcess(state, model=artifact, config=config_file, rounds=cfg.rounds,
                           threads=threads if cfg.claim_hold_s > 0 else None)
    url = server.start()
    try:
        run = run_federated(url, cfg.data, cfg.devices, cfg.rounds, cfg.workers,
                            speedup=cfg.speedup, start_hour=cfg.start_hour, seed=cfg.seed,
                            on_progress=on_progress, final_eval=cfg.eval_every > 0,
                            claim_hold_s=cfg.claim_hold_s)
    except BaseException:
        server.stop()
        raise
    if not keep_server or run.stalled:
        server.stop()
    config = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
              "lr": lr, "model_version": run.status.get("model_version")}
    if run.stalled:
        if tmp is not None:
            tmp.cleanup()
        msg = stall_diagnosis(run.rounds)
        raise TrainingStalled(msg, {"engine": "fleet", "data": str(cfg.data), "error": msg,
                                    "heldout": None, "config": config,
                                    "rounds": round_rows(run.rounds, run.accepted)})
    counts, loss = heldout_eval(artifact, run.final_weights, ds)
    report = EngineReport(
        engine="fleet", data=str(cfg.data),
        heldout=EngineReport.heldout_figures(counts, len(ds.heldout_users), loss),
        wall_s=round(time.perf_counter() - t0, 3),
        config=config, rounds=round_rows(run.rounds, run.accepted))
    if tmp is not None and not keep_server:
        tmp.cleanup()
    return report, run, (server if keep_server else None)
