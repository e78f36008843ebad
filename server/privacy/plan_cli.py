"""``fedkb privacy plan``: the (ε, δ) a planned run would spend, or the noise for a target ε.

::

    fedkb privacy plan --population N --clients-per-round M --rounds T
                       (--noise Z | --target-epsilon E) [--delta D]
                       [--mechanism fedavg|ftrl] [--sampling fixed|poisson]
                       [--min-separation S] [--restart-every R]
                       [--noise-cohort K] [--json]

``fedavg`` is DP-FedAvg (fixed cohorts of M out of N: RDP, replace-one; or Poisson with
q = M/N: PLD, add/remove). ``ftrl`` is DP-FTRL with tree aggregation: no sampling
assumption, but a device must sit out at least S rounds between two rounds it trains
in (``--min-separation``: rounds strictly between), optionally restarting the tree every
R rounds. δ defaults to min(1e-5, 1/(N ln N)). See :mod:`fedkb.server.privacy.accounting`.

``--noise-cohort K`` is a research knob (pfl-research's ``noise_cohort_size``): the noise
is sized as if K devices took part, so a run with M devices gets K/M times less noise
than Z asks for. Then ``--noise`` / ``--target-epsilon`` are about the hypothetical
deployment, whose ε is reported under ``hypothetical_population`` and is *not* this
run's guarantee; ``epsilon`` stays the run's own.

No TensorFlow is imported on this path.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from fedkb.errors import UserError

_ACTIONS = "_fedkb_privacy_actions"


def privacy_actions(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The actions of `fedkb privacy` (the group made on first use): other layers add
    theirs here (`fedkb privacy audit` trains, so it lives in the simulation layer)."""
    group = sub.choices.get("privacy")
    if group is None:
        group = sub.add_parser("privacy", help="differential privacy: plan a run's budget, "
                               "audit a model's memorisation",
                               description="Differential privacy for federated rounds.")
        actions = group.add_subparsers(dest="privacy_command", metavar="ACTION")
        actions.required = True
        setattr(group, _ACTIONS, actions)
    return getattr(group, _ACTIONS)


