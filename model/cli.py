"""``fedkb model export`` and ``fedkb model check``.

TensorFlow is imported inside the command functions only, so ``fedkb --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fedkb.errors import UserError
from fedkb.model.config import PRESETS, get_preset


def _quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ start-up chatter (CUDA probing); errors still raise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def cmd_export(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from fedkb.model.export import export_from_dataset

    if not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: no such dataset directory "
                        "(run `fedkb data prepare` first)")
    preset = get_preset(args.preset)
    if args.batch_size is not None:
        try:
            preset = preset.replace(batch_size=args.batch_size)
        except ValueError as exc:
            raise UserError(f"--batch-size: {exc}") from exc
    res = export_from_dataset(preset, args.data, args.out, seed=args.seed)
    report = {"out": str(res.out), "preset": res.config.name, "num_params": res.num_params,
              "vocab_size": res.config.vocab_size, "seq_len": res.config.seq_len,
              "batch_size": res.config.batch_size, "builtin_only": res.ops.builtin_only,
              "file_bytes": res.sizes, "export_seconds": round(res.seconds, 3)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        c = res.config
        print(f"exported {c.name} model to {res.out}: {res.num_params:,} parameters, "
              f"V={c.vocab_size}, T={c.seq_len}, B={c.batch_size}, cell={c.cell}, "
              f"builtin ops only, {res.sizes['model.tflite']:,} B model.tflite, "
              f"{res.seconds:.1f} s")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from fedkb.artifact import Artifact, ArtifactError
    from fedkb.model.check import check_artifact, format_report

    try:
        Artifact.load(args.artifact)
    except (ArtifactError, OSError) as exc:
        raise UserError(str(exc)) from exc
    report = check_artifact(args.artifact, steps=args.steps, timing_steps=args.timing_steps,
                            threads=args.threads)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0 if report["builtin_only"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``model`` command group to the ``fedkb`` parser."""
    p = sub.add_parser("model", help="export and check the LiteRT training artifact")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    msub.required = True

    e = msub.add_parser("export", help="write model.tflite + metadata.json + weights.safetensors",
                        description="Export the next-word LSTM as a LiteRT artifact with "
                        "train/evaluate/infer/get_weights/set_weights signatures (builtin "
                        "ops only). V comes from the dataset (capped), T from the data.")
    e.add_argument("--preset", choices=sorted(PRESETS), default="small")
    e.add_argument("--data", required=True, help="prepared dataset directory")
    e.add_argument("--out", required=True, help="artifact directory to write")
    e.add_argument("--seed", type=int, default=None, help="seed of the initial weights")
    e.add_argument("--batch-size", type=int, default=None,
                   help="override the preset's fixed batch size B")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_export)

    c = msub.add_parser("check", help="op list, sizes, LiteRT/Keras parity and step times")
    c.add_argument("artifact", help="artifact directory (from `fedkb model export`)")
    c.add_argument("--steps", type=int, default=5, help="train steps compared with Keras")
    c.add_argument("--timing-steps", type=int, default=20, help="steps timed (median)")
    c.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=cmd_check)
