"""`fedkb simulate --engine ...`: each way to train, same data, same metric, same report.

Every engine trains on the training users of a prepared dataset and reports top-1/top-3
recall on the held-out users (users that never trained), in the one schema of
:class:`fedkb.metrics.EngineReport`.

Engines live in :data:`ENGINES` (name -> function(args) -> EngineReport); each imports its
heavy dependencies itself, so choosing the n-gram never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from fedkb.errors import UserError
from fedkb.metrics import EngineReport


def _open_dataset(path: Path):
    from fedkb.datasets.store import Dataset

    try:
        return Dataset.open(path)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def _model_config(args: argparse.Namespace, ds):
    """The preset named by ``--preset``, fitted to the dataset (V capped, T from the data)."""
    from fedkb.model.config import get_preset

    try:
        preset = get_preset(args.preset)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    return preset.fit_to_data(len(ds.vocab), ds.seq_len)


def run_ngram(args: argparse.Namespace) -> EngineReport:
    """Interpolated Kneser-Ney trigrams on the training users' windows."""
    from fedkb.model.ngram import KneserNeyTrigram

    ds = _open_dataset(args.data)
    t0 = time.perf_counter()
    model = KneserNeyTrigram(len(ds.vocab)).fit(ds.all_windows("train", "train"))
    counts = model.evaluate(ds.all_windows("heldout", "eval"))
    return EngineReport(
        engine="ngram", data=str(args.data),
        heldout=EngineReport.heldout_figures(counts, len(ds.heldout_users)),
        wall_s=round(time.perf_counter() - t0, 3), config={"order": 3, "smoothing": "ikn"})


def run_central(args: argparse.Namespace) -> EngineReport:
    """The same Keras model trained on the pooled training users (the upper reference)."""
    from fedkb.model.central import ADAM_LR, CentralConfig, train_central

    ds = _open_dataset(args.data)
    model_cfg = _model_config(args, ds)
    default_lr = ADAM_LR if args.central_optimizer == "adam" else model_cfg.learning_rate
    cfg = CentralConfig(epochs=args.epochs, batch_size=args.batch_size,
                        learning_rate=args.lr if args.lr is not None else default_lr,
                        seed=args.seed, max_steps=args.max_steps,
                        optimizer=args.central_optimizer)
    t0 = time.perf_counter()
    res = train_central(ds, model_cfg, cfg, progress=None if args.json else _bar())
    return EngineReport(
        engine="central", data=str(args.data),
        heldout=EngineReport.heldout_figures(res.counts, len(ds.heldout_users), res.loss),
        wall_s=round(time.perf_counter() - t0, 3),
        config={"preset": model_cfg.name, "steps": res.steps, **vars(cfg)})


def run_tff(args: argparse.Namespace) -> EngineReport:
    """TensorFlow Federated's weighted FedAvg (in a reaped child process group).

    Clients are sampled with ``--seed`` (:func:`federated_rounds`), or, with
    ``--schedule``, are those of each round of an earlier run (:func:`replay_schedule`).
    """
    import tempfile

    from fedkb.codec import decode_arrays, encode_arrays
    from fedkb.datasets.store import clip_to_vocab
    from fedkb.model.central import evaluate_keras
    from fedkb.model.keras_model import build_model
    from fedkb.model.weights import initial_weights
    from fedkb.simulation.schedule import federated_rounds, replay_schedule
    from fedkb.simulation.tff_engine import run_tff_isolated

    ds = _open_dataset(args.data)
    cfg = _model_config(args, ds)
    lr = args.lr if args.lr is not None else cfg.learning_rate
    epochs = max(1, int(args.epochs))
    if args.schedule is not None:
        rounds, planned = replay_schedule(args.schedule, ds, {
            "lr": lr, "server_lr": args.server_lr, "epochs": epochs, "strategy": args.strategy,
            "clip_norm": args.clip_norm, "lr_decay": args.lr_decay})
    else:
        rounds = federated_rounds(ds.train_users, args.rounds, args.clients_per_round,
                                  args.seed)
        planned = len(rounds)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedkb-tff-") as tmp:
        work = Path(tmp)
        (work / "w0.bin").write_bytes(encode_arrays(initial_weights(cfg)))
        out = run_tff_isolated({
            "data": str(args.data), "model": cfg.to_dict(), "weights": str(work / "w0.bin"),
            "rounds": rounds, "epochs": epochs, "max_steps": args.max_steps, "client_lr": lr,
            "server_lr": args.server_lr, "strategy": _tff_strategy(args, planned),
            "weights_out": str(work / "final.bin")}, work)
        final = decode_arrays((work / "final.bin").read_bytes())
    counts, loss = evaluate_keras(build_model(cfg, weights=final),
                                  clip_to_vocab(ds.all_windows("heldout", "eval"),
                                                cfg.vocab_size))
    return EngineReport(
        engine="tff", data=str(args.data),
        heldout=EngineReport.heldout_figures(counts, len(ds.heldout_users), loss),
        wall_s=round(time.perf_counter() - t0, 3),
        config={"preset": cfg.name, "rounds": len(rounds),
                "clients_per_round": args.clients_per_round, "epochs": epochs,
                "schedule": None if args.schedule is None else str(args.schedule),
                "max_steps": args.max_steps, "client_lr": lr, "server_lr": args.server_lr,
                "strategy": args.strategy, "clip_norm": args.clip_norm,
                "lr_decay": args.lr_decay, "seed": args.seed,
                "tff_setup_s": round(out["setup_s"], 3), "tff_train_s": round(out["train_s"], 3)},
        rounds=out["rounds"])


