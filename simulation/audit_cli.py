"""``fedkb privacy audit``: insert canaries, train with an engine, report each exposure.

::

    fedkb privacy audit --data DIR [--canaries K] [--repeats R] [--candidates N]
                        [--engine fleet|central] [--preset P] [--rounds T]
                        [--clients-per-round M] [--devices D] [--workdir W]
                        [--dp fedavg|ftrl --dp-noise Z --dp-clip C ...] [--json]

``fleet`` (default) trains as `fedkb demo` does (`fedkb server` + one emulated phone
per user, the demo's round, client and server recipe) for ``--rounds`` rounds;
``central`` trains the same Keras model on the pooled users (fast, no user-level
privacy). A fleet run that stalls (rounds abandoned for want of eligible phones) is
still audited: the model it reached, with ``stalled`` and ``rounds_committed`` saying
so; each inserted canary's ``user_reports`` counts the committed rounds its user's
report went into (a canary whose phone never trained tests nothing, so on the fleet the
canaries go to the users whose phones are eligible longest: :func:`_training_users`).
``--dp ...`` (the flags of `fedkb simulate`) trains the fleet with DP; the report's
``privacy`` is then the run's (epsilon, delta), beside the exposures it is meant to
bound. The method and its definition of exposure: :mod:`fedkb.simulation.audit`.
The subcommand sits beside `fedkb privacy plan` (:mod:`fedkb.server.privacy.plan_cli`);
it lives here because it trains, which only the simulation layer may.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedkb.errors import UserError
from fedkb.server.config import PrivacyConfig
from fedkb.simulation.audit import CanaryConfig


@dataclass(frozen=True)
class AuditConfig:
    """One audit: the data, the canaries, and how to train."""

    data: Path
    workdir: Path
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    engine: str = "fleet"
    preset: str = "small"
    rounds: int = 50
    clients_per_round: int = 20
    devices: int | None = None  # None: one phone per user
    workers: int = 2
    central_epochs: float = 1.0
    central_optimizer: str = "adam"
    central_lr: float | None = None
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)  # --dp: the fleet's


def run_audit(cfg: AuditConfig) -> dict[str, Any]:
    """Insert the canaries, train, score: the JSON document of the command."""
    from fedkb.model.keras_model import build_model
    from fedkb.simulation.audit import (
        config_json,
        insert_canaries,
        make_canaries,
        score_canaries,
        summary,
    )
    from fedkb.simulation.engines import open_dataset, preset_config

    if cfg.privacy.enabled and cfg.engine != "fleet":
        raise UserError("--dp trains on the fleet engine (phones clip, the server noises)")
    src = open_dataset(cfg.data)
    model_cfg = preset_config(cfg.preset).fit_to_data(len(src.vocab), src.seq_len)
    users = _training_users(cfg, src)
    try:
        prefix, canaries = make_canaries(src, model_cfg.vocab_size, cfg.canary, users)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    data = insert_canaries(cfg.data, cfg.workdir / "data", prefix, canaries,
                           cfg.canary.repeats)
    t0 = time.perf_counter()
    weights, report = (_train_central if cfg.engine == "central" else _train_fleet)(cfg, data)
    train_s = time.perf_counter() - t0
    model = build_model(model_cfg, weights=weights)
    rows = score_canaries(model, prefix, canaries, model_cfg.vocab_size, src.seq_len,
                          cfg.canary)
    if "reports" in report:  # the fleet: how often the canary's phone reported
        for r in rows:
            r["user_reports"] = report["reports"].get(r["user"], 0) if r["inserted"] else None
    return {"engine": cfg.engine, "preset": model_cfg.name, "data": str(cfg.data),
            "canary": config_json(cfg.canary), "canaries": rows, "summary": summary(rows),
            "privacy": report.get("privacy"), "train_s": round(train_s, 1),
            "heldout": report.get("heldout"),
            "train_config": report.get("config"), "stalled": report.get("stalled"),
            "rounds_committed": report.get("rounds_committed")}


# a training round of the demo's recipe takes ~5-6 wall seconds on a 2-core machine
# (bench/README.md, 20x20 fleet): with the speedup, the simulated span canary phones are
# ranked over (the ranking barely moves between half and four times that span)
ROUND_WALL_S = 5.5


def _training_users(cfg: AuditConfig, ds: Any) -> list[str]:
    """The users the canaries go to: any training user (central); on the fleet the
    ``canaries`` users whose phones will most likely train: eligible (charging, Wi-Fi,
    idle, battery not low) the longest over the run's simulated span, from the run's own
    profiles and traces (ties in a seeded order). An eligible phone checks in all the
    time, so it is picked more: over a 20x20 run 13-19 of the top 20 trained against ~30%
    of all users (five seeds, bench/README.md). A canary whose phone never trains tests
    nothing."""
    if cfg.engine == "central":
        return ds.train_users
    import numpy as np

    from fedkb.device_runtime.fleet import FleetConfig, fleet_profiles
    from fedkb.device_runtime.worker import BATTERY_NOT_LOW

    run = _run_config(cfg, cfg.data, cfg.workdir)  # the run's seed, start hour, speedup
    fc = FleetConfig(server="", data=cfg.data, devices=run.devices, speedup=run.speedup,
                     start_hour=run.start_hour, seed=run.seed)
    start = run.start_hour * 3600.0
    end = start + cfg.rounds * ROUND_WALL_S * run.speedup
    eligible: dict[str, float] = {}
    for p in fleet_profiles(fc, range(run.devices)):
        if p.role == "train":
            e = p.trace.eligible_seconds(start, end, BATTERY_NOT_LOW)
            eligible[p.user] = max(e, eligible.get(p.user, 0.0))
    order = [sorted(eligible)[i] for i in
             np.random.default_rng(cfg.canary.seed).permutation(len(eligible))]
    return sorted(order, key=lambda u: -eligible[u])[:cfg.canary.canaries]


def _run_config(cfg: AuditConfig, data: Path, artifact: Path) -> Any:
    """The fleet run the audit trains with: `fedkb demo`'s (:func:`demo_config`)."""
    from fedkb.server.config import DP_FTRL_STRATEGY
    from fedkb.simulation.demo import DEMO_CLIENT, DEMO_STRATEGY, demo_config
    from fedkb.simulation.engines import open_dataset

    devices = cfg.devices or len(open_dataset(data).users)
    strategy = DP_FTRL_STRATEGY if cfg.privacy.mechanism == "ftrl" else DEMO_STRATEGY.name
    return demo_config(data, artifact, devices, cfg.rounds, cfg.clients_per_round,
                       cfg.workers, cfg.preset, strategy, DEMO_CLIENT.lr,
                       DEMO_STRATEGY.server_lr, cfg.privacy)