def register(sub: argparse._SubParsersAction) -> None:
    p = privacy_actions(sub).add_parser(
        "plan", help="epsilon for a planned run, or noise for a target", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--population", type=int, required=True, help="devices in the fleet (N)")
    p.add_argument("--clients-per-round", type=int, required=True,
                   help="devices whose updates are summed each round (M)")
    p.add_argument("--rounds", type=int, required=True, help="rounds to run (T)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--noise", type=float, help="noise multiplier z (std / clip)")
    how.add_argument("--target-epsilon", type=float, help="find z that spends this epsilon")
    p.add_argument("--delta", type=float, default=None,
                   help="delta (default min(1e-5, 1/(N ln N)))")
    p.add_argument("--mechanism", choices=("fedavg", "ftrl"), default="fedavg")
    p.add_argument("--sampling", choices=("fixed", "poisson"), default="fixed",
                   help="fedavg: fixed cohorts of M (default) or Poisson with q = M/N")
    p.add_argument("--min-separation", type=int, default=None,
                   help="ftrl: rounds strictly between two participations of a device")
    p.add_argument("--restart-every", type=int, default=None,
                   help="ftrl: restart the tree every R rounds (default: never)")
    p.add_argument("--noise-cohort", type=int, default=None,
                   help="research: size the noise as if K devices took part")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def plan(population: int, clients_per_round: int, rounds: int, *,
         noise: float | None = None, target_epsilon: float | None = None,
         delta: float | None = None, mechanism: str = "fedavg", sampling: str = "fixed",
         min_separation: int | None = None, restart_every: int | None = None,
         noise_cohort: int | None = None) -> dict[str, Any]:
    """The planner behind the command, as a function returning the JSON document."""
    from fedkb.server.privacy import accounting as acc

    n, m = population, clients_per_round
    if rounds < 1:
        raise acc.PrivacyConfigError(f"rounds must be >= 1, got {rounds}")
    if m < 1 or m > n:
        raise acc.PrivacyConfigError(f"clients per round must be in 1..{n}, got {m}")
    if (noise is None) == (target_epsilon is None):
        raise acc.PrivacyConfigError("give exactly one of noise and target epsilon")
    delta = acc.default_delta(n) if delta is None else delta
    if mechanism == "ftrl":
        if min_separation is None:
            raise acc.PrivacyConfigError("ftrl needs --min-separation (DP-FTRL's bound on "
                                         "how often one device takes part)")
        if m * (min_separation + 1) > n:
            raise acc.PrivacyConfigError(
                f"{m} devices per round cannot each sit out {min_separation} rounds with "
                f"only {n} devices")
        if restart_every is not None and restart_every < 1:
            raise acc.PrivacyConfigError("--restart-every must be >= 1")
    elif mechanism != "fedavg":
        raise acc.PrivacyConfigError(f"unknown mechanism {mechanism!r}")
    if noise_cohort is not None and noise_cohort < 1:
        raise acc.PrivacyConfigError(f"noise cohort must be >= 1, got {noise_cohort}")
    scale = 1.0 if noise_cohort is None else m / noise_cohort  # nominal z -> actual z

    def events(z: float) -> list[acc.RoundEvent]:
        common: dict[str, Any] = {"noise_multiplier": z * scale, "clip": 1.0,
                                  "clients_per_round": m, "noise_cohort": noise_cohort}
        if mechanism == "ftrl":
            period = restart_every or rounds
            return [acc.RoundEvent(acc.TREE, tree=r // period,
                                   min_separation=min_separation, **common)
                    for r in range(rounds)]
        if sampling == "poisson":
            return [acc.RoundEvent(acc.POISSON, sampling_rate=m / n, **common)] * rounds
        return [acc.RoundEvent(acc.FIXED, population=n, **common)] * rounds

    if noise is None:
        z = acc.noise_for_target(target_epsilon, delta, events,
                                 hypothetical=noise_cohort is not None)
    else:
        z = noise
    planned = events(z)
    spent = acc.epsilon(planned, delta)
    out: dict[str, Any] = {
        "epsilon": spent.to_json()["epsilon"], "delta": delta,
        "noise_multiplier": z * scale, "mechanism": mechanism,
        "sampling": "none" if mechanism == "ftrl" else sampling,
        "accountant": spent.accountant, "neighboring": spent.neighboring,
        "rounds": rounds, "population": n, "clients_per_round": m}
    if mechanism == "ftrl":
        out.update(min_separation=min_separation, restart_every=restart_every,
                   rho=spent.rho)
    if target_epsilon is not None:
        out["target_epsilon"] = target_epsilon
    if noise_cohort is not None:
        hypo = acc.hypothetical_epsilon(planned, delta)
        out["hypothetical_population"] = {
            **(hypo.hypothetical_population or {}),
            "epsilon": hypo.to_json()["epsilon"],
            "note": "the epsilon of a deployment with this cohort, not this run's"}
    return out


def _eps(value: float | None) -> str:
    return "inf (no privacy)" if value is None or math.isinf(value) else f"{value:.3g}"


def sentence(doc: dict[str, Any]) -> str:
    """The plan as one or two human sentences."""
    what = ("DP-FTRL (tree aggregation, min separation "
            f"{doc['min_separation']})" if doc["mechanism"] == "ftrl" else
            f"DP-FedAvg ({doc['sampling']} cohorts of {doc['clients_per_round']} of "
            f"{doc['population']})")
    text = (f"epsilon = {_eps(doc['epsilon'])} at delta = {doc['delta']:.3g} after "
            f"{doc['rounds']} rounds of {what} with noise multiplier "
            f"{doc['noise_multiplier']:.4g} ({doc['accountant']} accountant).")
    hypo = doc.get("hypothetical_population")
    if hypo:
        text += (f" Hypothetical population (noise as if {hypo['noise_cohort']} devices "
                 f"per round, multiplier {hypo['noise_multiplier']:.4g}): epsilon = "
                 f"{_eps(hypo['epsilon'])}; not this run's guarantee.")
    return text


def run(args: argparse.Namespace) -> int:
    try:
        doc = plan(args.population, args.clients_per_round, args.rounds, noise=args.noise,
                   target_epsilon=args.target_epsilon, delta=args.delta,
                   mechanism=args.mechanism, sampling=args.sampling,
                   min_separation=args.min_separation, restart_every=args.restart_every,
                   noise_cohort=args.noise_cohort)
    except ValueError as exc:  # dp_accounting's own refusals
        raise UserError(str(exc)) from exc
    print(json.dumps(doc, indent=2) if args.json else sentence(doc))
    return 0
