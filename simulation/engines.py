"""Each way to train, same data, same metric, same report: the engines of `fedkb simulate`.

Every engine trains on the training users of a prepared dataset and reports top-1/top-3
recall on the held-out users (users that never trained), in the one schema of
:class:`fedkb.metrics.EngineReport`. Each is a public function of typed arguments (the
command line maps its flags to them in :mod:`fedkb.simulation.cli`) and imports its heavy
dependencies itself, so choosing the n-gram never loads TensorFlow.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkb.errors import UserError
from fedkb.metrics import EngineReport
from fedkb.server.config import ClientConfig, StrategyConfig
from fedkb.simulation.fleet_config import FLEET_ROUND, FleetRunConfig, default_of


def open_dataset(path: Path):
    """The prepared dataset at ``path`` (a :class:`UserError` if there is none)."""
    from fedkb.datasets.store import Dataset

    try:
        return Dataset.open(path)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def preset_config(name: str):
    """The model preset ``name`` (a :class:`UserError` if there is none)."""
    from fedkb.model.config import get_preset

    try:
        return get_preset(name)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None


def central_lr(preset: str, optimizer: str) -> float:
    """Central training's learning rate when none is given: Adam's, or the preset's SGD."""
    from fedkb.model.central import ADAM_LR

    return ADAM_LR if optimizer == "adam" else preset_config(preset).learning_rate


def keyboard_figures(ds, model_cfg=None, weights=None, ngram=None) -> dict[str, Any]:
    """Recall by frequency bucket and keystroke savings (:mod:`fedkb.keyboard`) on the
    held-out users: of the Keras model ``model_cfg`` with ``weights``, or of ``ngram``."""
    from fedkb.datasets.store import clip_to_vocab
    from fedkb.keyboard import Completion, windows_counts

    windows = ds.all_windows("heldout", "eval")
    if ngram is not None:
        kb = windows_counts(Completion(ds.vocab.words), ngram.score_batches(windows))
        return kb.figures()
    from fedkb.model.central import keyboard_keras
    from fedkb.model.keras_model import build_model

    words = ds.vocab.words[: model_cfg.vocab_size]
    kb = keyboard_keras(build_model(model_cfg, weights=weights),
                        clip_to_vocab(windows, model_cfg.vocab_size), Completion(words))
    return kb.figures()


def run_ngram(data: Path) -> EngineReport:
    """Interpolated Kneser-Ney trigrams on the training users' windows."""
    from fedkb.model.ngram import KneserNeyTrigram

    ds = open_dataset(data)
    t0 = time.perf_counter()
    model = KneserNeyTrigram(len(ds.vocab)).fit(ds.all_windows("train", "train"))
    counts = model.evaluate(ds.all_windows("heldout", "eval"))
    return EngineReport(
        engine="ngram", data=str(data),
        heldout={**EngineReport.heldout_figures(counts, len(ds.heldout_users)),
                 **keyboard_figures(ds, ngram=model)},
        wall_s=round(time.perf_counter() - t0, 3), config={"order": 3, "smoothing": "ikn"})


def run_central(data: Path, preset: str, central: Any, progress: bool = False,
                weights_out: list | None = None) -> EngineReport:
    """The same Keras model trained on the pooled training users (the upper reference).

    ``central`` is a :class:`fedkb.model.central.CentralConfig`; ``progress``: a bar;
    ``weights_out``: a list that receives the trained weights.
    """
    from fedkb.model.central import train_central
    from fedkb.simulation.progress import step_bar

    ds = open_dataset(data)
    model_cfg = preset_config(preset).fit_to_data(len(ds.vocab), ds.seq_len)
    t0 = time.perf_counter()
    res = train_central(ds, model_cfg, central, progress=step_bar() if progress else None)
    if weights_out is not None:
        weights_out.extend(res.weights)
    return EngineReport(
        engine="central", data=str(data),
        heldout={**EngineReport.heldout_figures(res.counts, len(ds.heldout_users), res.loss),
                 **keyboard_figures(ds, model_cfg, res.weights)},
        wall_s=round(time.perf_counter() - t0, 3),
        config={"preset": model_cfg.name, "steps": res.steps,
                **dataclasses.asdict(central)})


@dataclass(frozen=True)
class TffRunConfig:
    """A TensorFlow Federated run: the fleet's knobs, for TFF's weighted FedAvg.

    Attributes:
        rounds, clients_per_round: clients sampled with ``seed`` per round (or, with
            ``schedule``, those of each round of an earlier run's ``--json`` report).
        lr, epochs, max_steps: the clients' SGD (``max_steps`` None: no cap).
        grad_clip: each client step's gradient clipped to this L2 norm (None: not), as
            the phones' LiteRT ``train`` signature does.
        strategy: the fleet server's optimizer; ``decay_rounds`` > 0 decays its lr over
            the run's rounds (a replayed run's planned rounds with ``schedule``).
    """

    data: Path
    preset: str = default_of(FleetRunConfig, "preset")
    rounds: int = FLEET_ROUND.max_rounds or 0
    clients_per_round: int = FLEET_ROUND.report_goal
    lr: float = default_of(ClientConfig, "lr")
    epochs: int = default_of(ClientConfig, "epochs")
    max_steps: int | None = None
    grad_clip: float | None = default_of(ClientConfig, "grad_clip")
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    seed: int = 0
    schedule: Path | None = None