def _train_central(cfg: AuditConfig, data: Path) -> tuple[list[Any], dict[str, Any]]:
    from fedkb.metrics import EngineReport
    from fedkb.model.central import CentralConfig, train_central
    from fedkb.simulation.engines import central_lr, open_dataset, preset_config

    ds = open_dataset(data)
    model_cfg = preset_config(cfg.preset).fit_to_data(len(ds.vocab), ds.seq_len)
    lr = cfg.central_lr if cfg.central_lr is not None else \
        central_lr(cfg.preset, cfg.central_optimizer)
    central = CentralConfig(epochs=cfg.central_epochs, learning_rate=lr,
                            optimizer=cfg.central_optimizer, seed=cfg.canary.seed)
    res = train_central(ds, model_cfg, central)
    heldout = EngineReport.heldout_figures(res.counts, len(ds.heldout_users), res.loss)
    return res.weights, {"config": {"epochs": cfg.central_epochs, "lr": lr,
                                    "optimizer": cfg.central_optimizer, "steps": res.steps},
                         "heldout": heldout}


def _train_fleet(cfg: AuditConfig, data: Path) -> tuple[list[Any], dict[str, Any]]:
    import numpy as np
    from safetensors.numpy import load_file

    from fedkb.artifact import Artifact
    from fedkb.simulation.fleet_engine import ensure_artifact, run_fleet_engine
    from fedkb.simulation.fleet_run import TrainingStalled

    artifact = ensure_artifact(data, cfg.preset, cfg.workdir / f"model-{cfg.preset}")
    run_cfg = _run_config(cfg, data, artifact)
    try:
        doc = run_fleet_engine(run_cfg, workdir=cfg.workdir / "federated")[0].to_dict()
        stalled = None
    except TrainingStalled as exc:  # the model it reached is still a model: audit it, said so
        doc, stalled = exc.report, str(exc)
    latest = cfg.workdir / "federated" / "server-state" / "checkpoints" / "latest.safetensors"
    tensors = load_file(str(latest))
    weights = [np.asarray(tensors[s.name]) for s in Artifact.load(artifact).specs]
    reports: dict[str, int] = {}  # committed rounds each user's report went into
    for row in doc["rounds"]:
        for user, _seed in row.get("participants", []):
            reports[user] = reports.get(user, 0) + 1
    return weights, {"heldout": doc["heldout"], "config": doc["config"], "reports": reports,
                     "stalled": stalled, "rounds_committed": len(doc["rounds"]),
                     "privacy": doc.get("privacy")}