def _tff_strategy(args: argparse.Namespace, rounds: int) -> dict:
    """The fleet server's strategy for these knobs, spelt out for the TFF child: its
    defaults come from the server's own :class:`StrategyConfig`, and each round's server
    lr from the server's schedule (round r makes model version r; ``rounds``: the rounds
    the run was planned for, over which the fleet's decay runs)."""
    from fedkb.server.config import StrategyConfig
    from fedkb.server.strategy import scheduled_lr

    sc = StrategyConfig(name=args.strategy, server_lr=args.server_lr, clip_norm=args.clip_norm,
                        decay_rounds=rounds if args.lr_decay else 0)
    return {"name": sc.name,
            "lrs": [scheduled_lr(sc.server_lr, sc.decay_rounds, v) for v in range(1, rounds + 1)],
            "momentum": sc.momentum, "nesterov": sc.nesterov, "beta1": sc.beta1,
            "beta2": sc.beta2, "tau": sc.tau, "clip_norm": sc.clip_norm}


def run_fleet(args: argparse.Namespace) -> EngineReport:
    """Our stack: `fedkb server` (its own process) + the emulated fleet, same knobs."""
    from fedkb.simulation.fleet_engine import FleetRunConfig, default_artifact_dir, run_fleet_engine

    _open_dataset(args.data)
    cfg = FleetRunConfig(
        data=args.data, preset=args.preset, rounds=args.rounds,
        clients_per_round=args.clients_per_round, epochs=max(1, int(args.epochs)),
        # no cap unless asked, like the TFF engine (the plan needs a number)
        max_steps=args.max_steps if args.max_steps is not None else 1_000_000, lr=args.lr,
        server_lr=args.server_lr, strategy=args.strategy, devices=args.devices,
        workers=args.workers,
        speedup=args.speedup, seed=args.seed, selection_window_s=args.selection_window,
        reporting_deadline_s=args.reporting_deadline, overselect=args.overselect,
        pace_margin=args.pace_margin,
        pipeline=not args.no_pipeline, claim_hold_s=args.claim_hold,
        clip_norm=args.clip_norm, lr_decay=args.lr_decay,
        artifact=args.artifact or default_artifact_dir(args.data, args.preset))
    report, _run, _ = run_fleet_engine(cfg, on_progress=None if args.json else _round_bar(
        args.rounds))
    return report


def _round_bar(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, desc="federated rounds", unit="round")

    def update(snapshot: dict, status: dict | None, _sim_now: float) -> None:
        done = min(total, (status or {}).get("rounds_committed", 0))
        if done > bar.n:
            bar.update(done - bar.n)
        c = snapshot["counts"]
        bar.set_postfix_str(f"uploads {c.get('completed', 0)} late {c.get('late', 0)} "
                            f"aborts {sum(snapshot['aborted'].values())}", refresh=False)
        if done >= total:
            bar.close()

    return update


