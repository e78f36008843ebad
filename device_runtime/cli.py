"""`fedkb fleet`: run the device emulator fleet against a server."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from fedkb import wire
from fedkb.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from fedkb.device_runtime.fleet import default_workers

    p = sub.add_parser("fleet", help="run an emulated fleet of phones against a server")
    p.add_argument("--server", required=True, help="server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--data", type=Path, required=True, help="a prepared dataset directory")
    p.add_argument("--devices", type=int, required=True, help="number of phones")
    p.add_argument("--speedup", type=float, default=60.0,
                   help="simulated seconds per wall second (default 60: an hour a minute)")
    p.add_argument("--start-hour", type=float, default=22.0,
                   help="UTC hour at which simulated time starts (default 22)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--rounds", type=int, help="exit once the server committed R rounds")
    stop.add_argument("--duration", type=float, help="exit after D wall seconds")
    p.add_argument("--profile", type=Path, help="a CSV/JSON availability trace file to replay")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="worker processes (default: CPU count; 0 = in this process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--claim-hold", type=float, default=0.0, metavar="S",
                   help="a phone selected ahead of its round's model keeps its check-in open "
                        "up to S wall seconds (the server holds it while it has threads to "
                        "spare) instead of asking again; 0: ask again when told")
    p.add_argument("--faults", default=None, metavar="KIND=RATE,...",
                   help="phones misbehave on purpose, per task: e.g. nan=0.05,huge=0.02,"
                        "shape=0.02,replay=0.02,examples=0.02,unplug=0.15,boost=0.05 "
                        "(see fedkb.device_runtime.faults)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the phones on a Ray cluster (needs `uv sync --extra ray`): "
                        "'auto' for the cluster this machine joined with `ray start`, "
                        "HOST:PORT for a head node's address; alone: a private Ray on this "
                        "machine. --workers is then ignored")
    p.add_argument("--ray-shards", type=int, default=0, metavar="N",
                   help="with --ray: phone shard actors (default: one per node)")
    p.add_argument("--ray-trainers", type=int, default=0, metavar="N",
                   help="with --ray: training workers, one CPU each (default: as many as "
                        "the cluster's CPUs hold)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_fleet)


def ray_options(address: str | None, shards: int = 0, trainers: int = 0):
    """The fleet's RayOptions for ``--ray ADDRESS`` (None without --ray); checks that Ray
    is installed without importing it."""
    import importlib.util

    from fedkb.device_runtime.ray_options import RayOptions

    if address is None:
        return None
    if importlib.util.find_spec("ray") is None:
        raise UserError("--ray needs Ray: install it with `uv sync --extra ray`")
    try:
        return RayOptions(address=address, shards=shards, trainers=trainers)
    except ValueError as exc:
        raise UserError(f"--ray: {exc}") from None


def _clock(sim_s: float) -> str:
    day, rest = divmod(sim_s, 86400)
    return f"day {int(day)} {int(rest // 3600):02d}:{int(rest % 3600 // 60):02d} UTC"


def _fleet(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fedkb.device_runtime.faults import FaultError, parse_faults
    from fedkb.device_runtime.fleet import Fleet, FleetConfig

    try:
        faults = parse_faults(args.faults) if args.faults is not None else None
    except FaultError as exc:
        raise UserError(f"--faults: {exc}") from None
    if args.devices < 1:
        raise UserError("--devices must be at least 1")
    if args.speedup <= 0:
        raise UserError("--speedup must be positive")
    if not 0 <= args.claim_hold <= wire.MAX_CHECKIN_WAIT_S:
        raise UserError(f"--claim-hold must be within 0-{wire.MAX_CHECKIN_WAIT_S:g} seconds")
    if not (args.data / "metadata.json").is_file():
        raise UserError(f"{args.data} is not a prepared dataset (run fedkb data prepare)")
    if args.profile is not None and not args.profile.is_file():
        raise UserError(f"trace file not found: {args.profile}")
    cfg = FleetConfig(server=args.server, data=args.data, devices=args.devices,
                      speedup=args.speedup, start_hour=args.start_hour, workers=args.workers,
                      rounds=args.rounds, duration_s=args.duration, trace_file=args.profile,
                      seed=args.seed, claim_hold_s=args.claim_hold, faults=faults,
                      ray=ray_options(args.ray, args.ray_shards, args.ray_trainers))
    bar = tqdm(total=args.rounds, desc="rounds", unit="round", file=sys.stderr,
               disable=None)

    def progress(total: dict[str, Any], status: dict[str, Any] | None, sim_now: float) -> None:
        c = total["counts"]
        committed = (status or {}).get("rounds_committed", 0)
        if args.rounds is not None and committed > bar.n:
            bar.update(min(committed, args.rounds) - bar.n)
        bar.set_postfix_str(
            f"{_clock(sim_now)} | round {committed} | eligible {total['eligible']} "
            f"checkins {c.get('checkins', 0)} training {total['training']} "
            f"uploads {c.get('completed', 0)} aborts {sum(total['aborted'].values())} "
            f"late {c.get('late', 0)}")

    fleet = Fleet(cfg, on_progress=progress)

    def graceful(signum, _frame) -> None:
        # First Ctrl-C / SIGTERM: stop the phones and print the summary; a second Ctrl-C
        # interrupts the shutdown itself.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        fleet.stop()

    previous = {s: signal.signal(s, graceful) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            summary = fleet.run()
        except ValueError as exc:
            raise UserError(str(exc)) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        t = summary["tasks"]
        print(f"{summary['phones']} phones, {summary['simulated_hours']} simulated hours in "
              f"{summary['wall_s']} s: {t['received']} tasks, {t['completed']} completed, "
              f"{t['aborted']} aborted {summary['aborted_by_reason']}, {t['late']} late, "
              f"{t['failed']} failed; {summary['bytes']['down']:,} B down, "
              f"{summary['bytes']['up']:,} B up; completed by tier "
              f"{summary['completed_by_tier']}")
    return 0