def register(sub: argparse._SubParsersAction) -> None:
    from fedkb.server.privacy.plan_cli import privacy_actions
    from fedkb.simulation.dp_flags import add_dp_arguments

    p = privacy_actions(sub).add_parser(
        "audit", help="memorisation: canaries inserted, trained on, their exposure",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = AuditConfig(data=Path(), workdir=Path())
    c = CanaryConfig()
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset directory")
    p.add_argument("--workdir", type=Path, default=Path("runs/audit"),
                   help="where the data with canaries, the model and the run go")
    p.add_argument("--canaries", type=int, default=c.canaries,
                   help="canaries inserted (as many controls are scored, not inserted)")
    p.add_argument("--repeats", type=int, default=c.repeats,
                   help="times its user typed each canary")
    p.add_argument("--length", type=int, default=c.length, help="random words per canary")
    p.add_argument("--candidates", type=int, default=c.candidates,
                   help="random sequences each canary is ranked among")
    p.add_argument("--seed", type=int, default=c.seed)
    p.add_argument("--engine", choices=("fleet", "central"), default=d.engine)
    p.add_argument("--preset", default=d.preset)
    p.add_argument("--rounds", type=int, default=d.rounds, help="fleet: training rounds")
    p.add_argument("--clients-per-round", type=int, default=d.clients_per_round)
    p.add_argument("--devices", type=int, default=None,
                   help="fleet: emulated phones (default one per user)")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--central-epochs", type=float, default=d.central_epochs)
    p.add_argument("--central-lr", type=float, default=None)
    add_dp_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedkb.simulation.dp_flags import privacy_config

    try:
        canary = CanaryConfig(canaries=args.canaries, repeats=args.repeats,
                              length=args.length, candidates=args.candidates, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg = AuditConfig(data=args.data, workdir=args.workdir, canary=canary,
                      engine=args.engine, preset=args.preset, rounds=args.rounds,
                      clients_per_round=args.clients_per_round, devices=args.devices,
                      workers=args.workers, central_epochs=args.central_epochs,
                      central_lr=args.central_lr, privacy=privacy_config(args))
    doc = run_audit(cfg)
    print(json.dumps(doc, indent=2) if args.json else table(doc))
    return 0


def table(doc: dict[str, Any]) -> str:
    """The canaries and their exposures as a plain-text table."""
    lines = [f"canary exposure ({doc['engine']}, {doc['preset']}, no DP; of at most "
             f"{doc['canaries'][0]['max_exposure']:.2f} bits)",
             f"{'exposure':>8}  {'rank':>5}  inserted  text"]
    for r in doc["canaries"]:
        seen = "no" if not r["inserted"] else "yes" if r.get("user_reports") is None else \
            f"yes, {r['user_reports']} reports"
        lines.append(f"{r['exposure']:8.2f}  {r['rank']:5d}  {seen:8}  {r['text']}")
    if doc.get("stalled"):
        lines.append(f"training stalled after {doc['rounds_committed']} committed rounds: "
                     f"{doc['stalled']}")
    s = doc["summary"]
    lines.append(f"mean exposure: inserted {s['inserted'].get('exposure_mean')}, "
                 f"controls {s['controls'].get('exposure_mean')}")
    return "\n".join(lines)
