"""The differential-privacy flags of `fedkb simulate` and `fedkb demo`, mapped in one place
to the server's :class:`~fedkb.server.config.PrivacyConfig` (CLI -> frozen config ->
the server's ``[privacy]`` table), and the ``privacy`` object of their reports.

DP runs on the real wire: the fleet engine (server + phones). ``--dp fedavg`` is
DP-FedAvg (Gaussian noise on each round's clipped, unweighted sum; server momentum,
``--strategy fedavgm``, recommended), ``--dp ftrl`` DP-FTRL (tree noise, the ``dpftrl``
strategy). The TFF and central engines refuse ``--dp``: they have no DP stage, and a
report without a guarantee must not look like one with it.
"""

from __future__ import annotations

import argparse
from typing import Any

from fedkb.errors import UserError
from fedkb.server.config import DP_FTRL_STRATEGY, DP_MECHANISMS, PrivacyConfig
from fedkb.simulation.fleet_config import default_of

REPORT_KEYS = ("mechanism", "noise_multiplier", "clip", "adaptive", "noise_placement",
               "epsilon", "delta",
               "rounds", "accountant", "neighboring", "population", "target_epsilon",
               "stopped", "hypothetical_population")


def add_dp_arguments(p: argparse.ArgumentParser) -> None:
    pc = PrivacyConfig
    p.add_argument("--dp", choices=DP_MECHANISMS, default=None,
                   help="user-level differential privacy (fleet engine): fedavg = DP-FedAvg "
                        "(McMahan et al. 2018), ftrl = DP-FTRL (Kairouz et al. 2021)")
    p.add_argument("--dp-noise", type=float, default=default_of(pc, "noise_multiplier"),
                   metavar="Z", help="DP noise multiplier z (std z*C on each round's sum)")
    p.add_argument("--dp-clip", type=float, default=default_of(pc, "clip"), metavar="C",
                   help="DP clip: every phone clips its delta to L2 norm C (the initial "
                        "clip with --dp-adaptive)")
    p.add_argument("--dp-adaptive", action="store_true",
                   help="adaptive clipping to the median update norm (Andrew et al. 2021)")
    p.add_argument("--dp-target-epsilon", type=float, default=None, metavar="E",
                   help="stop training before the round that would spend more than E")
    p.add_argument("--dp-noise-cohort", type=int, default=None, metavar="K",
                   help="research: noise as if K phones took part each round; epsilon is "
                        "then reported for that hypothetical population")
    p.add_argument("--dp-delta", type=float, default=None, metavar="D",
                   help="delta of the guarantee (default min(1e-5, 1/(N ln N)))")
    p.add_argument("--dp-distributed", action="store_true",
                   help="distributed DP (needs --secagg and --dp fedavg): each phone adds "
                        "its share of discrete Gaussian noise, so the server never sees a "
                        "noise-free sum (Kairouz et al. 2021)")


def privacy_config(args: argparse.Namespace) -> PrivacyConfig:
    """The ``[privacy]`` table the flags ask for (off without ``--dp``)."""
    if args.dp is None:
        given = [f for f in ("dp_adaptive", "dp_target_epsilon", "dp_noise_cohort",
                             "dp_delta", "dp_distributed") if getattr(args, f, None)]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} needs --dp fedavg|ftrl")
        return PrivacyConfig()
    return PrivacyConfig(mechanism=args.dp, noise_multiplier=args.dp_noise, clip=args.dp_clip,
                         adaptive=args.dp_adaptive, target_epsilon=args.dp_target_epsilon,
                         noise_cohort=args.dp_noise_cohort, delta=args.dp_delta,
                         distributed=getattr(args, "dp_distributed", False))


def strategy_name(args: argparse.Namespace) -> str:
    """``--dp ftrl`` trains with the DP-FTRL strategy; anything else with ``--strategy``."""
    return DP_FTRL_STRATEGY if args.dp == "ftrl" else args.strategy


def refuse_dp(args: argparse.Namespace, engine: str) -> None:
    if getattr(args, "dp", None) is not None:
        raise UserError(f"--dp runs on the fleet engine (phones clip, the server noises on "
                        f"the real wire); --engine {engine} has no DP stage")


def privacy_report(status: dict[str, Any]) -> dict[str, Any] | None:
    """The report's ``privacy`` object from the server's ``/v1/status`` (None: no DP)."""
    p = status.get("privacy")
    if p is None:
        return None
    return {k: p[k] for k in REPORT_KEYS if k in p}


def epsilon_text(privacy: dict[str, Any] | None) -> str:
    """One line for a table: the guarantee, or what a noise_cohort run pretends."""
    if privacy is None:
        return "no differential privacy"
    eps = privacy.get("epsilon")
    where = " (noise from the phones)" if privacy.get("noise_placement") == "phones" else ""
    text = (f"DP-{privacy['mechanism']}{where}: z {privacy['noise_multiplier']}, clip "
            f"{privacy['clip']:.3g}, {privacy['rounds']} rounds, epsilon "
            f"{'inf (no guarantee)' if eps is None else f'{eps:.3g}'} at delta "
            f"{privacy['delta']:.2g}")
    hyp = privacy.get("hypothetical_population")
    if hyp:
        h = hyp.get("epsilon")
        text += (f"; {hyp['label']} of {hyp['noise_cohort']}/round: epsilon "
                 f"{'inf' if h is None else f'{h:.3g}'}")
    if privacy.get("stopped"):
        text += f"; stopped: {privacy['stopped']['reason']}"
    return text
