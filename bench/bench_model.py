"""Benchmark the model artifact (issue 3): export time, size, train-step and infer speed.

For each preset: export it (with a real dataset's vocabulary if ``--data`` is given,
else a synthetic 10,000-word vocabulary, which gives the same model since V is capped
at the preset's), then run ``fedkb model check``'s measurements: LiteRT ``train`` step
vs compiled Keras step on the same batch with the same thread count, LiteRT ``infer``
latency for one prefix, and LiteRT/Keras parity after 5 steps.

    uv run python bench/bench_model.py --presets small gboard --threads 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def synthetic_vocab(n: int) -> list[str]:
    return ["<pad>", "<bos>", "<eos>", "<oov>"] + [f"w{i}" for i in range(n - 4)]


def bench_preset(name: str, data: str | None, threads: int, timing_steps: int,
                 workdir: Path) -> dict:
    from fedkb.model.check import check_artifact
    from fedkb.model.config import get_preset
    from fedkb.model.export import export_artifact, export_from_dataset

    preset = get_preset(name)
    out = workdir / name
    if data:
        res = export_from_dataset(preset, data, out)
    else:
        cfg = preset.fit_to_data(preset.vocab_size, preset.seq_len)
        res = export_artifact(cfg, synthetic_vocab(preset.vocab_size), out)
    report = check_artifact(out, steps=5, timing_steps=timing_steps, threads=threads)
    return {
        "preset": name, "num_params": res.num_params, "vocab_size": res.config.vocab_size,
        "seq_len": res.config.seq_len, "batch_size": res.config.batch_size,
        "export_seconds": round(res.seconds, 2), "file_bytes": res.sizes,
        "builtin_only": report["builtin_only"], "num_ops": sum(report["ops"].values()),
        "parity_max_abs_loss_diff": report["parity"]["max_abs_loss_diff"],
        "parity_max_abs_weight_diff": report["parity"]["max_abs_weight_diff"],
        **report["timing"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["small", "gboard"])
    ap.add_argument("--data", default=None, help="prepared dataset dir (default: synthetic)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    from fedkb.model.check import set_tf_threads

    set_tf_threads(args.threads)  # before the first export initialises TensorFlow
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedkb-bench-") as tmp:
        for name in args.presets:
            row = bench_preset(name, args.data, args.threads, args.timing_steps, Path(tmp))
            rows.append(row)
            print(f"{name:7s} params {row['num_params']:>9,}  export {row['export_seconds']:6.1f} s"
                  f"  tflite {row['file_bytes']['model.tflite'] / 1e6:6.2f} MB"
                  f"  weights {row['file_bytes']['weights.safetensors'] / 1e6:5.2f} MB"
                  f"  train LiteRT {row['lite_train_step_ms']:7.2f} ms"
                  f" / Keras {row['keras_train_step_ms']:7.2f} ms"
                  f" = {row['lite_over_keras']:.2f}"
                  f"  (TF same graph {row['tf_same_graph_step_ms']:.2f} ms)"
                  f"  eval {row['lite_evaluate_batch_ms']:.2f} ms"
                  f"  infer {row['lite_infer_ms']:.3f} ms"
                  f"  parity loss {row['parity_max_abs_loss_diff']:.1e}"
                  f" w {row['parity_max_abs_weight_diff']:.1e}", flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                          "platform": platform.platform()},
              "threads": args.threads, "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