def run_tff(cfg: TffRunConfig) -> EngineReport:
    """TensorFlow Federated's weighted FedAvg (in a reaped child process group).

    Clients are sampled with ``cfg.seed`` (:func:`federated_rounds`), or are those of each
    round of an earlier run (:func:`replay_schedule`).
    """
    import tempfile

    from fedkb.codec import decode_arrays, encode_arrays
    from fedkb.datasets.store import clip_to_vocab
    from fedkb.model.central import evaluate_keras
    from fedkb.model.keras_model import build_model
    from fedkb.model.weights import initial_weights
    from fedkb.simulation.schedule import federated_rounds, replay_schedule
    from fedkb.simulation.tff_engine import run_tff_isolated

    ds = open_dataset(cfg.data)
    model_cfg = preset_config(cfg.preset).fit_to_data(len(ds.vocab), ds.seq_len)
    sc = cfg.strategy
    if cfg.schedule is not None:
        rounds, planned = replay_schedule(cfg.schedule, ds, {
            "lr": cfg.lr, "server_lr": sc.server_lr, "epochs": cfg.epochs,
            "strategy": sc.name, "clip_norm": sc.clip_norm, "lr_decay": sc.decay_rounds > 0,
            "grad_clip": cfg.grad_clip, "weighting": "examples"})
    else:
        rounds = federated_rounds(ds.train_users, cfg.rounds, cfg.clients_per_round, cfg.seed)
        planned = len(rounds)
    if sc.decay_rounds > 0:
        sc = sc.replace(decay_rounds=planned)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedkb-tff-") as tmp:
        work = Path(tmp)
        (work / "w0.bin").write_bytes(encode_arrays(initial_weights(model_cfg)))
        out = run_tff_isolated({
            "data": str(cfg.data), "model": model_cfg.to_dict(),
            "weights": str(work / "w0.bin"), "rounds": rounds, "epochs": cfg.epochs,
            "max_steps": cfg.max_steps, "client_lr": cfg.lr, "server_lr": sc.server_lr,
            "client_grad_clip": cfg.grad_clip,
            "strategy": tff_strategy(sc, planned), "weights_out": str(work / "final.bin")},
            work)
        final = decode_arrays((work / "final.bin").read_bytes())
    counts, loss = evaluate_keras(build_model(model_cfg, weights=final),
                                  clip_to_vocab(ds.all_windows("heldout", "eval"),
                                                model_cfg.vocab_size))
    return EngineReport(
        engine="tff", data=str(cfg.data),
        heldout={**EngineReport.heldout_figures(counts, len(ds.heldout_users), loss),
                 **keyboard_figures(ds, model_cfg, final)},
        wall_s=round(time.perf_counter() - t0, 3),
        config={"preset": model_cfg.name, "rounds": len(rounds),
                "clients_per_round": cfg.clients_per_round, "epochs": cfg.epochs,
                "schedule": None if cfg.schedule is None else str(cfg.schedule),
                "max_steps": cfg.max_steps, "client_lr": cfg.lr, "server_lr": sc.server_lr,
                "grad_clip": cfg.grad_clip, "strategy": sc.name, "clip_norm": sc.clip_norm,
                "lr_decay": sc.decay_rounds > 0, "seed": cfg.seed,
                "tff_setup_s": round(out["setup_s"], 3), "tff_train_s": round(out["train_s"], 3)},
        rounds=out["rounds"])


def tff_strategy(sc: StrategyConfig, rounds: int) -> dict[str, Any]:
    """The fleet server's strategy ``sc``, spelt out for the TFF child: each round's server
    lr from the server's schedule (round r makes model version r) for ``rounds`` rounds."""
    from fedkb.server.strategy import scheduled_lr

    return {"name": sc.name,
            "lrs": [scheduled_lr(sc.server_lr, sc.decay_rounds, v) for v in range(1, rounds + 1)],
            "momentum": sc.momentum, "nesterov": sc.nesterov, "beta1": sc.beta1,
            "beta2": sc.beta2, "tau": sc.tau, "clip_norm": sc.clip_norm}


def run_fleet(cfg: FleetRunConfig, progress: bool = False) -> EngineReport:
    """Our stack: `fedkb server` (its own process) + the emulated fleet."""
    from fedkb.simulation.fleet_engine import run_fleet_engine
    from fedkb.simulation.progress import round_bar

    open_dataset(cfg.data)
    report, _run, _ = run_fleet_engine(cfg, on_progress=round_bar(cfg.rounds) if progress
                                       else None)
    return report
