"""The `fedkb` command line: one entry point, one subcommand per job.

Each area of the project contributes its subcommands through a ``register(subparsers)``
function in its own ``cli`` module; this file only wires them together. The area modules
are imported when the parser is built, so they must keep heavy imports (TensorFlow)
inside the command functions: `fedkb --help` stays fast.

A command function takes the parsed ``argparse.Namespace`` and returns an exit code.
:class:`UserError` raised anywhere below a command becomes one ``error: ...`` line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence

from fedkb.errors import UserError

# Area modules providing `register(subparsers)`, in the order `fedkb --help` lists them.
_AREAS = (
    "fedkb.datasets.cli",
    "fedkb.model.cli",
    "fedkb.server.cli",
    "fedkb.server.predict_cli",
    "fedkb.server.privacy.plan_cli",
    "fedkb.simulation.audit_cli",  # `fedkb privacy audit`, beside `plan`
    "fedkb.device_runtime.cli",
    "fedkb.simulation.cli",
    "fedkb.simulation.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedkb",
        description="Federated next-word prediction for a phone keyboard "
        "(LiteRT on-device training, an emulated phone fleet, a Flask round server).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # the real command line: big tensors in huge pages (fedkb.hugepages)
        from fedkb.hugepages import reexec_if_needed

        reexec_if_needed([sys.executable, "-m", "fedkb", *sys.argv[1:]])
    # TensorFlow (imported lazily by some commands) logs C++ warnings we cannot act on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM runs the same clean-up as Ctrl-C (finally blocks stop servers and fleets).
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
