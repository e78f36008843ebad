"""Federated training with our own stack, end to end: export, serve, fleet, evaluate.

:func:`run_fleet_engine` is `fedkb simulate --engine fleet` and the heart of `fedkb demo`:
it exports (or reuses) the model artifact, starts `fedkb server` as its own process with
the config file of a :class:`~fedkb.simulation.fleet_config.FleetRunConfig`, runs the
emulated fleet until the rounds are committed, and evaluates the final global model on
the held-out users with LiteRT (the same metric every engine reports).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.datasets.store import Dataset
from fedkb.metrics import EngineReport, RecallCounts
from fedkb.simulation.communication import communication
from fedkb.simulation.fleet_config import (
    FleetRunConfig,
    report_config,
    seats,
    train_phones,
    write_server_config,
)
from fedkb.simulation.secure_report import SECURE_PHASE_KEYS, secure_aggregation


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
    half the batches in two threads (LiteRT releases the GIL), faster than one interpreter
    of two threads. The sums are the same either way.
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
               # from its selection's close to its commit; the selection is apart, as
               # it overlaps the previous round's training when rounds are pipelined
               "wall_s": round(sum(r["durations"].get(k) or 0.0 for k in
                                   ("reporting_s", "commit_s", *SECURE_PHASE_KEYS)), 3),
               "selection_s": r["durations"].get("selection_s"),
               "upload_bytes": sum(r.get("upload_bytes") or []),
               "download_bytes": r.get("download_bytes") or 0,
               # the reporting phones' simulated upload and encode seconds (their mean)
               "upload_s": r["metrics"].get("timing_upload_s"),
               "encode_s": r["metrics"].get("timing_encode_s")}
        if r.get("privacy"):  # the run's epsilon after this round, and its clip
            row["epsilon"] = r["privacy"].get("epsilon")
            row["clip"] = r["privacy"].get("clip")
        if accepted is not None:
            row["participants"] = sorted(by_round.get(r["id"], []))
        out.append(row)
    return out


def run_fleet_engine(cfg: FleetRunConfig, workdir: Path | None = None,
                     on_progress: Callable | None = None, keep_server: bool = False):
    """Train with server + fleet; returns (EngineReport, FederatedRun, ServerProcess|None)."""
    from fedkb.simulation.dp_flags import privacy_report
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
    trainers = train_phones(ds, cfg)
    config_file = write_server_config(cfg, workdir / "server-config.json", trainers,
                                      cfg.devices - trainers)
    state = workdir / "server-state"
    if state.exists():
        import shutil

        shutil.rmtree(state)
    # phones selected ahead hold a check-in open (one server thread each) until their
    # round's model exists: a thread per seat, the four the server never lends, four more;
    # in secure rounds the training round's phones also hold their secure steps open
    threads = max(8, seats(cfg.round) * (2 if cfg.secagg.enabled else 1) + 8)
    server = ServerProcess(state, model=artifact, config=config_file, rounds=cfg.rounds,
                           threads=threads if cfg.claim_hold_s > 0 else None)
    url = server.start()
    try:
        run = run_federated(url, cfg.data, cfg.devices, cfg.rounds, cfg.workers,
                            speedup=cfg.speedup, start_hour=cfg.start_hour, seed=cfg.seed,
                            on_progress=on_progress, final_eval=cfg.round.eval_every > 0,
                            claim_hold_s=cfg.claim_hold_s, faults=cfg.faults, ray=cfg.ray)
    except BaseException:
        server.stop()
        raise
    if not keep_server or run.stalled:
        server.stop()
    config = {**report_config(cfg), "model_version": run.status.get("model_version")}
    if run.stalled:
        if tmp is not None:
            tmp.cleanup()
        msg = stall_diagnosis(run.rounds)
        raise TrainingStalled(msg, {"engine": "fleet", "data": str(cfg.data), "error": msg,
                                    "heldout": None, "config": config,
                                    "rounds": round_rows(run.rounds, run.accepted),
                                    "communication": communication(run.rounds,
                                                                   cfg.compression,
                                                                   run.served),
                                    "secure_aggregation": secure_aggregation(run.rounds,
                                                                             cfg.secagg)})
    counts, loss = heldout_eval(artifact, run.final_weights, ds)
    from fedkb.model.config import get_preset
    from fedkb.simulation.engines import keyboard_figures

    model_cfg = get_preset(cfg.preset).fit_to_data(len(ds.vocab), ds.seq_len)
    report = EngineReport(
        engine="fleet", data=str(cfg.data),
        heldout={**EngineReport.heldout_figures(counts, len(ds.heldout_users), loss),
                 **keyboard_figures(ds, model_cfg, run.final_weights)},
        wall_s=round(time.perf_counter() - t0, 3),
        config=config, rounds=round_rows(run.rounds, run.accepted),
        privacy=privacy_report(run.status),
        communication=communication(run.rounds, cfg.compression, run.served),
        secure_aggregation=secure_aggregation(run.rounds, cfg.secagg,
                                              run.fleet.get("secure_steps")))
    if tmp is not None and not keep_server:
        tmp.cleanup()
    return report, run, (server if keep_server else None)
