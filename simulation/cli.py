"""`fedkb simulate --engine ...`: one command for each way to train (:mod:`.engines`).

This module only maps flags to the engines' typed configs, in one place
(:func:`fleet_config`, :func:`tff_config`, :func:`central_config`); every default comes
from those configs' dataclass fields (the fleet's from :data:`FLEET_ROUND`), and the
strategy choices from the server's registry, :data:`fedkb.server.strategy.STRATEGIES`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from fedkb.errors import UserError
from fedkb.metrics import EngineReport
from fedkb.server.config import (
    DOWNLINKS,
    UPLINKS,
    ClientConfig,
    CompressionConfig,
    SecAggConfig,
    StrategyConfig,
)
from fedkb.simulation.dp_flags import add_dp_arguments, privacy_config, refuse_dp
from fedkb.simulation.fleet_config import FLEET_ROUND, FleetRunConfig, default_of

NO_CAP = 1_000_000  # the fleet's max_steps without --max-steps (a plan needs a number)
ENGINE_NAMES = ("ngram", "central", "tff", "fleet")


def strategy_names() -> tuple[str, ...]:
    """The server's strategies (its registry, imported only here: numpy and the config)."""
    from fedkb.server.strategy import STRATEGIES

    return tuple(STRATEGIES)


def _strategy(args: argparse.Namespace) -> StrategyConfig:
    from fedkb.simulation.dp_flags import strategy_name

    return StrategyConfig(name=strategy_name(args), server_lr=args.server_lr,
                          clip_norm=args.clip_norm,
                          decay_rounds=args.rounds if args.lr_decay else 0,
                          weighting=getattr(args, "weighting", "examples"))


def _client_lr(args: argparse.Namespace) -> float:
    from fedkb.simulation.engines import preset_config

    return args.lr if args.lr is not None else preset_config(args.preset).learning_rate


def _grad_clip(args: argparse.Namespace) -> float | None:
    """``--grad-clip``: 0 turns the phones' per-step gradient clipping off."""
    return args.grad_clip or None


def add_ray_flag(p: argparse.ArgumentParser) -> None:
    """The fleet engine's ``--ray [ADDRESS]`` (see `fedkb fleet --help`)."""
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="fleet: run the phones on a Ray cluster ('auto', HOST:PORT, or alone "
                        "for a private Ray on this machine; needs `uv sync --extra ray`)")
    p.add_argument("--ray-shards", type=int, default=0, metavar="N",
                   help="fleet, with --ray: phone shard actors (default: one per node)")
    p.add_argument("--ray-trainers", type=int, default=0, metavar="N",
                   help="fleet, with --ray: training workers, one CPU each (default: as "
                        "many as the cluster's CPUs hold)")


def fleet_config(args: argparse.Namespace) -> FleetRunConfig:
    """The fleet run the flags ask for."""
    from fedkb.device_runtime.cli import ray_options
    from fedkb.simulation.fleet_engine import default_artifact_dir

    artifact = args.artifact or default_artifact_dir(args.data, args.preset)
    if getattr(args, "init_from", None) is not None:  # the export, warm-started
        from fedkb.simulation.init_from import warm_artifact

        artifact = warm_artifact(args.data, args.preset, artifact, args.init_from)
    return FleetRunConfig(
        data=args.data, preset=args.preset, devices=args.devices, workers=args.workers,
        speedup=args.speedup, seed=args.seed, claim_hold_s=args.claim_hold,
        artifact=artifact,
        round=FLEET_ROUND.replace(
            report_goal=args.clients_per_round, max_rounds=args.rounds,
            selection_window_s=args.selection_window,
            reporting_deadline_s=args.reporting_deadline, overselect=args.overselect,
            pace_margin=args.pace_margin, pipeline=not args.no_pipeline),
        # no cap unless asked, like the TFF engine
        client=ClientConfig(lr=_client_lr(args), epochs=max(1, int(args.epochs)),
                            max_steps=args.max_steps if args.max_steps is not None else NO_CAP,
                            grad_clip=_grad_clip(args)),
        strategy=_strategy(args), faults=_faults(args),
        privacy=privacy_config(args), compression=compression_config(args),
        ray=ray_options(args.ray, args.ray_shards, args.ray_trainers),
        secagg=secagg_config(args))


def _faults(args: argparse.Namespace):
    """The fleet's ``--faults`` (None: honest phones); a bad text is the user's error."""
    from fedkb.device_runtime.faults import FaultError, parse_faults

    if args.faults is None:
        return None
    try:
        return parse_faults(args.faults)
    except FaultError as exc:
        raise UserError(f"--faults: {exc}") from None


def compression_config(args: argparse.Namespace) -> CompressionConfig:
    """The server's ``[compression]`` table from ``--uplink``, ``--rotate``, ``--downlink``,
    ``--quantize-min``."""
    return CompressionConfig(uplink=args.uplink, rotate=args.rotate, downlink=args.downlink,
                             min_elements=args.quantize_min)


