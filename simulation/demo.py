"""`fedkb demo`: the whole loop on the bundled Shakespeare corpus, end to end.

``--corpus FILE.jsonl|DIR`` runs it on a user's own corpus, with the vocabulary and the
fleet recipe fitted to it (:mod:`fedkb.simulation.fit`, each choice printed and kept in
``report.json``'s ``recipe``); ``--init-from`` warm-starts federated training
(:mod:`fedkb.simulation.init_from`; the demo keeps its central model as an artifact in
``WORKDIR/model-central`` for that); ``--json`` prints the report on stdout.

1. prepare the corpus into per-user shards (one user = one role in one play);
2. export the `small` model as a LiteRT training artifact;
3. train the baselines on the same training users: Kneser-Ney trigrams and central
   training of the same model;
4. start `fedkb server` (its own process) and an emulated fleet of phones that train
   with LiteRT only when charging, on Wi-Fi and idle, for R rounds, with live progress;
5. evaluate: federated evaluation rounds on held-out phones during training, and the
   final model on every held-out user with the baselines' metric;
6. report: a summary table, PNG learning curves and a JSON report; then leave the server
   up and print the keyboard page's URL (``--no-serve`` stops it and exits).

Ctrl-C at any point stops everything it started (server, fleet workers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from fedkb.device_runtime.ray_options import RayOptions
from fedkb.server.config import (
    DP_FTRL_STRATEGY,
    ClientConfig,
    CompressionConfig,
    PrivacyConfig,
    StrategyConfig,
)
from fedkb.simulation.fleet_config import FLEET_ROUND, FleetRunConfig, default_of

# The demo's recipe. Emulated phones share this machine's cores, so rounds are made short:
# the next round selects its phones while one trains (pipelining; they start from the
# model it commits), the server steers 4x the check-ins a 3 s selection window needs, and
# there is no over-selection (with it the late phones are always the largest shards, and
# held-out recall falls; a round still ends as soon as every phone answered, aborts
# included). Each phone's delta is clipped to norm 4 (a few of them bind): with client lr
# 1.0 and server momentum one outsized update otherwise derails training for rounds. The
# server lr decays (cosine, to a tenth by the last round, see demo_config): without it the
# final model is one noisy step from a better one.
DEMO_ROUND = FLEET_ROUND.replace(max_rounds=200, selection_window_s=3.0, pace_margin=4.0,
                                 overselect=1.0, reporting_deadline_s=10.0, pipeline=True)
DEMO_CLIENT = ClientConfig(lr=1.0)
DEMO_STRATEGY = StrategyConfig(name="fedavgm", server_lr=0.7, clip_norm=4.0)
DEMO_CENTRAL_OPTIMIZER = "adam"  # a server-side trainer's choice for the baseline
# The demo's uplink encoding, chosen from the measurements in bench/README.md
# ("Communication efficiency"): 8-bit stochastic quantization sends 1.40 MB instead of
# 5.42 MB per update (3.9x); its error on real phone deltas (0.4-1.4%) is far below the
# seeds' spread, its 20x20 fleet runs' recall is float32's within that spread, and it
# costs less CPU per run than float32 (encode ~7 ms a phone; the server reads 3.9x fewer
# bytes). q4 (7.5x) meets the byte goal but one of its seeds fell to 5.4% top-1 (float32's
# lowest: 8.5%); q4 with the rotation halves its error but costs ~60 ms of CPU per
# update on the two ends, ~4 CPU minutes over the demo's 4,000 updates.
DEMO_COMPRESSION = CompressionConfig(uplink="q8")


def demo_config(data: Path, artifact: Path, devices: int, rounds: int,
                clients_per_round: int, workers: int, preset: str, strategy: str,
                lr: float, server_lr: float, privacy: PrivacyConfig | None = None,
                compression: CompressionConfig = DEMO_COMPRESSION,
                ray: RayOptions | None = None, fit=None) -> FleetRunConfig:
    """The fleet run of `fedkb demo`: :data:`DEMO_ROUND` and friends with the flags, a
    federated evaluation round every eighth of the run, the server lr decayed over it
    (not DP-FTRL's);
    ``privacy`` the server's ``[privacy]`` table (``--dp ...``); ``fit`` a
    :class:`fedkb.simulation.fit.RunFit` for a user's corpus (its rest period, reporting
    deadline and start hour; None: the demo's own)."""
    extra: dict[str, Any] = {}
    deadline = DEMO_ROUND.reporting_deadline_s
    if fit is not None:
        extra = {"rejoin_after_rounds": fit.rejoin_after_rounds, "start_hour": fit.start_hour}
        deadline = fit.reporting_deadline_s
    return FleetRunConfig(
        data=data, preset=preset, devices=devices, workers=workers, artifact=artifact, **extra,
        round=DEMO_ROUND.replace(max_rounds=rounds, report_goal=clients_per_round,
                                 reporting_deadline_s=deadline,
                                 eval_every=max(1, rounds // 8)),
        client=DEMO_CLIENT.replace(lr=lr),
        # DP-FTRL rescales the whole noisy sum: its server lr stays constant
        strategy=DEMO_STRATEGY.replace(name=strategy, server_lr=server_lr,
                                       decay_rounds=0 if strategy == DP_FTRL_STRATEGY
                                       else rounds),
        privacy=privacy or PrivacyConfig(), compression=compression, ray=ray)


def register(sub: argparse._SubParsersAction) -> None:
    from fedkb.model.central import OPTIMIZERS, CentralConfig
    from fedkb.simulation.budget import parse_budget
    from fedkb.simulation.cli import add_compression_flags, add_ray_flag, strategy_names

    p = sub.add_parser("demo", help="the whole loop on the bundled Shakespeare corpus "
                                    "(or your own: --corpus)")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                   help="where the demo writes its dataset, model and report")
    p.add_argument("--corpus", default="shakespeare",
                   help="'shakespeare', FILE.jsonl ({\"user\", \"text\"} per line) or a DIR "
                        "of per-user .txt files; a corpus of your own gets its vocabulary, "
                        "cohort, rest period, deadline, schedule, rounds and central epochs "
                        "fitted to it (printed, and in report.json)")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"federated training rounds (default {DEMO_ROUND.max_rounds}, or "
                        "fitted to --corpus)")
    p.add_argument("--clients-per-round", type=int, default=None,
                   help=f"report goal (default {DEMO_ROUND.report_goal}, or fitted)")
    p.add_argument("--devices", type=int, default=None,
                   help="emulated phones (default: one per user, 1,419 on Shakespeare)")
    p.add_argument("--workers", type=int, default=default_of(FleetRunConfig, "workers"),
                   help="fleet worker processes")
    add_ray_flag(p)
    p.add_argument("--central-epochs", type=float, default=None,
                   help=f"central training epochs (default "
                        f"{default_of(CentralConfig, 'epochs')}, or fitted)")
    p.add_argument("--init-from", type=Path, default=None, metavar="ARTIFACT_OR_CHECKPOINT",
                   help="start federated training from this model (an artifact such as a "
                        "demo's model-central/, a server state dir such as a demo's "
                        "federated/server-state, or one of its checkpoints), the "
                        "vocabulary mapped: shared words keep their rows")
    p.add_argument("--json", action="store_true",
                   help="print report.json on stdout (the progress goes to stderr)")
    p.add_argument("--central-optimizer", choices=tuple(reversed(OPTIMIZERS)),
                   default=DEMO_CENTRAL_OPTIMIZER,
                   help="central baseline: Adam at --central-lr (a server-side trainer's "
                        "choice), or the phones' plain SGD")
    p.add_argument("--central-lr", type=float, default=None,
                   help="central baseline learning rate (default: 0.01 for Adam, the best "
                        "of 0.002-0.02 in one epoch; the preset's 0.5 for SGD)")
    p.add_argument("--preset", default=default_of(FleetRunConfig, "preset"))
    p.add_argument("--strategy", default=DEMO_STRATEGY.name, choices=strategy_names(),
                   help="server optimizer (default: FedAvg with Nesterov momentum, as Gboard)")
    p.add_argument("--lr", type=float, default=DEMO_CLIENT.lr,
                   help="SGD learning rate on the phones")
    p.add_argument("--server-lr", type=float, default=DEMO_STRATEGY.server_lr,
                   help="server learning rate (momentum 0.9 multiplies it by ~10)")
    add_compression_flags(p, DEMO_COMPRESSION.uplink)
    from fedkb.simulation.cli import add_secagg_flags

    add_secagg_flags(p)
    p.add_argument("--no-serve", action="store_true", help="exit when done")
    p.add_argument("--budget", default="10m", type=parse_budget,
                   help="time budget of the whole demo (e.g. 10m, 600s; off: none): on a "
                        "slower machine the rounds and the central baseline are scaled to "
                        "fit, and the output says so (fedkb.simulation.budget)")
    p.add_argument("--budget-step-ms", type=float, default=None, metavar="MS",
                   help="size the budget for this 1-thread step time instead of the "
                        "measured one (to see what a slower machine would run)")
    from fedkb.simulation.dp_flags import add_dp_arguments

    add_dp_arguments(p)
    p.set_defaults(func=_demo)


def _step(i: int, text: str) -> float:
    print(f"[{i}/6] {text}", flush=True)
    return time.perf_counter()


def _done(t0: float, text: str = "") -> None:
    print(f"      done in {time.perf_counter() - t0:.1f}s {text}".rstrip(), flush=True)


def _demo(args: argparse.Namespace) -> int:
    if not args.json:
        return _run_demo(args)
    import contextlib
    import sys

    out = sys.stdout

    def emit(doc: dict[str, Any]) -> None:  # as soon as it exists (the server may stay up)
        out.write(json.dumps(doc, indent=2) + "\n")
        out.flush()

    with contextlib.redirect_stdout(sys.stderr):  # the progress; stdout is the report's
        return _run_demo(args, emit)


def _run_demo(args: argparse.Namespace, emit=None) -> int:
    from fedkb.datasets.prepare import PrepareConfig, prepare
    from fedkb.model.central import CentralConfig
    from fedkb.simulation.cli import compression_config, secagg_config
    from fedkb.simulation.engines import central_lr, run_central, run_ngram
    from fedkb.simulation.fleet_engine import ensure_artifact, run_fleet_engine
    from fedkb.simulation.progress import round_bar

    t_all = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    own = args.corpus != "shakespeare"

    t = _step(1, f"preparing the {'corpus ' + args.corpus if own else 'Shakespeare corpus'}"
                 f" -> {data}")
    choices: list = []
    prep = PrepareConfig(corpus=args.corpus, out=data)
    if own:
        from fedkb.simulation.fit import corpus_counts, fit_vocab

        choices.append(fit_vocab(corpus_counts(args.corpus)))
        prep = PrepareConfig(corpus=args.corpus, out=data, vocab_size=choices[0].value)
    res = prepare(prep)
    c = res.meta["counts"]
    _done(t, f"({c['train_users']} training users, {c['heldout_users']} held-out, "
             f"{c['tokens']:,} tokens)")
    fit = None
    if own:
        from fedkb.datasets.store import Dataset
        from fedkb.simulation.fit import fit_run, lines

        fit = fit_run(Dataset.open(data), devices=args.devices, workers=args.workers)
        choices += list(fit.choices)
        print("      fitted to this corpus (flags override):", flush=True)
        print("\n".join(lines(choices)), flush=True)
    rounds = _pick(args.rounds, fit and fit.rounds, DEMO_ROUND.max_rounds)
    cohort = _pick(args.clients_per_round, fit and fit.clients_per_round,
                   DEMO_ROUND.report_goal)
    epochs = _pick(args.central_epochs, fit and fit.central_epochs,
                   CentralConfig().epochs)

    t = _step(2, f"exporting the '{args.preset}' model as a LiteRT training artifact")
    artifact = ensure_artifact(data, args.preset, work / f"model-{args.preset}")
    meta = json.loads((artifact / "metadata.json").read_text())
    _done(t, f"({meta['num_params']:,} parameters, builtin ops only: {meta['builtin_only']})")
    plain_artifact, init_stats = artifact, None
    if args.init_from:
        from fedkb.simulation.init_from import init_artifact

        artifact, init_stats = init_artifact(artifact, args.init_from,
                                             work / f"model-{args.preset}-init")
        print(f"      federated training starts from {init_stats['source']}: "
              f"{init_stats['shared_words']:,} of {init_stats['words']:,} words shared "
              f"(their embedding rows copied; {init_stats['new_words']:,} new words keep "
              "their initial rows)", flush=True)
    central_steps, budget = None, None
    if args.budget:
        from fedkb.simulation.budget import fit_demo

        budget = fit_demo(args, data, artifact, time.perf_counter() - t_all,
                          rounds, cohort, epochs)
        rounds = budget[0].rounds
        central_steps = None if budget[0].scale >= 1.0 else budget[0].central_steps

    t = _step(3, "baselines on the same training users: n-gram, then central training")
    ngram = run_ngram(data)
    lr = args.central_lr if args.central_lr is not None else \
        central_lr(args.preset, args.central_optimizer)
    central_weights: list = []
    central = run_central(data, args.preset,
                          CentralConfig(epochs=epochs, learning_rate=lr,
                                        optimizer=args.central_optimizer,
                                        max_steps=central_steps), progress=True,
                          weights_out=central_weights)
    from fedkb.simulation.init_from import save_as_artifact

    save_as_artifact(plain_artifact, central_weights, work / "model-central")  # --init-from
    _done(t, f"(central model kept in {work / 'model-central'})")
    if budget is not None:
        from fedkb.simulation.budget import replan_rounds

        rounds, why = replan_rounds(*budget, time.perf_counter() - t_all,
                                    time.perf_counter() - t)
        if why:
            print(f"      {why}", flush=True)

    devices = args.devices or c["train_users"] + c["heldout_users"]  # one phone per user
    t = _step(4, f"federated training: fedkb server + {devices} emulated phones, "
                 f"{rounds} rounds of {cohort}")
    from fedkb.device_runtime.cli import ray_options
    from fedkb.simulation.dp_flags import privacy_config, strategy_name

    cfg = demo_config(data, artifact, devices, rounds, cohort,
                      args.workers, args.preset, strategy_name(args), args.lr, args.server_lr,
                      privacy_config(args), compression_config(args),
                      ray_options(args.ray, args.ray_shards, args.ray_trainers), fit=fit)
    if args.secagg:  # checked like the server checks it (check_secagg), before the run
        cfg = dataclasses.replace(cfg, secagg=secagg_config(args))
    report, run, server = run_fleet_engine(cfg, workdir=work / "federated",
                                           on_progress=round_bar(rounds),
                                           keep_server=not args.no_serve)
    _done(t)
    try:
        t = _step(5, "evaluation on held-out users")
        _done(t, f"(federated evaluation rounds: {len(run.evaluations)})")
        t = _step(6, f"report -> {work / 'report'}")
        recipe = {"corpus": args.corpus, "fitted": fit is not None,
                   "rounds": rounds, "clients_per_round": cohort, "central_epochs": epochs,
                   "vocab_size": res.meta["vocab_words"], "init_from": init_stats,
                   "choices": [dataclasses.asdict(ch) for ch in choices]}
        out = write_report(work / "report", report, ngram, central, run, recipe)
        print(out["table"])
        if emit is not None:
            emit(out)
        _done(t)
        print(f"the whole demo took {time.perf_counter() - t_all:.0f}s")
        if server is None:
            return 0
        print(f"\nkeyboard demo: {run.url}/   dashboard: {run.url}/dashboard")
        print("the server keeps running; press Ctrl-C to stop it", flush=True)
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _pick(flag, fitted, default):
    """A flag the user gave, else the value fitted to their corpus, else the demo's."""
    return flag if flag is not None else fitted if fitted is not None else default


def communication_line(comm: dict[str, Any] | None) -> str:
    """The summary table's line on bytes: uplink per update, downlink per task."""
    if not comm or not comm.get("uplink_bytes_per_update"):
        return "bytes on the wire: not measured"
    return (f"bytes on the wire ({comm['encoding']}, downlink {comm['downlink']}): "
            f"{comm['uplink_bytes_per_update'] / 1e6:.2f} MB up per update, "
            f"{(comm['downlink_bytes_per_task'] or 0) / 1e6:.2f} MB down per task")


def write_report(out: Path, fed, ngram, central, run,
                 recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report, the PNG learning curves and the summary table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedkb.simulation.dp_flags import epsilon_text

    out.mkdir(parents=True, exist_ok=True)
    c = run.fleet["tasks"]
    rows = [("federated (fleet)", fed), (f"central ({central.config.get('optimizer', 'sgd')})",
                                         central), ("n-gram (KN trigram)", ngram)]
    lines = ["", f"{'held-out users':<22}{'top-1 recall':>14}{'top-3 recall':>14}"
                 f"{'keys saved':>12}", "-" * 62]
    lines += [f"{name:<22}{r.heldout['top1_recall']:>14.2%}{r.heldout['top3_recall']:>14.2%}"
              f"{_pct(r.heldout.get('keystroke_savings')):>12}" for name, r in rows]
    lines += ["-" * 62, "top-1 / top-3 recall by word frequency rank (share of targets):"]
    buckets = rows[-1][1].heldout.get("by_frequency") or []  # the n-gram's: the whole vocab
    for i, b in enumerate(buckets):
        cells = [f"{_pct(r.heldout['by_frequency'][i]['top1_recall'])} / "
                 f"{_pct(r.heldout['by_frequency'][i]['top3_recall'])}"
                 for _, r in rows if r.heldout.get("by_frequency")]
        lines.append(f"  ranks {b['ranks']:<10}({b['share']:.0%})  " + "   ".join(
            f"{name.split(' ')[0]} {c}" for (name, _), c in zip(rows, cells, strict=False)))
    ratio = (fed.heldout["top1_recall"] / central.heldout["top1_recall"]
             if central.heldout["top1_recall"] else 0.0)
    beats = fed.heldout["top1_recall"] > ngram.heldout["top1_recall"]
    lines += ["-" * 62,
              f"federated reaches {ratio:.0%} of central top-1 recall; "
              f"{'beats' if beats else 'does not beat'} the n-gram baseline",
              f"rounds {len(fed.rounds)}, phones {run.fleet['phones']}, "
              f"tasks {c['received']} (completed {c['completed']}, aborted {c['aborted']}, "
              f"late {c['late']}, "
              f"failed {c['failed']}), simulated {run.fleet['simulated_hours']} h",
              f"privacy: {epsilon_text(fed.privacy)}",
              communication_line(fed.communication), ""]
    table = "\n".join(lines)

    evals = sorted(run.evaluations, key=lambda e: e["model_version"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if evals:
        v = [e["model_version"] for e in evals]
        ax1.plot(v, [e.get("top1_recall", 0) for e in evals], "o-", label="federated top-1")
        ax1.plot(v, [e.get("top3_recall", 0) for e in evals], "s-", label="federated top-3")
    for name, r, style in (("central", central, "--"), ("n-gram", ngram, ":")):
        ax1.axhline(r.heldout["top1_recall"], linestyle=style, color="gray",
                    label=f"{name} top-1")
    ax1.set(xlabel="model version (round)", ylabel="recall on held-out phones",
            title="Federated evaluation")
    ax1.legend(fontsize=8)
    ax2.plot([r["round"] for r in fed.rounds], [r["train_loss"] for r in fed.rounds], ".-")
    ax2.set(xlabel="round", ylabel="mean device training loss", title="Training")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    r_ = fed.rounds
    ax.bar([r["round"] for r in r_], [r["clients"] for r in r_], label="reported")
    ax.bar([r["round"] for r in r_], [r["late"] for r in r_],
           bottom=[r["clients"] for r in r_], label="late")
    ax.set(xlabel="round", ylabel="devices", title="Participation per round")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "participation.png", dpi=110)
    plt.close(fig)

    doc = {"federated": fed.to_dict(), "central": central.to_dict(), "ngram": ngram.to_dict(),
           "fleet": run.fleet, "evaluations": evals, "table": table,
           "privacy": fed.privacy, "recipe": recipe}
    (out / "report.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return doc