def _bar():
    from tqdm import tqdm

    bar = None

    def update(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="central training", unit="step")
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step == total:
            bar.close()

    return update


ENGINES: dict[str, Callable[[argparse.Namespace], EngineReport]] = {
    "ngram": run_ngram,
    "central": run_central,
    "tff": run_tff,
    "fleet": run_fleet,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="train one way (" + ", ".join(ENGINES) +
                       ") and report held-out recall")
    p.add_argument("--engine", choices=sorted(ENGINES), required=True)
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset directory")
    p.add_argument("--preset", default="small", help="model preset (central, federated)")
    p.add_argument("--epochs", type=float, default=1.0,
                   help="passes over the data (central) or over each client's shard")
    p.add_argument("--rounds", type=int, default=20, help="federated: rounds")
    p.add_argument("--clients-per-round", type=int, default=20, help="federated: clients")
    p.add_argument("--server-lr", type=float, default=1.0, help="federated: server lr")
    p.add_argument("--strategy", default="fedavg", choices=("fedavg", "fedavgm", "fedadam"),
                   help="federated: server optimizer (fedavgm: Nesterov momentum 0.9; "
                        "fedadam: Reddi et al.), the same update rules in both engines")
    p.add_argument("--clip-norm", type=float, default=None, metavar="C",
                   help="federated: clip each client's delta to L2 norm C before the mean")
    p.add_argument("--lr-decay", action="store_true",
                   help="federated: cosine decay of the server lr to a tenth over the rounds")
    p.add_argument("--devices", type=int, default=300, help="fleet: emulated phones")
    p.add_argument("--workers", type=int, default=2, help="fleet: worker processes")
    p.add_argument("--speedup", type=float, default=60.0, help="fleet: simulated time factor")
    p.add_argument("--overselect", type=float, default=1.3,
                   help="fleet: devices selected per report wanted (1.0: wait for all, "
                        "as TFF's simulation does)")
    p.add_argument("--pace-margin", type=float, default=3.0,
                   help="fleet: check-ins the server steers per device a round needs")
    p.add_argument("--claim-hold", type=float, default=5.0, metavar="S",
                   help="fleet: a phone selected ahead keeps its check-in open up to S wall "
                        "seconds until its task exists (0: it polls)")
    p.add_argument("--no-pipeline", action="store_true",
                   help="fleet: the next round selects only after the previous one "
                        "closes (default: it selects while that round trains)")
    p.add_argument("--artifact", type=Path, default=None,
                   help="fleet: the model export to use, made there on first use "
                        "(default: DATA/models/PRESET)")
    p.add_argument("--selection-window", type=float, default=5.0,
                   help="fleet: server selection window, wall seconds")
    p.add_argument("--reporting-deadline", type=float, default=15.0,
                   help="fleet: server reporting deadline, wall seconds")
    p.add_argument("--batch-size", type=int, default=64, help="central: batch size")
    p.add_argument("--central-optimizer", choices=("sgd", "adam"), default="sgd",
                   help="central: the phones' plain SGD, or Adam (default --lr 0.01)")
    p.add_argument("--lr", type=float, default=None, help="client/central SGD learning rate")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap on SGD steps (central: in total; federated: per client)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule", type=Path, default=None,
                   help="tff: train the clients of each round of this federated report "
                        "(`--json` output, e.g. of --engine fleet) instead of sampling")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    if args.schedule is not None and args.engine != "tff":
        raise UserError("--schedule is for --engine tff (it replays an earlier run's clients)")
    from fedkb.simulation.fleet_run import TrainingStalled

    try:
        report = ENGINES[args.engine](args)
    except TrainingStalled as exc:
        if args.json:  # what the run did until it stalled, for a replay (--schedule)
            print(json.dumps(exc.report, indent=2))
        raise
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    h = report.heldout
    print(f"{report.engine}: top-1 recall {h['top1_recall']:.2%}, top-3 recall "
          f"{h['top3_recall']:.2%} on {h['users']} held-out users "
          f"({h['iv_targets']:,} targets) in {report.wall_s:.1f}s")
    return 0