def add_compression_flags(p: argparse.ArgumentParser, default_uplink: str) -> None:
    """``--uplink``, ``--rotate`` and ``--downlink`` (`fedkb simulate` and `fedkb demo`)."""
    p.add_argument("--uplink", choices=UPLINKS, default=default_uplink,
                   help="fleet: how phones encode their update (b-bit stochastic "
                        "quantization, per-chunk grids; small tensors stay float32)")
    p.add_argument("--rotate", action="store_true",
                   help="fleet: randomized Hadamard rotation before quantizing (a seed "
                        "per task)")
    p.add_argument("--downlink", choices=DOWNLINKS,
                   default=default_of(CompressionConfig, "downlink"),
                   help="fleet: dtype of the global weights training phones download "
                        "(they train in float32; the server's model stays float32)")
    p.add_argument("--quantize-min", type=int, metavar="N",
                   default=default_of(CompressionConfig, "min_elements"),
                   help="fleet: with a quantized uplink, tensors of fewer than N values "
                        "stay float32 (the small model's output bias has 10,000)")


def secagg_config(args: argparse.Namespace) -> SecAggConfig:
    """The server's ``[secagg]`` table from ``--secagg``, ``--secagg-threshold``,
    ``--secagg-neighbours`` (the fleet refuses what the server would: check_secagg)."""
    if not args.secagg:
        if args.secagg_threshold is not None or args.secagg_neighbours is not None:
            raise UserError("--secagg-threshold and --secagg-neighbours need --secagg")
        return SecAggConfig()
    kw: dict = {"enabled": True}
    if args.secagg_threshold is not None:
        kw["threshold"] = args.secagg_threshold
    if args.secagg_neighbours is not None:
        kw["neighbours"] = args.secagg_neighbours
    return SecAggConfig(**kw)


def add_secagg_flags(p: argparse.ArgumentParser) -> None:
    """``--secagg``, ``--secagg-threshold``, ``--secagg-neighbours`` (simulate and demo)."""
    p.add_argument("--secagg", action="store_true",
                   help="fleet: secure aggregation (Bonawitz et al. 2017): the server learns "
                        "only the sum of each round's updates (needs --uplink q8/q4/q2 and "
                        "--clip-norm)")
    p.add_argument("--secagg-threshold", type=float, default=None, metavar="T",
                   help="t: a count (>= 2) or a fraction of a round's phones; more than "
                        f"half the cohort (default {default_of(SecAggConfig, 'threshold')})")
    p.add_argument("--secagg-neighbours", type=int, default=None, metavar="K",
                   help="SecAgg+ (Bell et al. 2020): mask with K graph neighbours (even), "
                        "not every other phone")


def tff_config(args: argparse.Namespace):
    """The TFF run the flags ask for (a :class:`~.engines.TffRunConfig`)."""
    from fedkb.simulation.engines import TffRunConfig

    return TffRunConfig(data=args.data, preset=args.preset, rounds=args.rounds,
                        clients_per_round=args.clients_per_round, lr=_client_lr(args),
                        epochs=max(1, int(args.epochs)), max_steps=args.max_steps,
                        grad_clip=_grad_clip(args),
                        strategy=_strategy(args), seed=args.seed, schedule=args.schedule)


def central_config(args: argparse.Namespace):
    """The central training the flags ask for (a ``CentralConfig``)."""
    from fedkb.model.central import CentralConfig
    from fedkb.simulation.engines import central_lr

    lr = args.lr if args.lr is not None else central_lr(args.preset, args.central_optimizer)
    return CentralConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=lr,
                         seed=args.seed, max_steps=args.max_steps,
                         optimizer=args.central_optimizer)


def _run(args: argparse.Namespace) -> EngineReport:
    from fedkb.simulation import engines

    if args.engine == "tff" and args.weighting != "examples":
        raise UserError("--weighting uniform runs on the fleet engine (the TFF reference "
                        "is example-weighted FedAvg)")
    if args.engine != "fleet":
        refuse_dp(args, args.engine)
        if args.secagg:
            raise UserError(f"--secagg runs on the fleet engine (real phones and server "
                            f"over HTTP); --engine {args.engine} has no wire to secure")
    progress = not args.json
    runs: dict[str, Callable[[], EngineReport]] = {
        "ngram": lambda: engines.run_ngram(args.data),
        "central": lambda: engines.run_central(args.data, args.preset, central_config(args),
                                               progress),
        "tff": lambda: engines.run_tff(tff_config(args)),
        "fleet": lambda: engines.run_fleet(fleet_config(args), progress),
    }
    return runs[args.engine]()


