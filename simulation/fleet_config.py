"""What one fleet run is: the server's own frozen configs plus the fleet's knobs.

A :class:`FleetRunConfig` holds the server's :class:`~fedkb.server.config.RoundConfig`,
:class:`~fedkb.server.config.ClientConfig` and :class:`~fedkb.server.config.StrategyConfig`
as they are, next to what only the emulation has (phones, workers, simulated time). The
fleet engine's defaults for a round are one value, :data:`FLEET_ROUND`: rounds short
enough for a laptop (a few wall seconds each), since emulated phones share its cores.

:func:`server_config` derives the few settings that depend on the fleet (how long phones
rest between tasks, how many must register, the evaluation goal of a small fleet, the
"come back later" delay in the server's clock, how many may register a minute from the
one machine the fleet runs on) and :func:`write_server_config` writes the
server's config file as the :func:`dataclasses.asdict` of the three objects, which
:func:`fedkb.server.config.load_config` reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkb.datasets.store import Dataset
from fedkb.device_runtime.faults import FaultSpec
from fedkb.device_runtime.ray_options import RayOptions
from fedkb.server.config import (
    ClientConfig,
    CompressionConfig,
    ConfigError,
    PrivacyConfig,
    RoundConfig,
    SecAggConfig,
    ServerConfig,
    StrategyConfig,
    check_secagg,
)

INELIGIBLE_RETRY_PHONE_S = 300.0  # simulated seconds a phone the server refused waits

# The fleet engine's round: a 5 s selection window and a 15 s reporting deadline (wall
# seconds), the next round selecting while one trains, phones selected ahead asking back
# every 0.25 s, no federated evaluation unless asked, 20 rounds of 20 reports.
FLEET_ROUND = RoundConfig(report_goal=20, selection_window_s=5.0, reporting_deadline_s=15.0,
                          pipeline=True, claim_poll_s=0.25, eval_every=0, max_rounds=20)


@dataclass(frozen=True)
class FleetRunConfig:
    """One run of `fedkb server` + the emulated fleet.

    Attributes:
        data: a prepared dataset directory.
        preset: the model preset to export (or reuse) for it.
        devices, workers: emulated phones, and the worker processes running them.
        speedup, start_hour: simulated time (see :mod:`fedkb.device_runtime.clock`).
        claim_hold_s: wall seconds a phone selected ahead of its round's model keeps one
            check-in open (0: it asks again every ``round.claim_poll_s``).
        seed: which user each phone holds, the phones' traces and the server's choices.
        artifact: export here once and reuse it (None: the run's workdir).
        rejoin_after_rounds: the server's ``round.rejoin_after_rounds`` (None: derived,
            see :func:`rejoin_rounds`).
        round: the server's round protocol; ``max_rounds`` is the run's length (required).
            ``rejoin_after_rounds``, ``min_registered`` and ``ineligible_retry_s`` are
            derived for the fleet and ``eval_goal`` is capped (see :func:`server_round`).
        client: what each training task asks of a phone.
        strategy: the server optimizer; ``decay_rounds`` as the server takes it (the run's
            rounds for a decay over the whole run).
        faults: phones that misbehave on purpose (:mod:`fedkb.device_runtime.faults`);
            None: every phone is honest.
        privacy: the server's ``[privacy]`` table (off unless ``mechanism``); its
            ``population`` defaults to the fleet's training phones.
        compression: the server's ``[compression]`` table (uplink encoding, rotation,
            downlink dtype), which every training task's plan then asks for.
        ray: run the phones on a Ray cluster (:mod:`fedkb.device_runtime.ray_fleet`)
            instead of ``workers`` processes; None: never import Ray.
        secagg: the server's ``[secagg]`` table (secure aggregation of training rounds);
            refused here, before anything starts, when the server would refuse it.
    """

    data: Path
    preset: str = "small"
    devices: int = 300
    workers: int = 2
    speedup: float = 60.0
    start_hour: float = 22.0
    claim_hold_s: float = 5.0
    seed: int = 0
    artifact: Path | None = None
    rejoin_after_rounds: int | None = None
    round: RoundConfig = FLEET_ROUND
    client: ClientConfig = field(default_factory=ClientConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    faults: FaultSpec | None = None
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    ray: RayOptions | None = None
    secagg: SecAggConfig = field(default_factory=SecAggConfig)

    def __post_init__(self) -> None:
        if self.round.max_rounds is None:
            raise ConfigError("a fleet run needs round.max_rounds (its number of rounds)")
        check_secagg(self.secagg, self.round, self.strategy, self.privacy, self.compression)

    @property
    def rounds(self) -> int:
        """Training rounds the run commits (``round.max_rounds``)."""
        assert self.round.max_rounds is not None
        return self.round.max_rounds


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (for command-line defaults)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def seats(rc: RoundConfig) -> int:
    """Devices a training round of ``rc`` selects: its goal, over-selected."""
    return max(1, math.ceil(rc.report_goal * rc.overselect))


def rejoin_rounds(cfg: FleetRunConfig, train_phones: int) -> int:
    """The server's ``rejoin_after_rounds`` for this run (see :class:`RoundConfig`).

    Unless set, a phone rests for a quarter of the rounds it would take to give every
    training phone one task. Only the phones eligible right now can be picked, and at
    night that is a minority of them, staying so for hours; resting longer than the
    eligible phones can cover starves the rounds.
    """
    if cfg.rejoin_after_rounds is not None:
        return cfg.rejoin_after_rounds
    return max(0, train_phones // seats(cfg.round) // 4)


def server_round(cfg: FleetRunConfig, train_phones: int,
                 heldout_phones: int | None = None) -> RoundConfig:
    """``cfg.round`` with the settings that depend on the fleet derived."""
    rc = cfg.round
    # A small fleet has few held-out phones, ~40% of them eligible at a time: ask an
    # evaluation round for no more than a quarter of them, or it can never fill.
    eval_goal = rc.eval_goal if heldout_phones is None else \
        max(1, min(rc.eval_goal, heldout_phones // 4))
    return rc.replace(
        eval_goal=eval_goal, rejoin_after_rounds=rejoin_rounds(cfg, train_phones),
        # round 1 waits for the fleet to register, not just the server to start; a phone
        # registers once eligible (~40% at a time): ask for no more than a quarter of the
        # training phones, or a small fleet would never start
        min_registered=min(train_phones // 4, seats(rc)),
        # The server counts wall seconds; phones live `speedup` times faster. Its "come
        # back in 5 minutes" to a phone with a low battery is meant in the phone's time
        # (300 wall seconds would be 5 simulated hours at 60x).
        ineligible_retry_s=round(max(0.05, INELIGIBLE_RETRY_PHONE_S / cfg.speedup), 3))


def registrations_per_minute(cfg: FleetRunConfig) -> int:
    """The server's registration limits for this run (per address and in total): every
    phone of the fleet registers from this one machine within its first minute, and once
    more after a lost token, so the fleet gets twice its size a minute (and never less
    than the server's defaults)."""
    defaults = ServerConfig()
    floor = max(defaults.registrations_per_minute_per_address or 0,
                defaults.registrations_per_minute or 0)
    return max(floor, 2 * cfg.devices)


def server_config(cfg: FleetRunConfig, train_phones: int,
                  heldout_phones: int | None = None) -> dict[str, Any]:
    """The server's config file for this run: the registration limits the fleet needs
    (:func:`registrations_per_minute`) and its ``round``, ``client``, ``strategy`` and
    ``compression`` tables, each the :func:`dataclasses.asdict` of the server's own
    config object."""
    limit = registrations_per_minute(cfg)
    doc = {"registrations_per_minute_per_address": limit,
           "registrations_per_minute": limit,
           "round": dataclasses.asdict(server_round(cfg, train_phones, heldout_phones)),
           "client": dataclasses.asdict(cfg.client),
           "strategy": dataclasses.asdict(cfg.strategy),
           "compression": dataclasses.asdict(cfg.compression)}
    if cfg.secagg.enabled:
        doc["secagg"] = {k: v for k, v in dataclasses.asdict(cfg.secagg).items()
                         if v is not None}
    if cfg.privacy.enabled:  # the cohorts are drawn from the fleet's training phones
        privacy = cfg.privacy if cfg.privacy.population is not None else \
            cfg.privacy.replace(population=train_phones)
        doc["privacy"] = {k: v for k, v in dataclasses.asdict(privacy).items()
                          if v is not None}
    return doc


def write_server_config(cfg: FleetRunConfig, path: Path, train_phones: int,
                        heldout_phones: int | None = None) -> Path:
    """Write :func:`server_config` as JSON to ``path`` (what `fedkb server --config` reads)."""
    doc = server_config(cfg, train_phones, heldout_phones)
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def train_phones(ds: Dataset, cfg: FleetRunConfig) -> int:
    """How many of the fleet's phones hold a training user's shard (the rest evaluate)."""
    from fedkb.device_runtime.fleet import FleetConfig, phone_users

    fc = FleetConfig("http://unused", cfg.data, cfg.devices, seed=cfg.seed)
    return sum(1 for _, role in phone_users(fc, ds) if role == "train")


def report_config(cfg: FleetRunConfig) -> dict[str, Any]:
    """The ``config`` of the run's report: the knobs `--engine tff` shares, by the names
    its reports use (`fedkb simulate --engine tff --schedule` checks them), and the rest."""
    rc, cc, sc = cfg.round, cfg.client, cfg.strategy
    return {"data": str(cfg.data), "preset": cfg.preset, "rounds": cfg.rounds,
            "clients_per_round": rc.report_goal, "epochs": cc.epochs,
            "max_steps": cc.max_steps, "lr": cc.lr, "server_lr": sc.server_lr,
            "strategy": sc.name, "devices": cfg.devices, "workers": cfg.workers,
            "speedup": cfg.speedup, "start_hour": cfg.start_hour,
            "selection_window_s": rc.selection_window_s,
            "reporting_deadline_s": rc.reporting_deadline_s, "pipeline": rc.pipeline,
            "claim_poll_s": rc.claim_poll_s, "claim_hold_s": cfg.claim_hold_s,
            "overselect": rc.overselect, "pace_margin": rc.pace_margin,
            "clip_norm": sc.clip_norm, "lr_decay": sc.decay_rounds > 0,
            "eval_every": rc.eval_every, "eval_goal": rc.eval_goal, "seed": cfg.seed,
            "artifact": None if cfg.artifact is None else str(cfg.artifact),
            "rejoin_after_rounds": cfg.rejoin_after_rounds,
            "faults": cfg.faults.text() if cfg.faults is not None else None,
            "dp": cfg.privacy.mechanism,
            "uplink": cfg.compression.uplink, "rotate": cfg.compression.rotate,
            "downlink": cfg.compression.downlink,
            "quantize_min": cfg.compression.min_elements, "weighting": sc.weighting,
            "grad_clip": cc.grad_clip,
            "ray": cfg.ray.address if cfg.ray is not None else None}