def register(sub: argparse._SubParsersAction) -> None:
    from fedkb.model.central import OPTIMIZERS, CentralConfig

    fleet, rc, sc = FleetRunConfig, FLEET_ROUND, StrategyConfig
    p = sub.add_parser("simulate", help="train one way (" + ", ".join(ENGINE_NAMES) +
                       ") and report held-out recall")
    p.add_argument("--engine", choices=sorted(ENGINE_NAMES), required=True)
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset directory")
    p.add_argument("--preset", default=default_of(fleet, "preset"),
                   help="model preset (central, federated)")
    p.add_argument("--epochs", type=float, default=float(default_of(ClientConfig, "epochs")),
                   help="passes over the data (central) or over each client's shard")
    p.add_argument("--rounds", type=int, default=rc.max_rounds, help="federated: rounds")
    p.add_argument("--clients-per-round", type=int, default=rc.report_goal,
                   help="federated: clients")
    p.add_argument("--server-lr", type=float, default=default_of(sc, "server_lr"),
                   help="federated: server lr")
    p.add_argument("--strategy", default=default_of(sc, "name"), choices=strategy_names(),
                   help="federated: server optimizer (fedavgm: Nesterov momentum 0.9; "
                        "fedadam: Reddi et al.), the same update rules in both engines")
    p.add_argument("--clip-norm", type=float, default=default_of(sc, "clip_norm"),
                   metavar="C",
                   help="federated: clip each client's delta to L2 norm C before the mean")
    p.add_argument("--weighting", default=default_of(sc, "weighting"),
                   choices=("examples", "uniform"),
                   help="fleet: the mean of the updates, weighted by examples (FedAvg) or "
                        "uniform (weight 1 each, what --secagg and --dp compute): a plain "
                        "run to compare them with")
    p.add_argument("--grad-clip", type=float, default=default_of(ClientConfig, "grad_clip"),
                   metavar="G",
                   help="federated: clip each local SGD step's gradient to global L2 norm G "
                        "on the phone (inside the LiteRT train signature; TFF's clients "
                        "the same); 0: off")
    p.add_argument("--lr-decay", action="store_true",
                   help="federated: cosine decay of the server lr to a tenth over the rounds")
    p.add_argument("--devices", type=int, default=default_of(fleet, "devices"),
                   help="fleet: emulated phones")
    p.add_argument("--workers", type=int, default=default_of(fleet, "workers"),
                   help="fleet: worker processes")
    add_ray_flag(p)
    p.add_argument("--speedup", type=float, default=default_of(fleet, "speedup"),
                   help="fleet: simulated time factor")
    p.add_argument("--overselect", type=float, default=rc.overselect,
                   help="fleet: devices selected per report wanted (1.0: wait for all, "
                        "as TFF's simulation does)")
    p.add_argument("--pace-margin", type=float, default=rc.pace_margin,
                   help="fleet: check-ins the server steers per device a round needs")
    p.add_argument("--claim-hold", type=float, default=default_of(fleet, "claim_hold_s"),
                   metavar="S",
                   help="fleet: a phone selected ahead keeps its check-in open up to S wall "
                        "seconds until its task exists (0: it polls)")
    p.add_argument("--no-pipeline", action="store_true",
                   help="fleet: the next round selects only after the previous one "
                        "closes (default: it selects while that round trains)")
    p.add_argument("--artifact", type=Path, default=None,
                   help="fleet: the model export to use, made there on first use "
                        "(default: DATA/models/PRESET)")
    p.add_argument("--init-from", type=Path, default=None, metavar="ARTIFACT_OR_CHECKPOINT",
                   help="fleet: start from this model, the vocabulary mapped (see "
                        "`fedkb demo --init-from`)")
    p.add_argument("--selection-window", type=float, default=rc.selection_window_s,
                   help="fleet: server selection window, wall seconds")
    p.add_argument("--reporting-deadline", type=float, default=rc.reporting_deadline_s,
                   help="fleet: server reporting deadline, wall seconds")
    p.add_argument("--batch-size", type=int, default=default_of(CentralConfig, "batch_size"),
                   help="central: batch size")
    p.add_argument("--central-optimizer", choices=OPTIMIZERS,
                   default=default_of(CentralConfig, "optimizer"),
                   help="central: the phones' plain SGD, or Adam (default --lr 0.01)")
    p.add_argument("--lr", type=float, default=None, help="client/central SGD learning rate")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap on SGD steps (central: in total; federated: per client)")
    p.add_argument("--seed", type=int, default=default_of(fleet, "seed"))
    p.add_argument("--schedule", type=Path, default=None,
                   help="tff: train the clients of each round of this federated report "
                        "(`--json` output, e.g. of --engine fleet) instead of sampling")
    p.add_argument("--faults", default=None, metavar="KIND=RATE,...",
                   help="fleet: phones misbehave on purpose, per task (e.g. boost=0.05; "
                        "see `fedkb fleet --help`)")
    add_compression_flags(p, default_of(CompressionConfig, "uplink"))
    add_secagg_flags(p)
    p.add_argument("--json", action="store_true")
    add_dp_arguments(p)
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    if args.schedule is not None and args.engine != "tff":
        raise UserError("--schedule is for --engine tff (it replays an earlier run's clients)")
    if args.faults is not None and args.engine != "fleet":
        raise UserError("--faults is for --engine fleet (its phones misbehave, not TFF's)")
    from fedkb.simulation.fleet_run import TrainingStalled

    try:
        report = _run(args)
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
    if report.privacy is not None:
        from fedkb.simulation.dp_flags import epsilon_text

        print(epsilon_text(report.privacy))
    return 0
